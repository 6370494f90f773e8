"""The multiprocess context on a real cluster (2 engines), each behaviour checked against
multiprocess's own "fork" context on the same calls: Process, queues, locks, Value,
Array, Pipe, Pool, Manager and the context's small API."""

from __future__ import annotations

import importlib
import multiprocessing.connection
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import multiprocess
import pytest

import shoal.hub
from shoal.hub import Client
from shoal.hub._compat.context import ClusterContext, get_context
from shoal.hub.testing import RunningCluster, engine_pids, wait_until
from shoal.wire import UnpicklableError

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0  # seconds any blocking call may take on this shared, noisy machine
KINDS = ["multiprocess", "cluster"]


# -- what the processes run (module level: both contexts must reach them) -----------------
def put_sum(q: Any, a: int, b: int, *, c: int = 0) -> None:
    q.put(a + b + c)


def raise_value_error() -> None:
    raise ValueError("boom")


def exit_with(code: object) -> None:
    sys.exit(code)


def spin(started: Any) -> None:
    started.set()
    while True:  # until terminated
        started.wait(0.05)


def wait_for(event: Any) -> None:
    if not event.wait(WAIT):
        raise RuntimeError("the event was never set")


def names(ctx: Any, q: Any) -> None:
    q.put((ctx.current_process().name, ctx.parent_process().name))


def add_locked(counter: Any, n: int) -> None:
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1


def consume_all(q: Any, out: Any) -> None:
    while (item := q.get(timeout=WAIT)) is not None:
        out.put(item * 10)
        q.task_done()
    q.task_done()


def echo(conn: Any) -> None:
    while (obj := conn.recv()) is not None:
        conn.send(("echo", obj))
    conn.close()


def barrier_wait(barrier: Any, q: Any) -> None:
    q.put(barrier.wait(WAIT))


def notify_when_ready(cond: Any, ready: Any) -> None:
    with cond:
        ready.value = 1
        cond.notify_all()


def set_first(arr: Any) -> None:
    with arr.get_lock():
        arr[0] = 99


def square(x: int) -> int:
    return x * x


def refuse_inside(ctx: Any, q: Any) -> None:
    try:
        ctx.Queue()
    except RuntimeError as exc:
        q.put(str(exc))


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster_context(cluster: RunningCluster) -> Iterator[ClusterContext]:
    """One context (one manager server) for the module's tests: its start costs ~0.3 s."""
    rc = Client(url_file=cluster.url_file)
    try:
        ctx = get_context(rc)
        yield ctx
        ctx.shutdown()
    finally:
        rc.close()


@pytest.fixture(params=KINDS)
def mp(request: pytest.FixtureRequest) -> Iterator[Any]:
    """multiprocess's fork context, or the cluster context; the test leaves no child."""
    if request.param == "multiprocess":
        ctx = multiprocess.get_context("fork")
        yield ctx
        for child in ctx.active_children():
            child.terminate()
            child.join(WAIT)
        return
    ctx = request.getfixturevalue("cluster_context")
    yield ctx
    for child in ctx.active_children():
        child.terminate()
    wait_until(lambda: not ctx.active_children(), timeout=WAIT)


@pytest.fixture
def cmp(cluster_context: ClusterContext) -> ClusterContext:
    """The cluster context alone, for what multiprocess has no counterpart of."""
    return cluster_context


