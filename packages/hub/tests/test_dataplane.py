"""Large arrays between the client and engines of one host: shared memory, and cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shoal.hub import Client, CompositeError, empty_shared, scatter
from shoal.hub.testing import ClusterStarter, wait_until
from shoal.wire import default_shared_memory, shared_memory_enabled
from shoal.wire._shm import SHM_DIR

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not shared_memory_enabled(), reason="needs /dev/shm, and SHOAL_SHM on"),
]


def _held_by(pids: set[int]) -> list[str]:
    return [
        n for n in os.listdir(SHM_DIR) if n.startswith("shoal-u-") and int(n.split("-")[2]) in pids
    ]


@contextlib.contextmanager
def _client_script(path: Path, source: str, says: bytes) -> Iterator[subprocess.Popen[bytes]]:
    """A client process running ``source``, once its first line says ``says``; ended
    (SIGKILL) after the block, if it still runs."""
    path.write_text(textwrap.dedent(source))
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == says
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def _engines_elsewhere(hub_dir: Path, n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` engines of the hub in ``hub_dir`` that say they run on another host."""
    env = {**os.environ, "SHOAL_HOST": "elsewhere"}
    command = ["-m", "shoal.engine", "--connection-file", str(hub_dir / "hub-engine.json")]
    command += ["--register", "--direct", "--parent-pid", str(os.getpid())]
    procs = [
        subprocess.Popen([sys.executable, *command], env=env, stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_arrays_travel_through_shared_memory_both_ways(client: Client) -> None:
    a = np.random.default_rng(3).random(3_000_000)  # 24 MB
    view = client[0]
    view.push({"a": a}, block=True)
    # The engine's array is its own: writable, and equal.
    assert view.apply_sync(lambda: (a.flags.writeable, float(a.sum()))) == (
        True,
        float(a.sum()),
    )
    view.execute("a[0] = -1.0", block=True)
    back = view.pull("a", block=True)
    assert back[0] == -1.0
    assert np.array_equal(back[1:], a[1:])
    assert a[0] != -1.0  # the client's array was copied, not shared
    assert view.apply_sync(lambda: default_shared_memory().received) >= 1
    # A proxy argument moves engine to engine the same way: engine 1's fetch reply
    # reaches engine 0 through shared memory.
    box = scatter([np.ones(2_000_000)], destination=1, split=False, client=client)
    target = scatter([], destination=0, split=False, client=client)
    received = view.apply_sync(lambda: default_shared_memory().received)
    target.extend(box)
    assert target[0].sum() == 2_000_000
    assert view.apply_sync(lambda: default_shared_memory().received) > received
    view.execute("del a", block=True)  # the shared cluster's engines keep no large array


def test_arrays_already_in_shared_memory_travel_on_without_a_copy(client: Client) -> None:
    """A pulled array that was pushed, and an array made with empty_shared, are sent
    without a copy; every side still keeps its own writes (copy-on-write)."""
    shm = default_shared_memory()
    view = client[0]
    view.push({"a": np.arange(4_000_000, dtype=np.float64)}, block=True)
    shared = view.apply_sync(lambda: default_shared_memory().shared)
    back = view.pull("a", block=True)  # the engine's pages, shared
    assert view.apply_sync(lambda: default_shared_memory().shared) == shared + 1
    back[:10] = -1.0  # the client's write stays the client's
    assert view.pull("float(a[:10].sum())", block=True) == 45.0
    view.execute("a[-1] = 0.0", block=True)  # and the engine's the engine's
    assert back[-1] == 3_999_999.0
    copied = view.pull("a", block=True)  # its last page was written since: copied
    assert view.apply_sync(lambda: default_shared_memory().shared) == shared + 1
    assert copied[-1] == 0.0

    whole = empty_shared((3_000_001, 2), np.int64)
    whole[:] = np.arange(whole.size).reshape(whole.shape)
    expected = whole.copy()
    before = shm.shared
    client[:].scatter("part", whole, block=True)
    assert shm.shared == before + 2  # each engine's part: no copy
    whole[:] = 0
    assert client[:].pull("int(part.sum())", block=True) == [
        int(expected[:1_500_001].sum()),
        int(expected[1_500_001:].sum()),
    ]
    assert np.array_equal(client[:].gather("part", block=True), expected)
    assert empty_shared(3).shape == (3,)  # small: an ordinary array
    client[:].execute("del part", block=True)  # the shared cluster's engines keep no large array
    view.execute("del a", block=True)


def test_killed_processes_leave_no_segments_behind(tmp_path: Path, hub: ClusterStarter) -> None:
    """Engines and a client SIGKILLed in the middle of transfers: when the cluster
    stops, /dev/shm holds nothing of theirs."""
    with hub(tmp_path / "hub") as (hub_proc, rc):
        pid_of = dict(zip(rc.ids, rc[:].apply_sync(os.getpid), strict=True))
        engine_pids = set(pid_of.values())
        source = f"""
                import numpy as np
                from shoal.hub import Client
                rc = Client(url_file={str(tmp_path / "hub" / "hub-client.json")!r})
                a = np.ones(8_000_000)
                print("ready", flush=True)
                while True:
                    rc[:].push({{"big": a}}, block=True)
                    rc[:].pull("big", block=True)
                """
        with _client_script(tmp_path / "client.py", source, b"ready") as client:
            wait_until(lambda: _held_by({pid_of[0]}), timeout=30)  # transfers under way
            os.kill(pid_of[0], signal.SIGKILL)
            os.kill(client.pid, signal.SIGKILL)
        wait_until(lambda: 0 not in rc.ids, timeout=20)
        assert rc.ids == [1]
        # The dead engine's array is still in /dev/shm: nobody unmapped it.
        assert _held_by({pid_of[0]})
        assert rc[1].apply_sync(os.getpid) == pid_of[1]  # the other engine serves on
        pids = engine_pids | {client.pid, hub_proc.pid}
    wait_until(lambda: not _held_by(pids), timeout=20, message=lambda: f"{_held_by(pids)} gone")


@pytest.mark.parametrize("direct", [True, False])
def test_a_reply_to_a_client_that_is_gone_leaves_no_segment(
    tmp_path: Path, hub: ClusterStarter, direct: bool
) -> None:
    """A client killed while an engine computes a large result for it: the reply cannot
    be delivered (by the engine's direct socket, or by the hub), and its segment goes
    back to the pool at once rather than when the engine ends."""
    with hub(tmp_path / "hub") as (_, rc):
        engine_pid = rc[0].apply_sync(os.getpid)
        source = f"""
                import time
                from shoal.hub import Client
                rc = Client(url_file={str(tmp_path / "hub" / "hub-client.json")!r},
                            direct={direct!r})
                rc[0].execute("import time, numpy as np", block=True)
                rc[0].execute("time.sleep(1.5); big = np.ones(4_000_000)")
                rc[0].pull("big")  # queued behind it: its reply is 32 MB
                print("sent", flush=True)
                time.sleep(30)
                """
        with _client_script(tmp_path / "client.py", source, b"sent") as client:
            os.kill(client.pid, signal.SIGKILL)
        rc[0].execute("pass", block=True)  # after the pull's reply was tried
        wait_until(
            lambda: not _held_by({engine_pid}),
            timeout=10,
            message=lambda: f"{_held_by({engine_pid})} gone",
        )


def _counters() -> tuple[int, int]:
    shm = default_shared_memory()
    return shm.sent, shm.received


def test_an_engine_on_another_host_gets_its_data_as_frames(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    """Large buffers go through shared memory only between processes of one host: an
    engine on another host (here one that says so with SHOAL_HOST) gets and sends them
    as zmq frames, and the same calls work."""
    with hub(tmp_path / "hub") as (_, rc), _engines_elsewhere(tmp_path / "hub", 1) as (far,):
        rc.wait_for_engines(3, timeout=60)
        far_id = max(rc.ids)
        assert rc[far_id].apply_sync(os.getpid) == far.pid
        a = np.arange(3_000_000, dtype=np.float64)  # 24 MB
        client_before = _counters()
        rc[far_id].push({"a": a}, block=True)
        assert np.array_equal(rc[far_id].pull("a", block=True), a)
        assert _counters() == client_before  # nothing through shared memory
        assert rc[far_id].apply_sync(_counters) == (0, 0)
        # A load-balanced task may land on it: so its buffers go as frames too.
        lb = rc.load_balanced_view()
        assert lb.apply_async(np.sum, a).get(30) == a.sum()
        assert _counters() == client_before
        # Engine to engine: a proxy argument fetched from an engine of this host.
        box = scatter([a], destination=0, split=False, client=rc)
        target = scatter([], destination=far_id, split=False, client=rc)
        target.extend(box)
        assert target[0].sum() == a.sum()
        assert rc[0].apply_sync(_counters)[0] == 0  # engine 0 sent it as frames
        assert rc[far_id].apply_sync(_counters) == (0, 0)
        # Engines of this host still use it.
        rc[0].push({"a": a}, block=True)
        assert _counters()[0] > client_before[0]


def test_a_push_to_engines_of_another_host_crosses_once(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    """A push to every engine, two of them on another host: the data goes to that host
    once, to one of them, and the other fetches it from that one (a tree); every engine
    ends with its own equal array."""
    with hub(tmp_path / "hub") as (_, rc), _engines_elsewhere(tmp_path / "hub", 2) as far:
        rc.wait_for_engines(4, timeout=60)
        pids = dict(zip(rc.ids, rc[:].apply_sync(os.getpid), strict=True))
        far_ids = sorted(i for i, pid in pids.items() if pid in {p.pid for p in far})
        a = np.arange(2_000_000, dtype=np.float64)  # 16 MB
        assert rc[:].push({"a": a, "n": 1}, block=True) == [None] * 4
        sums = rc[:].pull("float(a.sum()) + n", block=True)
        assert sums == [float(a.sum()) + 1] * 4
        # The far relay sent the other far engine its copy through shared memory.
        received = {i: rc[i].apply_sync(_counters)[1] for i in far_ids}
        assert sorted(received.values()) == [0, 1]
        rc[far_ids].execute("a[0] = -1.0", block=True)  # each engine's own array
        assert rc[:].pull("float(a[0])", block=True).count(-1.0) == 2
        with pytest.raises(CompositeError):  # a failed push fails on both far engines
            rc[:].push({1: a}, block=True)


def crash_once(a: np.ndarray, marker: str) -> float:
    """Kill this engine the first time (after it took the array's segment), then sum."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return float(a.sum())


def test_a_retried_task_finds_its_array_after_the_first_engine_died(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    with hub(tmp_path / "hub") as (_, rc):
        lb = rc.load_balanced_view()
        lb.set_flags(retries=1)
        a = np.ones(1_000_000)  # 8 MB: through shared memory
        assert lb.apply_async(crash_once, a, str(tmp_path / "crashed")).get(60) == 1_000_000.0
        assert len(rc.ids) == 1  # one engine died on the way


def test_scatter_and_gather_of_a_large_array(client: Client) -> None:
    a = np.random.default_rng(5).random((3_000_001, 3))  # 72 MB, uneven halves
    client[:].scatter("part", a, block=True)
    assert client[:].pull("part.shape", block=True) == [(1_500_001, 3), (1_500_000, 3)]
    back = client[:].gather("part", block=True)  # joined on the pool's warm pages
    assert back.dtype == a.dtype
    assert np.array_equal(back, a)
    back[0, 0] = -1.0  # an ordinary writable array
    assert back[0, 0] == -1.0
    client[:].execute("del part", block=True)  # the shared cluster's engines keep no large array
