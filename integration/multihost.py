"""Test hosts made of network namespaces (``.ci/hosts.sh up``), and hubs started in them.

``.ci/hosts.sh`` joins three namespaces by a bridge: ``shoal-hub`` (10.77.0.1) and two
engine hosts, ``nodea`` and ``nodeb``, each with an sshd that starts its sessions with a
host name and a ``/dev/shm`` of their own. Its description is ``/run/shoal-hosts/hosts.json``.
Without it the tests that need it are skipped, except where ``SHOAL_REQUIRE_HOSTS=1``
(CI) makes that a failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.hub.testing import wait_until

HOSTS_FILE = Path(os.environ.get("SHOAL_HOSTS_FILE", "/run/shoal-hosts/hosts.json"))
READY = b"shoal hub ready"


@dataclass(frozen=True)
class Hosts:
    """The namespaces ``.ci/hosts.sh`` made."""

    bridge: str
    network: str  # e.g. 10.77.0.0/24
    ssh_config: str
    hub_netns: str
    hub_ip: str
    root_ip: str  # this namespace's address on the bridge
    engine_hosts: dict[str, str]  # ssh name -> address
    netns: dict[str, str]  # ssh name -> its network namespace
    veths: dict[str, str]  # ssh name -> this namespace's end of its link

    @property
    def ssh(self) -> str:
        return f"ssh -F {self.ssh_config}"


def require_hosts() -> Hosts:
    """The test hosts, or a skip (a failure in CI) when they are not set up."""
    import pytest

    try:
        return load_hosts()
    except FileNotFoundError as exc:
        if os.environ.get("SHOAL_REQUIRE_HOSTS") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def load_hosts() -> Hosts:
    """The test hosts; ``FileNotFoundError`` saying how to make them when they are not."""
    if not HOSTS_FILE.exists():
        raise FileNotFoundError(
            f"no test hosts: {HOSTS_FILE} is missing; run `.ci/hosts.sh up` as root"
        )
    doc = json.loads(HOSTS_FILE.read_text())
    hosts = doc["hosts"]
    return Hosts(
        bridge=doc["bridge"],
        network=str(ipaddress.ip_network(f"{doc['root_ip']}/{doc['prefix']}", strict=False)),
        ssh_config=doc["ssh_config"],
        hub_netns=hosts["hub"]["netns"],
        hub_ip=hosts["hub"]["ip"],
        root_ip=doc["root_ip"],
        engine_hosts={h["ssh"]: h["ip"] for name, h in hosts.items() if name != "hub"},
        veths={h["ssh"]: h["veth"] for name, h in hosts.items() if name != "hub"},
        netns={h["ssh"]: h["netns"] for name, h in hosts.items() if name != "hub"},
    )


class NetnsHub:
    """A hub process in the hub's namespace, with the arguments given; a context manager
    that stops it, and waits until every engine it launched has ended."""

    def __init__(self, hosts: Hosts, folder: Path, args: Sequence[str]) -> None:
        self.hosts = hosts
        self.folder = folder
        self.log = folder / "hub.log"
        self.client_file = folder / "hub-client.json"
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [
            "ip",
            "netns",
            "exec",
            hosts.hub_netns,
            sys.executable,
            "-m",
            "shoal.hub",
            "--profile-dir",
            str(folder),
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            "INFO",
            *args,
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            wait_until(self._ready, timeout=60, message=lambda: f"hub not ready:\n{self.text()}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the hub exited with {self.proc.returncode}:\n{self.text()}")
        return READY in self.log.read_bytes()

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def launch_ids(self) -> list[str]:
        """The launches of this hub (their output files are named after them)."""
        folder = self.folder / "launches"
        return [p.stem for p in folder.glob("*.log")] if folder.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Engines on other hosts end by the hub's shutdown request, its kill over ssh,
        # or at the latest when its heartbeats stop: wait for every one of them.
        ids = self.launch_ids()
        wait_until(
            lambda: not processes_with(ids),
            timeout=30,
            message=lambda: f"engines still running: {processes_with(ids)}",
        )

    def __enter__(self) -> NetnsHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def hosts_lock(*, exclusive: bool = False) -> Iterator[None]:
    """Hold the test hosts: shared by the tests that use them, exclusive for one that
    cuts a link (tests run in parallel, under pytest-xdist)."""
    path = Path(os.environ.get("SHOAL_HOSTS_LOCK", "/tmp/shoal-test-hosts.lock"))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases it


def processes_with(words: Sequence[str]) -> list[str]:
    """Command lines of this machine's processes that contain any of ``words`` (the
    namespaces share one pid space)."""
    if not words:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(w in cmdline for w in words):
                found.append(f"{entry.name}: {cmdline}")
    return found


@contextlib.contextmanager
def capture(network: str, path: Path) -> Iterator[Path]:
    """Capture every packet to or from ``network`` (e.g. ``10.77.0.0/24``) on every
    interface of this namespace (the bridge's ports included) into ``path`` (tcpdump),
    while the block runs."""
    err = path.with_suffix(".err")
    with open(err, "wb") as errors:
        proc = subprocess.Popen(
            # --immediate-mode: no packet waits in a buffer a SIGINT would lose; -Z root: write
            # the file as root (Debian's AppArmor profile wants it to end in .pcap).
            [
                "tcpdump",
                "-i",
                "any",
                "--immediate-mode",
                "-Z",
                "root",
                "-U",
                "-n",
                "-s",
                "0",
                "-w",
                str(path),
                "net",
                network,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    try:
        wait_until(
            lambda: b"listening on" in err.read_bytes() or proc.poll() is not None,
            timeout=30,
        )
        if proc.poll() is not None:
            raise RuntimeError(f"tcpdump failed: {err.read_text(errors='replace')}")
        yield path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