def run(mp: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
    p = mp.Process(target=target, args=args, kwargs=kwargs)
    p.start()
    p.join(WAIT)
    assert not p.is_alive()
    return p


# -- Process --------------------------------------------------------------------------------
def test_process_runs_target_with_args_and_kwargs(mp: Any) -> None:
    """target(*args, **kwargs) runs, exitcode 0, the pid is known once started."""
    q = mp.Queue()
    p = mp.Process(target=put_sum, args=(q, 1, 2), kwargs={"c": 3})
    assert p.exitcode is None
    assert not p.is_alive()
    p.start()
    assert isinstance(p.pid, int)
    assert p.ident == p.pid
    p.join(WAIT)
    assert (p.exitcode, q.get(timeout=WAIT), p.is_alive()) == (0, 6, False)
    assert p.name.startswith(type(p).__name__ + "-")


def test_process_subclass_overrides_run(mp: Any) -> None:
    """A subclass's run() runs remotely with the attributes set in its __init__."""

    class Adder(mp.Process):  # type: ignore[misc,name-defined]
        def __init__(self, q: Any, x: int) -> None:
            super().__init__(name="adder")
            self.q, self.x = q, x

        def run(self) -> None:
            self.q.put((self.name, self.x + 1))

    q = mp.Queue()
    p = Adder(q, 41)
    p.start()
    p.join(WAIT)
    assert (p.exitcode, q.get(timeout=WAIT)) == (0, ("adder", 42))


def test_exception_gives_exitcode_1_and_traceback(
    mp: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """A raising target: exitcode 1, 'Process <name>:' and the traceback on stderr."""
    p = run(mp, raise_value_error)
    assert p.exitcode == 1
    err = capfd.readouterr().err
    assert f"Process {p.name}:\nTraceback (most recent call last):" in err
    assert "ValueError: boom" in err


@pytest.mark.parametrize(("code", "expected"), [(None, 0), (3, 3), (300, 44), ("bye", 1)])
def test_sys_exit_sets_exitcode(mp: Any, code: object, expected: int) -> None:
    """sys.exit(n) gives exitcode n (mod 256); a message gives 1."""
    assert run(mp, exit_with, code).exitcode == expected


@pytest.mark.parametrize(
    ("method", "signum"), [("terminate", signal.SIGTERM), ("kill", signal.SIGKILL)]
)
def test_terminate_and_kill(mp: Any, method: str, signum: int) -> None:
    """terminate()/kill() stop a running process: exitcode -SIGTERM / -SIGKILL."""
    started = mp.Event()
    p = mp.Process(target=spin, args=(started,))
    p.start()
    assert started.wait(WAIT)
    getattr(p, method)()
    p.join(WAIT)
    assert (p.is_alive(), p.exitcode) == (False, -signum)


def test_join_timeout_leaves_process_running(mp: Any) -> None:
    """join(timeout) returns with the process still alive and no exitcode."""
    event = mp.Event()
    p = mp.Process(target=wait_for, args=(event,))
    p.start()
    p.join(0.05)
    assert (p.is_alive(), p.exitcode) == (True, None)
    event.set()
    p.join(WAIT)
    assert (p.is_alive(), p.exitcode) == (False, 0)


def test_misuse_errors_match(mp: Any) -> None:
    """Start twice, daemon after start, close while running: multiprocess's errors."""
    event = mp.Event()
    p = mp.Process(target=wait_for, args=(event,), daemon=True)
    assert p.daemon
    p.start()
    with pytest.raises(AssertionError):
        p.start()
    with pytest.raises(AssertionError):
        p.daemon = False
    with pytest.raises(ValueError, match="still running"):
        p.close()
    event.set()
    p.join(WAIT)
    p.close()
    with pytest.raises(ValueError, match="closed"):
        p.is_alive()
    with pytest.raises(AssertionError, match="group"):
        mp.Process(group=object())


def test_sentinel_is_ready_when_process_ends(mp: Any) -> None:
    """multiprocessing.connection.wait on p.sentinel returns once the process ended."""
    event = mp.Event()
    p = mp.Process(target=wait_for, args=(event,))
    with pytest.raises(ValueError, match="not started"):
        p.sentinel  # noqa: B018
    p.start()
    assert multiprocessing.connection.wait([p.sentinel], timeout=0) == []
    event.set()
    assert multiprocessing.connection.wait([p.sentinel], timeout=WAIT) == [p.sentinel]
    p.join(WAIT)
    assert p.exitcode == 0


def test_current_and_parent_process(mp: Any) -> None:
    """In a task: the Process's name and MainProcess as parent; on the client:
    MainProcess and no parent."""
    q = mp.Queue()
    p = mp.Process(target=names, args=(mp, q), name="worker-7")
    p.start()
    p.join(WAIT)
    assert q.get(timeout=WAIT) == ("worker-7", "MainProcess")
    assert mp.current_process().name == "MainProcess"
    assert mp.parent_process() is None


def test_active_children(mp: Any) -> None:
    """A started process is an active child until it ended."""
    event = mp.Event()
    p = mp.Process(target=wait_for, args=(event,))
    p.start()
    assert p in mp.active_children()
    event.set()
    p.join(WAIT)
    assert p not in mp.active_children()


def test_more_processes_than_engines(mp: Any) -> None:
    """Five processes on two engines all run (the extra ones wait for an engine)."""
    q = mp.Queue()
    ps = [mp.Process(target=put_sum, args=(q, i, i)) for i in range(5)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(WAIT)
    assert [p.exitcode for p in ps] == [0] * 5
    assert sorted(q.get(timeout=WAIT) for _ in ps) == [0, 2, 4, 6, 8]


def test_waiting_process_terminated_before_it_runs(cmp: ClusterContext) -> None:
    """A process waiting for an engine ends at terminate(), -SIGTERM, never placed."""
    event = cmp.Event()
    busy = [cmp.Process(target=wait_for, args=(event,)) for _ in range(2)]
    for p in busy:
        p.start()
    extra = cmp.Process(target=wait_for, args=(event,))
    extra.start()
    assert (extra.pid, extra.is_alive()) == (None, True)
    extra.terminate()
    extra.join(WAIT)
    assert (extra.exitcode, extra.pid) == (-signal.SIGTERM, None)
    event.set()
    for p in busy:
        p.join(WAIT)
    assert [p.exitcode for p in busy] == [0, 0]
    assert {p.pid for p in busy} == set(
        shoal.hub.testing.engine_pids(cmp._need_client("")).values()
    )


def test_unpicklable_process_fails_at_start(cmp: ClusterContext) -> None:
    """A Process whose arguments cannot travel raises at start() and is not a child."""
    p = cmp.Process(target=print, args=((x for x in range(3)),))
    with pytest.raises(UnpicklableError):
        p.start()
    assert p not in cmp.active_children()


def test_task_cannot_make_shared_objects(cmp: ClusterContext) -> None:
    """Inside a task the context is detached: shared objects are made on the client."""
    q = cmp.Queue()
    assert run(cmp, refuse_inside, cmp, q).exitcode == 0
    assert "inside a task on an engine" in q.get(timeout=WAIT)


# -- queues ---------------------------------------------------------------------------------
def test_queue_api(mp: Any) -> None:
    """put/get with block and timeout, Empty/Full, nowait, qsize, full, close."""
    q = mp.Queue(maxsize=1)
    assert q.empty()
    q.put("a")
    assert (q.full(), q.qsize()) == (True, 1)
    with pytest.raises(queue.Full):
        q.put("b", timeout=0.01)
    with pytest.raises(queue.Full):
        q.put_nowait("b")
    assert q.get(timeout=WAIT) == "a"
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    q.put_nowait("c")
    assert q.get(True, WAIT) == "c"
    q.close()
    q.join_thread()
    q.cancel_join_thread()
    with pytest.raises(ValueError, match="closed"):
        q.put("d")


def test_queue_crosses_processes(mp: Any) -> None:
    """What a process puts, the client gets (and the other way round)."""
    q, out = mp.JoinableQueue(), mp.Queue()
    p = mp.Process(target=consume_all, args=(q, out))
    p.start()
    for i in range(3):
        q.put(i)
    q.put(None)
    q.join()  # every item was task_done()
    assert sorted(out.get(timeout=WAIT) for _ in range(3)) == [0, 10, 20]
    p.join(WAIT)
    assert p.exitcode == 0
    with pytest.raises(ValueError, match="too many"):
        q.task_done()


def test_simple_queue(mp: Any) -> None:
    """SimpleQueue: put, get, empty, close."""
    q = mp.SimpleQueue()
    assert q.empty()
    run(mp, put_sum, q, 2, 3)
    assert q.get() == 5
    assert q.empty()
    q.close()


# -- synchronization ----------------------------------------------------------------------------
def test_value_with_lock_across_processes(mp: Any) -> None:
    """Two processes add 50 each under get_lock(): the Value ends at 100."""
    counter = mp.Value("i", 0)
    ps = [mp.Process(target=add_locked, args=(counter, 50)) for _ in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(WAIT)
    assert counter.value == 100


def test_value_types_and_locks(mp: Any) -> None:
    """Value's defaults, conversions, type errors; RawValue and lock=False have no lock."""
    assert mp.Value("i").value == 0
    v = mp.Value("d", 1)
    assert v.value == 1.0
    v.value = 2.5
    assert v.value == 2.5
    with pytest.raises(TypeError):
        mp.Value("i", 1.5)
    assert mp.Value("b", 0).get_lock() is not None
    with pytest.raises(AttributeError):
        mp.Value("i", 1, lock=False).get_lock()
    with pytest.raises(AttributeError):
        mp.RawValue("i", 1).get_lock()
    lock = mp.RLock()
    assert mp.Value("i", 1, lock=lock).get_lock() is lock


def test_array(mp: Any) -> None:
    """Array: zeros from a size, items, len, indexing, slices, slice assignment, errors."""
    assert mp.Array("i", 3)[:] == [0, 0, 0]
    arr = mp.Array("d", [1, 2, 3, 4])
    assert (len(arr), arr[0], arr[-1], arr[1:3]) == (4, 1.0, 4.0, [2.0, 3.0])
    arr[1:3] = [7, 8]
    assert list(arr) == [1.0, 7.0, 8.0, 4.0]
    with pytest.raises(ValueError, match="same size"):
        arr[0:2] = [1]
    with pytest.raises(IndexError):
        arr[4]
    with pytest.raises(TypeError):
        arr[0] = "x"
    run(mp, set_first, arr)
    assert arr[0] == 99.0
    with pytest.raises(AttributeError):
        mp.RawArray("i", 2).get_lock()


def test_locks_and_semaphores(mp: Any) -> None:
    """Lock, RLock (reentrant), Semaphore counting, BoundedSemaphore refusing a release."""
    lock = mp.Lock()
    assert lock.acquire()
    assert not lock.acquire(False)
    lock.release()
    rlock = mp.RLock()
    with rlock, rlock:
        pass
    sem = mp.Semaphore(2)
    assert [sem.acquire(False) for _ in range(3)] == [True, True, False]
    sem.release()
    bounded = mp.BoundedSemaphore(1)
    with pytest.raises(ValueError, match="released too many times"):
        bounded.release()


def test_event_condition_barrier(mp: Any) -> None:
    """A process waits at a Barrier with the client; a Condition wakes the client."""
    barrier, q = mp.Barrier(2), mp.Queue()
    p = mp.Process(target=barrier_wait, args=(barrier, q))
    p.start()
    mine = barrier.wait(WAIT)
    assert {mine, q.get(timeout=WAIT)} == {0, 1}
    p.join(WAIT)
    cond, ready = mp.Condition(), mp.Value("i", 0)
    with cond:
        p = mp.Process(target=notify_when_ready, args=(cond, ready))
        p.start()
        assert cond.wait_for(lambda: ready.value == 1, WAIT)
    p.join(WAIT)
    event = mp.Event()
    assert not event.is_set()
    event.set()
    assert event.wait(0)
    event.clear()
    assert not event.wait(0.01)


# -- Pipe ----------------------------------------------------------------------------------
def test_pipe_with_a_process(mp: Any) -> None:
    """One end in a process that echoes; poll waits for its answer; EOF once it closed."""
    here, there = mp.Pipe()
    p = mp.Process(target=echo, args=(there,))
    p.start()
    there.close()  # the child's copy is the live end now
    here.send({"x": 1})
    assert here.recv() == ("echo", {"x": 1})
    assert not here.poll(0)
    here.send([1, 2])
    assert here.poll(WAIT)
    assert here.recv() == ("echo", [1, 2])
    here.send(None)
    p.join(WAIT)
    assert p.exitcode == 0
    with pytest.raises(EOFError):  # the child closed its end
        here.recv()
    here.close()
    assert here.closed


def test_pipe_api(mp: Any) -> None:
    """readable/writable, recv_bytes limits, recv_bytes_into, EOFError, closed ends."""
    r, w = mp.Pipe(duplex=False)
    assert (r.readable, r.writable, w.readable, w.writable) == (True, False, False, True)
    w.send_bytes(b"abcdef", 1, 3)
    assert r.recv_bytes() == b"bcd"
    w.send_bytes(b"xyz")
    buf = bytearray(2)
    with pytest.raises(mp.BufferTooShort) as info:
        r.recv_bytes_into(buf)
    assert info.value.args[0] == b"xyz"
    w.send_bytes(b"12")
    assert r.recv_bytes_into(buf) == 2
    assert buf == b"12"
    with pytest.raises(ValueError, match="negative"):
        w.send_bytes(b"ab", -1)
    with pytest.raises(OSError, match="read-only"):
        r.send(1)
    w.send([1, 2])
    w.close()
    assert r.recv() == [1, 2]
    with pytest.raises(EOFError):
        r.recv()
    with pytest.raises(OSError, match="closed"):
        w.send(1)
    r.close()


# -- Pool, Manager and the context's own API ------------------------------------------------------
def test_pool(mp: Any) -> None:
    """ctx.Pool maps on the context's workers (shoal's Pool on the cluster)."""
    with mp.Pool(2) as pool:
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_manager(mp: Any) -> None:
    """ctx.Manager() is a started manager whose list reaches a process."""
    with mp.Manager() as manager:
        items = manager.list()
        run(mp, items.append, 5)
        assert list(items) == [5]


def test_context_methods(mp: Any) -> None:
    """get_context, start methods, freeze_support, exceptions, cpu_count."""
    assert mp.get_context() is mp
    with pytest.raises(ValueError, match="cannot find context"):
        mp.get_context("no-such-method")
    method = mp.get_start_method()
    assert mp.get_context(method) is not None
    mp.freeze_support()
    mp.allow_connection_pickling()
    assert issubclass(mp.TimeoutError, Exception)
    assert mp.TimeoutError is multiprocess.TimeoutError
    assert mp.AuthenticationError is multiprocess.AuthenticationError
    assert mp.ProcessError is multiprocess.ProcessError
    assert mp.BufferTooShort is multiprocess.BufferTooShort
    assert mp.cpu_count() >= 1


def test_cluster_context_specifics(cmp: ClusterContext) -> None:
    """cpu_count is the engine count; 'cluster' is the one start method."""
    client = cmp._need_client("")
    assert cmp.cpu_count() == len(client.ids) == 2
    assert (cmp.get_start_method(), cmp.get_all_start_methods()) == ("cluster", ["cluster"])
    assert cmp.get_context("cluster") is cmp
    cmp.set_start_method("cluster")
    with pytest.raises(ValueError, match="always uses 'cluster'"):
        cmp.set_start_method("spawn")


def test_get_context_for_a_client(client: Client) -> None:
    """shoal.hub.get_context: one context per client, the current client by default."""
    ctx = shoal.hub.get_context(client)
    assert isinstance(ctx, shoal.hub.ClusterContext)
    assert shoal.hub.get_context(client) is ctx
    assert shoal.hub.get_context(None) is get_context(shoal.hub.current_client())
    with pytest.raises(TypeError, match="client must be"):
        get_context("localhost")  # type: ignore[arg-type]
    ctx.shutdown()


@pytest.mark.parametrize("name", ["dummy", "shared_memory", "util", "reduction"])
def test_lazy_modules(cmp: ClusterContext, name: str) -> None:
    """dummy, shared_memory, util and reduction are shoal's modules, imported on use."""
    module_name = f"shoal.hub._compat.mp_{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        pytest.skip(f"{module_name} is not written yet")
    assert getattr(cmp, name) is module
    if name == "dummy":
        assert cmp.ThreadPool is module.ThreadPool


def test_exit_joins_and_terminates(cluster: RunningCluster, tmp_path: Path) -> None:
    """At exit a non-daemon process is joined and a daemon one terminated."""
    done = tmp_path / "done"
    script = textwrap.dedent(
        f"""
        import pathlib
        from shoal.hub import Client, get_context

        def write(path):
            pathlib.Path(path).write_text("ok")

        def forever(event):
            while not event.wait(0.05):
                pass

        mp = get_context(Client(url_file={cluster.url_file!r}))
        mp.Process(target=forever, args=(mp.Event(),), daemon=True).start()
        mp.Process(target=write, args=({str(done)!r},)).start()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert done.read_text() == "ok"
    rc = Client(url_file=cluster.url_file)
    try:
        wait_until(
            lambda: (
                not any(
                    s["outstanding"]
                    for e, s in rc.queue_status().items()
                    if isinstance(e, int)  # type: ignore[index]
                )
            ),
            timeout=WAIT,
        )
    finally:
        rc.close()


def test_threads_do_not_share_an_engine(cmp: ClusterContext) -> None:
    """Processes started from several threads at once get distinct engines."""
    event = cmp.Event()
    ps = [cmp.Process(target=wait_for, args=(event,)) for _ in range(2)]
    threads = [threading.Thread(target=p.start) for p in ps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(p.engine_id for p in ps if p.engine_id is not None) == [0, 1]
    event.set()
    for p in ps:
        p.join(WAIT)
    assert [p.exitcode for p in ps] == [0, 0]
    assert os.getpid() not in {p.pid for p in ps}


def test_process_avoids_an_engine_busy_with_other_work(cmp: ClusterContext) -> None:
    """With engine 0 running a load-balanced task (a Pool's), a Process goes to engine 1."""
    client = cmp._need_client("")
    event = cmp.Event()
    other = client.load_balanced_view([0]).apply_async(wait_for, event)
    try:
        wait_until(lambda: client.queue_status()[0]["outstanding"], timeout=WAIT)  # type: ignore[index]
        p = cmp.Process(target=wait_for, args=(event,))
        p.start()
        assert p.engine_id == 1
    finally:
        event.set()
    other.get(WAIT)
    p.join(WAIT)
    assert p.exitcode == 0


def test_client_context_is_the_clusters(client: Client) -> None:
    """``client.context()`` is the cluster context of that client: its processes run on
    the client's engines."""
    mp = client.context()
    assert isinstance(mp, shoal.hub.ClusterContext)
    assert mp.cpu_count() == len(client.ids)
    proc = mp.Process(target=os.getpid)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert proc.pid in engine_pids(client).values()
