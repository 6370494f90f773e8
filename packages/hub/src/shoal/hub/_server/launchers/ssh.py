"""Engines on other hosts, started over SSH: ``--engines ssh --hosts nodeA:2,nodeB:4``.

Each engine is one ``ssh host python -m shoal.engine ...`` process of the hub, so the
engine's exit is that process's exit (ssh passes the remote exit code on; 255 is ssh's
own failure). The ssh command is the user's (``--ssh "ssh -F my_config"``): their
config's aliases, keys and jump hosts apply, and the hub never asks for a password
(``BatchMode``). The engine connection file goes to each host once, by scp, into a
private folder under the remote home, unless the hosts share the hub's folder
(``--shared-dir``). A remote engine is signalled with ``ssh host kill``; one whose ssh
link is cut ends by itself when the hub's heartbeats stop.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import signal
import subprocess
import uuid
from collections.abc import Mapping, Sequence

from .base import PYTHON, EngineLauncher, Launch, MakeLauncher, engine_command

__all__ = ["SSHEngines", "parse_hosts"]


def parse_hosts(text: str) -> dict[str, int]:
    """``"nodeA:2,nodeB:4"`` (or ``"nodeA,nodeB"``: one each) as ``{"nodeA": 2, ...}``."""
    hosts: dict[str, int] = {}
    for part in text.split(","):
        name, _, count = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "1")
        if not name or not count.isdigit() or int(count) < 0:
            raise ValueError(
                f"--hosts: {part.strip()!r} is not HOST or HOST:COUNT; write e.g. nodeA:2,nodeB:4"
            )
        hosts[name] = hosts.get(name, 0) + int(count)
    return hosts


class SSHEngines(EngineLauncher):
    """Engines started on ``hosts`` over ssh, ``hosts[h]`` of them on host ``h``.

    Parameters
    ----------
    hosts : mapping of str to int
        Host (as ssh knows it: a name, an address, a config alias) to engine count.
    ssh : sequence of str
        The ssh command and its options; default ``["ssh"]``.
    scp : sequence of str, optional
        The scp command; default: ``scp`` with ssh's options (``-p`` becomes ``-P``).
    python : str
        The remote Python; default: this interpreter's path.
    shared_dir : bool
        The hosts see the hub's folder at the same path: nothing is copied.
    """

    kind = "ssh"

    def __init__(
        self,
        engine_file: str,
        folder: str,
        log_level: str,
        *,
        hosts: Mapping[str, int],
        ssh: Sequence[str] = ("ssh",),
        scp: Sequence[str] | None = None,
        python: str = PYTHON,
        shared_dir: bool = False,
    ) -> None:
        super().__init__(engine_file, folder, log_level)
        if not hosts:
            raise ValueError("the ssh launcher needs hosts, e.g. --hosts nodeA:2,nodeB:4")
        self.hosts = dict(hosts)
        # BatchMode: a host that would ask for a password fails now, not hangs the hub.
        self.ssh = [*ssh, "-o", "BatchMode=yes"]
        self.scp = list(scp) if scp is not None else _scp_like(ssh)
        self.python = python
        self.shared_dir = shared_dir
        self._remote_files: dict[str, str] = {}  # host -> where its copy of the file is
        self._folder_name = f".shoal/remote/{uuid.uuid4().hex[:12]}"

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--hosts", default=None, help="ssh: HOST:COUNT,... e.g. nodeA:2,nodeB:4")
        group.add_argument(
            "--ssh", default="ssh", help='ssh: the ssh command, e.g. "ssh -F my_config"'
        )
        group.add_argument(
            "--remote-python", default=None, help="ssh: the remote python (default: this one's)"
        )
        group.add_argument(
            "--shared-dir",
            action="store_true",
            help="ssh: the hosts see the profile folder at the same path (no copy)",
        )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> tuple[MakeLauncher, int]:
        if not args.hosts:
            raise ValueError("--engines ssh needs --hosts, e.g. --hosts nodeA:2,nodeB:4")
        hosts = parse_hosts(args.hosts)
        ssh = shlex.split(args.ssh)
        if not ssh:
            raise ValueError("--ssh is empty; give the ssh command, e.g. --ssh ssh")
        make = functools.partial(
            cls,
            hosts=hosts,
            ssh=ssh,
            python=args.remote_python or PYTHON,
            shared_dir=args.shared_dir,
        )
        return make, sum(hosts.values()) if args.n is None else args.n

    def describe(self) -> str:
        hosts = ",".join(f"{h}:{n}" for h, n in self.hosts.items())
        return f"ssh to {hosts} ({shlex.join(self.ssh)})"

    def start(self, n: int, first_id: int) -> list[Launch]:
        launches = []
        for host in self._hosts_for(n):
            launch = self._new(1, host)
            cmd = engine_command(self.python, self._file_on(host), launch.launch_id, self.log_level)
            launch.output = self._output_file(launch.launch_id)
            with open(launch.output, "ab") as out:
                launch.proc = subprocess.Popen(  # noqa: S603 - the user's ssh, our command
                    [*self.ssh, host, shlex.join(["exec", *cmd])],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C at the hub's terminal is the hub's
                )
            launches.append(launch)
        return launches

    def _hosts_for(self, n: int) -> list[str]:
        """Where ``n`` engines go: the hosts' counts first (at the start), then the host
        running the fewest of ours, in the order given."""
        running: dict[str, int] = dict.fromkeys(self.hosts, 0)
        for launch in self.launches.values():
            if self.poll(launch) is None:
                running[launch.host] = running.get(launch.host, 0) + 1
        chosen = []
        for _ in range(n):
            short = [h for h in self.hosts if running[h] < self.hosts[h]]
            host = short[0] if short else min(self.hosts, key=lambda h: running[h])
            running[host] += 1
            chosen.append(host)
        return chosen

    def _file_on(self, host: str) -> str:
        """The engine connection file's path on ``host``, copied there the first time."""
        if self.shared_dir:
            return self.engine_file
        path = self._remote_files.get(host)
        if path is None:
            path = f"{self._folder_name}/{os.path.basename(self.engine_file)}"
            # A private folder (0700) under the remote home; the file keeps its 0600.
            self._run([*self.ssh, host, f"umask 077 && mkdir -p {shlex.quote(self._folder_name)}"])
            self._run([*self.scp, "-p", "-q", self.engine_file, f"{host}:{path}"])
            self._remote_files[host] = path
        return path

    @staticmethod
    def _run(cmd: list[str]) -> None:
        done = subprocess.run(  # noqa: S603 - the user's ssh/scp
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip()
            raise RuntimeError(f"{shlex.join(cmd)} failed (exit {done.returncode}): {err}")

    def signal(self, launch: Launch, signum: int, pid: int | None = None) -> None:
        pids = [pid] if pid is not None else launch.pids
        if pids and self.poll(launch) is None:
            name = signal.Signals(signum).name.removeprefix("SIG")
            kill = f"kill -s {name} {' '.join(str(p) for p in pids)}"
            self._helper([*self.ssh, launch.host, kill])
        if signum == signal.SIGKILL:  # and the link: the engine may be out of reach
            super().signal(launch, signum)

    def stop(self, grace: float) -> None:
        super().stop(grace)
        self._wait_helpers()
        for host in self._remote_files:  # remove the copies of the key
            with contextlib.suppress(Exception):
                self._run([*self.ssh, host, f"rm -rf {shlex.quote(self._folder_name)}"])


def _scp_like(ssh: Sequence[str]) -> list[str]:
    """scp with the options of an ``ssh`` command (``-p PORT`` is ``-P`` for scp)."""
    options = list(ssh[1:])
    for i, word in enumerate(options):
        if word == "-p":
            options[i] = "-P"
    return ["scp", *options]
