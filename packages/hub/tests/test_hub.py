"""The hub with real engine processes: routing, views, liveness, retries, dependencies."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from shoal.hub import (
    Client,
    CompositeError,
    DependencyError,
    EngineDiedError,
    HubLost,
    RemoteError,
    TaskAborted,
)
from shoal.hub.testing import ClusterStarter, engine_pids, wait_processes_gone, wait_until

pytestmark = pytest.mark.timeout(90)


def _submitted(client: Client) -> int:
    """Tasks the hub holds: queued, and outstanding on engines."""
    status = client.queue_status()
    return int(status["unassigned"]) + sum(
        int(s["outstanding"]) for e, s in status.items() if isinstance(e, int)
    )


def test_direct_view_round_trips(client: Client) -> None:
    view = client[:]
    pids = view.apply_sync(os.getpid)
    assert sorted(pids) == sorted(engine_pids(client).values())
    assert client[0].apply_sync(lambda a, b=1: a + b, 40, b=2) == 42
    assert client[-1].apply_sync(lambda: 7) == 7
    assert view.execute("x = 6\nx * 7", block=True) == [42, 42]
    view["y"] = [1, 2]
    assert view["y"] == [[1, 2], [1, 2]]
    assert view.pull(["x", "x + 1"], block=True) == [[6, 7], [6, 7]]
    view.scatter("part", list(range(10)), block=True)
    assert client[0]["part"] == [0, 1, 2, 3, 4]
    assert view.gather("part", block=True) == list(range(10))
    a = np.arange(30.0).reshape(10, 3)
    view.scatter("a", a, block=True)
    assert client[1]["a"].shape == (5, 3)
    assert np.array_equal(view.gather("a", block=True), a)
    assert view.map_sync(lambda x, y: x * y, range(7), range(7)) == [i * i for i in range(7)]
    ar = view.apply_async(lambda: 1)
    assert ar.get(10) == [1, 1]
    assert ar.successful()
    assert ar.progress == 2

    @view.remote(block=True)
    def where() -> int:
        return os.getpid()

    assert sorted(where()) == sorted(pids)

    @view.parallel(block=True)
    def double(chunk: list[int]) -> list[int]:
        return [2 * c for c in chunk]

    assert double(list(range(9))) == [2 * i for i in range(9)]


def test_interactive_functions_see_the_engine_namespace(client: Client) -> None:
    """A lambda typed in a session (``__main__``) finds pushed names on the engine, as in
    ipyparallel; names only the session has travel with it."""
    script = (
        "import sys\n"
        "from shoal.hub import Client\n"
        "rc = Client(url_file=sys.argv[1])\n"
        "rc.wait_for_engines(1, timeout=30)\n"
        "offset = 100\n"
        "rc[0].push({'pushed': 41}, block=True)\n"
        "print(rc[0].apply_sync(lambda: pushed + 1), rc[0].apply_sync(lambda k: k + offset, 1))\n"
        "rc.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, client.url_file],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["42", "101"]


def test_remote_errors(client: Client) -> None:
    with pytest.raises(RemoteError) as one:
        client[0].apply_sync(lambda: 1 / 0)
    assert one.value.ename == "ZeroDivisionError"
    assert isinstance(one.value, ZeroDivisionError)
    assert one.value.engine_id == 0
    assert "1 / 0" in one.value.traceback
    with pytest.raises(CompositeError) as many:
        client[:].execute("raise ValueError('nope')", block=True)
    assert [e.evalue for e in many.value.elist] == ["nope", "nope"]
    assert client[:].apply_sync(lambda: "still serving") == ["still serving"] * 2


def test_output_is_streamed_before_the_reply(client: Client) -> None:
    ar = client[0].execute(
        "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)"
    )
    wait_until(lambda: "0" in ar.stdout, timeout=20)
    assert not ar.done(), "output should arrive while the code still runs"
    ar.get(20)
    assert ar.stdout == "0\n1\n2\n"


def test_load_balanced_map_imap_and_order(client: Client) -> None:
    lb = client.load_balanced_view()
    assert lb.map_sync(lambda x: x * x, range(100)) == [x * x for x in range(100)]
    assert lb.map_sync(lambda x: x + 1, range(10), chunksize=3) == list(range(1, 11))
    unordered = lb.map_async(lambda x: x, range(20), chunksize=1, ordered=False)
    assert sorted(unordered) == list(range(20))
    assert list(lb.imap(lambda x: -x, range(50), max_outstanding=3)) == [-x for x in range(50)]
    engines = {lb.apply_async(os.getpid).get(10) for _ in range(20)}
    assert engines <= set(engine_pids(client).values())
    with pytest.raises(ValueError, match="equal lengths"):
        lb.map(lambda x, y: x, [1, 2], [1])


def test_killed_engine_fails_its_requests_and_the_cluster_serves_on(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    with hub(tmp_path) as (_, rc):
        pid = engine_pids(rc)[0]
        both = rc[:]
        running = rc[0].execute("print('running', flush=True); import time; time.sleep(60)")
        wait_until(lambda: "running" in running.stdout, timeout=20)
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(EngineDiedError, match=r"engine 0 .*SIGKILL"):
            running.get(20)
        assert time.monotonic() - start < 5  # about 0.2 s; generous for a loaded machine
        assert rc.ids == [1]
        assert rc[:].apply_sync(lambda: 3) == [3]
        with pytest.raises(CompositeError) as err:
            both.apply_sync(lambda: 3)  # a view made before: engine 0's part fails
        assert [type(e) for e in err.value.elist] == [EngineDiedError]
        assert "engine 0 is not registered" in str(err.value.elist[0])
        assert rc.load_balanced_view().apply_sync(lambda: 5) == 5


def test_load_balanced_retry_runs_elsewhere_once(tmp_path: Path, hub: ClusterStarter) -> None:
    with hub(tmp_path) as (_, rc):
        pids = engine_pids(rc)
        lb = rc.load_balanced_view()
        lb.retries = 1
        started, go = tmp_path / "started", tmp_path / "go"

        def task(started: str, go: str) -> int:
            # Says where it runs, then waits to be let go: the test kills it meanwhile,
            # and its retry elsewhere finds the way open.
            import os
            import time

            with open(started, "a") as f:
                f.write(f"{os.getpid()}\n")
            while not os.path.exists(go):
                time.sleep(0.01)
            return os.getpid()

        ar = lb.apply_async(task, str(started), str(go))
        first = int(wait_until(lambda: started.exists() and started.read_text(), timeout=30))
        victim = next(e for e in pids if pids[e] == first)
        os.kill(first, signal.SIGKILL)
        go.touch()
        survivor = next(e for e in pids if e != victim)
        assert ar.get(20) == pids[survivor]
        records = [r for r in rc.history([ar.msg_ids[0]]) if r]
        assert len(records) == 1
        assert records[0]["engine_id"] == survivor


def test_stopped_engine_is_declared_dead(tmp_path: Path, hub: ClusterStarter) -> None:
    with hub(tmp_path) as (_, rc):
        pid = engine_pids(rc)[1]
        ar = rc[1].apply_async(lambda: 1)
        ar.get(10)
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            stuck = rc[1].apply_async(lambda: 2)
            with pytest.raises(EngineDiedError, match="heartbeat"):
                stuck.get(20)
            assert time.monotonic() - start < 8  # about 2 s
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        wait_processes_gone([pid], timeout=10)  # the hub ended its stopped child


def test_engine_busy_in_c_holding_the_gil_is_not_declared_dead(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    with hub(tmp_path, 1, "--timeout", "1.0") as (_, rc):
        # libc sleep() called through PyDLL keeps the GIL for 4 s: only the heartbeat
        # device, in C, answers meanwhile.
        ar = rc[0].execute("import ctypes; ctypes.PyDLL(None).sleep(4)")
        assert ar.get(30) == 0  # sleep() returned
        assert rc.ids == [0]


def test_killed_hub_ends_engines_and_fails_clients(tmp_path: Path, hub: ClusterStarter) -> None:
    with hub(tmp_path) as (proc, rc):
        pids = list(engine_pids(rc).values())
        pending = rc[0].execute("import time; time.sleep(60)")
        proc.kill()
        start = time.monotonic()
        with pytest.raises(HubLost):
            pending.get(20)
        assert time.monotonic() - start < 6  # within hub_timeout (2.3 s) and a ping
        wait_processes_gone(pids, timeout=6)
        with pytest.raises(HubLost):
            rc.load_balanced_view().apply_async(lambda: 1)


def test_dependencies_after_and_follow(client: Client) -> None:
    lb = client.load_balanced_view()
    first = lb.apply_async(lambda: (__import__("time").sleep(0.5), __import__("time").time())[1])
    with lb.temp_flags(after=[first]):
        second = lb.apply_async(lambda: __import__("time").time())
    assert second.get(20) >= first.get(20)
    where = lb.apply_async(os.getpid)
    with lb.temp_flags(follow=where):
        same = [lb.apply_async(os.getpid) for _ in range(5)]
    assert {s.get(20) for s in same} == {where.get(20)}
    failed = lb.apply_async(lambda: 1 / 0)
    with lb.temp_flags(after=failed):
        doomed = lb.apply_async(lambda: 1)
    with pytest.raises(DependencyError, match="did not succeed"):
        doomed.get(20)
    with lb.temp_flags(after=["no-such-task"]):
        unknown = lb.apply_async(lambda: 1)
    with pytest.raises(DependencyError, match="not a task"):
        unknown.get(20)


def test_abort_queued_tasks(client: Client, tmp_path: Path) -> None:
    """Tasks queued behind a running one (in the hub, or on the engine) are aborted."""

    def held(path: str) -> None:
        import os  # runs on the engine, until the test opens the gate
        import time

        while not os.path.exists(path):
            time.sleep(0.01)

    gate = tmp_path / "gate"
    lb = client.load_balanced_view(targets=[0])
    try:
        blocker = lb.apply_async(held, str(gate))
        queued = [lb.apply_async(lambda: 1) for _ in range(4)]
        wait_until(lambda: _submitted(client) == 5, timeout=20)  # all reached the hub
        for ar in queued:
            ar.abort()  # the hub drops its own, and asks the engine to drop the one it holds
        client[0].status()  # a control request behind that ask: the engine has it
    finally:
        gate.touch()
    for ar in queued:
        with pytest.raises(TaskAborted):
            ar.get(20)
    blocker.get(20)
    assert lb.apply_sync(lambda: 2) == 2


def test_bad_input_gets_clear_errors_and_the_hub_serves_on(client: Client) -> None:
    with pytest.raises(IndexError, match="no engine 7"):
        client[7]
    with pytest.raises(TypeError, match="callable"):
        client[0].apply(42)
    with pytest.raises(TypeError, match="str"):
        client[0].execute(b"x = 1")
    # Garbage on the hub's client port: dropped, never answered, never fatal.
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        rogue = ctx.socket(zmq.DEALER)
        rogue.linger = 0
        rogue.connect(client.url)
        for frames in ([b"e0", b"garbage"], [b"hub", b"<SHOAL|1>junk"], [b"lb"], [b"x9", b"y"]):
            rogue.send_multipart(frames)
        rogue.close()
    finally:
        ctx.term()
    assert client[:].apply_sync(lambda: 1) == [1, 1]


def test_history_and_queue_status(client: Client) -> None:
    ar = client.load_balanced_view().map_async(lambda x: x, range(8), chunksize=2)
    ar.get(20)
    # Tasks the client placed itself reach the hub's history in the engines' reports.
    wait_until(lambda: None not in client.history(ar.msg_ids), timeout=30)
    records = client.history(ar.msg_ids)
    assert all(r is not None and r["status"] == "ok" for r in records)
    assert all(r["completed"] >= r["started"] for r in records if r)
    status = client.queue_status()
    assert status["unassigned"] == 0
    assert {e for e in status if isinstance(e, int)} == {0, 1}


def test_task_time_limit_interrupts_and_the_engine_serves_on(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    with hub(tmp_path, 1) as (_, rc):
        lb = rc.load_balanced_view()
        lb.timeout = 0.5
        for code in ("import time; time.sleep(30)", "while True: pass"):
            start = time.monotonic()
            with pytest.raises(RemoteError) as err:
                lb.apply_sync(exec, code)
            assert err.value.ename == "TimeoutError"
            assert "limit of 0.5 s" in err.value.evalue
            assert time.monotonic() - start < 10
        lb.timeout = None
        assert lb.apply_sync(lambda: "serving") == "serving"
        lb.set_flags(timeout=-1)
        with pytest.raises(ValueError, match="positive"):
            lb.apply_async(len, "")


def test_submitting_waits_when_too_much_is_outstanding(client: Client) -> None:
    client.max_outstanding = 3
    lb = client.load_balanced_view()
    sleeper = lambda: __import__("time").sleep(0.3)  # noqa: E731
    start = time.monotonic()
    results = [lb.apply_async(sleeper) for _ in range(6)]
    # The 4th submission had to wait for the 1st reply, after about 0.3 s.
    assert time.monotonic() - start > 0.25
    for ar in results:
        ar.get(20)


def test_sqlite_history_survives_a_hub_restart(tmp_path: Path, hub: ClusterStarter) -> None:
    with hub(tmp_path, 1, "--store", "sqlite") as (_, rc):
        ar = rc.load_balanced_view().map_async(lambda x: x, range(6), chunksize=1)
        ar.get(20)
        ids = ar.msg_ids
        failed = rc[0].apply_async(lambda: 1 / 0)
        with pytest.raises(RemoteError):
            failed.get(20)
        # A request sent straight to an engine reaches the history by the engine's report.
        wait_until(lambda: rc.history(failed.msg_ids) != [None], timeout=10)
    assert (tmp_path / "history.sqlite").exists()
    with hub(tmp_path, 1, "--store", "sqlite") as (_, rc):
        records = rc.history([*ids, failed.msg_ids[0], "unknown"])
        assert [r["status"] for r in records[:-2] if r] == ["ok"] * 6
        assert records[-2] is not None
        assert records[-2]["status"] == "error"
        assert records[-1] is None
        assert len(rc.history()) == 7


def test_engine_status_interrupt_and_removal(tmp_path: Path, hub: ClusterStarter) -> None:
    with hub(tmp_path) as (_, rc):
        status = rc[0].status()
        assert status["engine_id"] == 0
        assert status["pid"] == engine_pids(rc)[0]
        assert {s["engine_id"] for s in rc[:].status()} == {0, 1}
        running = rc[1].execute("print('running', flush=True); import time; time.sleep(60)")
        wait_until(lambda: "running" in running.stdout, timeout=20)
        rc[1].interrupt()
        with pytest.raises(RemoteError) as err:
            running.get(20)
        assert err.value.ename == "KeyboardInterrupt"
        pid = engine_pids(rc)[1]
        assert rc.remove_engines([1]) == [1]
        wait_processes_gone([pid], timeout=10)
        assert rc.ids == [0]


def test_a_dropped_result_is_freed(client: Client) -> None:
    """The client keeps no result once it is delivered: dropping the AsyncResult frees it."""
    import gc
    import weakref

    refs = []
    for view in (client[0], client.load_balanced_view()):
        ar = view.apply_async(lambda: bytearray(1 << 20))
        assert len(ar.get(20)) == 1 << 20
        refs.append(weakref.ref(ar))
        del ar
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert not client._pending


def test_many_threads_share_one_client(client: Client) -> None:
    """Callers in several threads wait on their own results, reading for each other."""
    import concurrent.futures

    lb = client.load_balanced_view()

    def work(k: int) -> list[int]:
        view = client[k % 2]
        out = [view.apply_sync(lambda x: x * 2, i) for i in range(30)]
        out += [lb.apply_async(lambda x: x + 1, i).get(30) for i in range(10)]
        return out

    expected = [i * 2 for i in range(30)] + [i + 1 for i in range(10)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert results == [expected] * 8
    futures = [lb.apply_async(lambda x: x, i) for i in range(20)]
    done = concurrent.futures.wait(futures, timeout=30)  # no caller reads: the I/O thread
    assert len(done.done) == 20


def test_view_conveniences(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """block, run, sync_imports, await, timings, outputs and the progress display."""
    import asyncio

    view = client[:]
    assert view.block is False
    assert isinstance(view.apply(lambda: 1), concurrent.futures.Future)
    view.block = True
    assert view.apply(lambda: 1) == [1, 1]
    script = tmp_path / "job.py"
    script.write_text("import math\nfrom_file = math.factorial(5)\n")
    view.run(script)
    assert view["from_file"] == [120, 120]
    with view.sync_imports():
        import json
        from decimal import Decimal
    assert view.apply(lambda: json.dumps([1])) == ["[1]", "[1]"]
    assert view.apply(lambda: str(Decimal("1.5"))) == ["1.5", "1.5"]
    imported = capsys.readouterr().out
    assert imported.count("on engine(s)") == 2  # the block's two imports, not their own

    async def both() -> list[object]:
        return await asyncio.gather(
            client[0].apply_async(lambda: "a"), client[1].apply_async(lambda: "b")
        )

    assert asyncio.run(both()) == ["a", "b"]
    ar = client.load_balanced_view().map_async(
        lambda x: (print("item", x), __import__("time").sleep(0.05), x)[2],
        range(6),
        chunksize=1,
    )
    ar.wait_interactive(interval=0.02)
    assert ar.get(20) == list(range(6))
    assert ar.progress == 6
    assert ar.serial_time >= 0.25
    assert ar.elapsed >= ar.wall_time > 0
    ar.display_outputs()
    out = capsys.readouterr()
    assert "6/6 tasks" in out.err
    assert sum(f"item {x}" in out.out for x in range(6)) == 6


def test_a_burst_of_tasks_travels_in_batches_and_each_is_answered(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    """Tasks submitted while others are unanswered go together (the client's outbox);
    each still gets its own result, in order, and one awaited without get() arrives."""
    with hub(tmp_path, 1) as (_, rc):
        lb = rc.load_balanced_view()
        results = [lb.apply_async(lambda x: x * 3, i) for i in range(1000)]
        last = results[-1]
        done, _ = concurrent.futures.wait([last], timeout=30)  # no get(): the reader flushes
        assert last in done
        assert [r.get(30) for r in results] == [i * 3 for i in range(1000)]
        blocker = lb.apply_async(lambda: __import__("time").sleep(1))
        queued = [lb.apply_async(lambda: 1) for _ in range(10)]
        queued[-1].abort()  # possibly still in the outbox: abort sends it first
        with pytest.raises(TaskAborted):
            queued[-1].get(20)
        assert [q.get(20) for q in queued[:-1]] == [1] * 9
        blocker.get(20)


def test_drop_counters_are_readable(tmp_path: Path, hub: ClusterStarter) -> None:
    """Messages refused by the hub (a wrong key here) are counted per socket and reason,
    and the engines' and the client's own counters are readable too."""
    import zmq

    from shoal.wire import Codec, Message, generate_key, new_header, read_connection_file

    with hub(tmp_path, 1) as (_, rc):
        info = read_connection_file(str(tmp_path / "hub-client.json"))
        ctx = zmq.Context()
        try:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(info.urls["client"])
            forged = Codec(generate_key()).encode(Message(new_header("apply_request", "x")))
            for _ in range(3):
                sock.send_multipart([b"lb", *forged])
            wait_until(
                lambda: rc.hub_statistics()["client"]["dropped"].get("AuthenticationError", 0) >= 3,
                timeout=30,
            )
            assert rc.hub_statistics()["client"]["dropped"] == {"AuthenticationError": 3}
            sock.close()
        finally:
            ctx.term()
        assert rc.queue_status()["unassigned"] == 0
        assert rc[0].apply_sync(lambda: 1) == 1
        messages = rc[0].status()["messages"]
        assert sum(m["received"] for m in messages.values()) > 0
        assert all(m["dropped"] == {} for m in messages.values())
        assert rc.statistics()["dropped"] == {}
        assert rc.statistics()["received"] > 0
