"""shoal across hosts: a hub in one network namespace, engines over SSH in two others.

The hosts are ``.ci/hosts.sh``'s (see ``multihost.py``): every byte between them
crosses a real bridge, every engine is started by a real sshd, and each engine host has
its own host name and ``/dev/shm``. Any address but loopback turns Curve on, so all of
this runs encrypted and authenticated; the last tests check that it is.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from multihost import Hosts, NetnsHub, capture, hosts_lock, processes_with, require_hosts

import shoal.arrays as sa
from shoal.hub import Client, Cluster, scatter
from shoal.hub.testing import wait_until
from shoal.wire import CurveKeys, configure_curve_client, curve_keypair

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def hosts() -> Hosts:
    return require_hosts()


def _hub_args(hosts: Hosts, *extra: str) -> list[str]:
    spread = ",".join(f"{h}:2" for h in sorted(hosts.engine_hosts))
    return ["--ip", hosts.hub_ip, "--engines", "ssh", "--hosts", spread, "--ssh", hosts.ssh, *extra]


@pytest.fixture(scope="module")
def cluster(hosts: Hosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsHub]:
    with (
        hosts_lock(),
        NetnsHub(hosts, tmp_path_factory.mktemp("multihost"), _hub_args(hosts)) as hub,
    ):
        yield hub


@pytest.fixture
def shared_hosts(hosts: Hosts) -> Iterator[Hosts]:
    """The hosts, while no test cuts a link."""
    with hosts_lock():
        yield hosts


@pytest.fixture(scope="module")
def rc(cluster: NetnsHub) -> Iterator[Client]:
    client = Client(url_file=str(cluster.client_file))
    try:
        client.wait_for_engines(4, timeout=60)
        yield client
    finally:
        client.close()


def _by_host(rc: Client) -> dict[str, list[int]]:
    names = rc[:].apply_sync(socket.gethostname)
    hosts: dict[str, list[int]] = {}
    for engine_id, name in zip(rc.ids, names, strict=True):
        hosts.setdefault(name, []).append(engine_id)
    return hosts


def test_engines_run_on_their_hosts_encrypted(rc: Client, cluster: NetnsHub) -> None:
    by_host = _by_host(rc)
    assert sorted(by_host) == ["nodea", "nodeb"], by_host
    assert [len(ids) for ids in by_host.values()] == [2, 2]
    info = json.loads(cluster.client_file.read_text())
    assert set(info["curve"]) == {"server_public", "client_public", "client_secret"}
    assert "secret_key" not in json.dumps(info)  # the hub's secret stays in the hub
    assert oct(os.stat(cluster.client_file).st_mode & 0o777) == "0o600"
    lview = rc.load_balanced_view()
    assert lview.map_sync(lambda x: x * x, range(50)) == [x * x for x in range(50)]


def test_push_and_pull_64_mib_between_hosts(rc: Client) -> None:
    a = np.random.default_rng(7).random(8 * 1024 * 1024)  # 64 MiB
    rc[:].push({"a": a}, block=True)
    sums = rc[:].apply_sync(lambda: float(a.sum()))
    assert sums == pytest.approx([float(a.sum())] * 4)
    for back in rc[:].pull("a", block=True):
        np.testing.assert_array_equal(back, a)


def test_a_proxy_is_used_from_the_other_host(rc: Client) -> None:
    class Counter:  # made here: the engines get it by value (this module is not theirs)
        def __init__(self) -> None:
            self.n = 0

        def inc(self) -> int:
            self.n += 1
            return self.n

    by_host = _by_host(rc)
    here, there = by_host["nodea"][0], by_host["nodeb"][0]
    counter = scatter(Counter(), destination=here, client=rc)

    def bump(c: Any, times: int) -> tuple[int, str]:
        import socket

        for _ in range(times):
            c.inc()
        return c.n, socket.gethostname()

    # The engine on nodeb calls the object on nodea itself, engine to engine.
    assert rc[there].apply_sync(bump, counter, 3) == (3, "nodeb")
    assert counter.n == 3


def test_a_distarray_with_blocks_on_both_hosts(rc: Client) -> None:
    a = np.arange(4000.0).reshape(400, 10)
    x = sa.scatter(a, 0, rc.ids, client=rc)
    hosts = dict(zip(rc.ids, rc[:].apply_sync(socket.gethostname), strict=True))
    assert {hosts[e] for e in x.engines} == {"nodea", "nodeb"}
    np.testing.assert_allclose(sa.gather((x * 2 + 1).sum(axis=0)), (a * 2 + 1).sum(axis=0))
    # Blocks move between the hosts: engine to engine, encrypted.
    moved = sa.redistribute(x, boundaries=[0, 10, 20, 30, 400])
    np.testing.assert_array_equal(sa.gather(moved), a)
    np.testing.assert_allclose(sa.gather(moved @ a.T[:, :10]), a @ a.T[:, :10])


def test_px_magic_runs_on_every_host(rc: Client, capsys: pytest.CaptureFixture[str]) -> None:
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    ip = interactiveshell.InteractiveShell.instance()
    try:
        ip.run_line_magic("load_ext", "shoal.hub")
        ip.run_cell("%px import socket; where = socket.gethostname()")
        ip.run_cell("%px print('on', where)")
        out = capsys.readouterr().out
        assert "on nodea" in out
        assert "on nodeb" in out
    finally:
        interactiveshell.InteractiveShell.clear_instance()


def test_cluster_adds_and_removes_ssh_engines_while_tasks_run(
    shared_hosts: Hosts, tmp_path: Path
) -> None:
    """``Cluster(engines="ssh")`` from this namespace (the hub on the bridge's address)."""
    hosts = shared_hosts
    cluster = Cluster(
        engines="ssh",
        hosts={"nodea": 1, "nodeb": 1},
        ssh=["ssh", "-F", hosts.ssh_config],
        ip=hosts.root_ip,
        profile_dir=str(tmp_path / "profile"),
    )
    assert cluster.n == 2
    with cluster as rc:
        lview = rc.load_balanced_view()
        lview.retries = 1  # a task on the engine removed below may run again

        def slow(x: int) -> tuple[int, str]:
            import socket
            import time

            time.sleep(0.05)
            return x * x, socket.gethostname()

        running = lview.map_async(slow, range(60))
        added = cluster.add_engines(2)
        assert len(added) == 2
        ids = rc.wait_for_engines(4, timeout=60)
        names = dict(zip(ids, rc[ids].apply_sync(socket.gethostname), strict=True))
        assert sorted(names.values()) == ["nodea", "nodea", "nodeb", "nodeb"]
        assert cluster.remove_engines([ids[0]]) == [ids[0]]
        results = running.get(120)
        assert [r[0] for r in results] == [x * x for x in range(60)]
        wait_until(lambda: len(rc.ids) == 3, timeout=30)
        launches = [p.stem for p in (tmp_path / "profile" / "launches").glob("*.log")]
    assert len(launches) == 4
    wait_until(lambda: not processes_with(launches), timeout=30)


def test_a_hub_on_every_interface_is_dialled_at_its_location(
    shared_hosts: Hosts, tmp_path: Path
) -> None:
    """``--ip 0.0.0.0 --location ADDR``: engines on another host and clients dial ADDR,
    encrypted (a wildcard bind is not loopback)."""
    hosts = shared_hosts
    args = ["--ip", "0.0.0.0", "--location", hosts.hub_ip]  # noqa: S104 - the case tested
    args += ["--engines", "ssh", "--hosts", "nodeb:1", "--ssh", hosts.ssh]
    with NetnsHub(hosts, tmp_path / "hub", args) as hub:
        info = json.loads(hub.client_file.read_text())
        assert info["urls"]["client"].startswith("tcp://0.0.0.0:")
        assert "curve" in info
        client = Client(url_file=str(hub.client_file))
        try:
            assert client.url.startswith(f"tcp://{hosts.hub_ip}:")
            client.wait_for_engines(1, timeout=60)
            assert client[:].apply_sync(socket.gethostname) == ["nodeb"]
        finally:
            client.close()


def test_a_host_ssh_cannot_reach_is_reported_with_ssh_s_error(
    shared_hosts: Hosts, tmp_path: Path
) -> None:
    """One host has no sshd: waiting for the engines fails at once with ssh's own words,
    instead of a timeout; the engine on the other host runs."""
    hosts = shared_hosts
    cluster = Cluster(
        engines="ssh",
        hosts={"nodea": 1, hosts.hub_ip: 1},  # the hub's namespace runs no sshd
        ssh=["ssh", "-F", hosts.ssh_config],
        shared_dir=True,  # no scp: the failure is the engine's own ssh
        ip=hosts.root_ip,
        profile_dir=str(tmp_path / "profile"),
    )
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)ended before they registered.*refused"):
        cluster.start_and_connect(timeout=60)
    assert time.monotonic() - started < 30
    assert not cluster.running()


# -- who may connect ---------------------------------------------------------------------
def _client_file_with(cluster: NetnsHub, folder: Path, **curve: str) -> Path:
    doc = json.loads(cluster.client_file.read_text())
    doc["curve"].update(curve)
    path = folder / "hub-client.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return path


def test_a_strangers_keypair_is_refused(rc: Client, cluster: NetnsHub, tmp_path: Path) -> None:
    public, secret = curve_keypair()
    stranger = _client_file_with(
        cluster, tmp_path, client_public=public.decode(), client_secret=secret.decode()
    )
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError, match="refused this client's Curve key"):
        Client(url_file=str(stranger), timeout=30)
    assert time.monotonic() - started < 5
    # An engine's own socket refuses it too.
    info = json.loads(cluster.client_file.read_text())
    engine = next(iter(rc._engines.values()))
    keys = CurveKeys(info["curve_peers"]["engine"].encode(), public, secret)
    assert _handshake(str(engine["direct_url"]), keys) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    good = CurveKeys(
        keys.server_public, *(info["curve"][k].encode() for k in ("client_public", "client_secret"))
    )
    assert _handshake(str(engine["direct_url"]), good) == zmq.EVENT_HANDSHAKE_SUCCEEDED


def _handshake(url: str, keys: CurveKeys) -> int:
    """The first handshake event of a Curve DEALER connecting to ``url``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    monitor = sock.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    )
    try:
        configure_curve_client(sock, keys)
        sock.connect(url)
        assert monitor.poll(10_000), "no handshake event within 10 s"
        return int(zmq.utils.monitor.recv_monitor_message(monitor)["event"])
    finally:
        monitor.close(0)
        sock.close(0)
        ctx.term()


def test_a_wrong_server_key_fails_clearly_within_5_s(cluster: NetnsHub, tmp_path: Path) -> None:
    wrong, _ = curve_keypair()
    path = _client_file_with(cluster, tmp_path, server_public=wrong.decode())
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError, match="server key in the connection file"):
        Client(url_file=str(path), timeout=30)
    assert time.monotonic() - started < 5


def test_nothing_crosses_the_bridge_in_clear(hosts: Hosts, rc: Client, tmp_path: Path) -> None:
    """A marker sent in a task and its result never appears in a capture of the bridge,
    while the same capture of an unencrypted cluster shows it (the check can fail)."""

    def echo(marker: str) -> str:
        return marker * 3

    def traffic(client: Client, pcap: Path) -> bytes:
        marker = f"MARKER-{uuid.uuid4().hex}"
        with capture(hosts.network, pcap):
            assert client[:].apply_sync(echo, marker) == [marker * 3] * len(client.ids)
            client[:].push({"m": marker}, block=True)
        data = pcap.read_bytes()
        assert len(data) > 10_000, "the capture saw no traffic"
        return data if marker.encode() in data else b""

    assert traffic(rc, tmp_path / "curve.pcap") == b"", "a marker crossed the bridge in clear"
    with hosts_lock(), NetnsHub(hosts, tmp_path / "plain", _hub_args(hosts, "--insecure")) as plain:
        client = Client(url_file=str(plain.client_file))
        try:
            client.wait_for_engines(4, timeout=60)
            assert traffic(client, tmp_path / "plain.pcap"), "the control run saw no marker"
        finally:
            client.close()
