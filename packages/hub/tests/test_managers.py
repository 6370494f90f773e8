"""Managers on a real cluster (a hub process with 2 engines): the standard types from the
client, the same proxies passed to tasks on both engines, registration, the server's
lifetime, the errors of misuse, and the refusal of unsigned or replayed messages."""

from __future__ import annotations

import array
import gc
import multiprocessing
import multiprocessing.connection
import multiprocessing.managers
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing import ProcessError
from typing import Any

import pytest

from shoal.hub import Client, RemoteError
from shoal.hub._compat.manager_protocol import _client, _dispatch
from shoal.hub._compat.managers import (
    AutoProxy,
    BaseManager,
    BaseProxy,
    DictProxy,
    IteratorProxy,
    Manager,
    ManagerLost,
    SyncManager,
)
from shoal.hub.testing import process_alive, wait_processes_gone
from shoal.wire import Codec, Message, new_header

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0  # seconds any blocking call may take on this shared, noisy machine


# -- what the engines run -----------------------------------------------------------------


def produce(q: Any, tag: str, n: int) -> int:
    for i in range(n):
        q.put((tag, i))
    q.put(None)  # this producer's end
    return os.getpid()


def consume(q: Any) -> tuple[int, list[tuple[str, int]]]:
    got = []
    while (item := q.get(timeout=WAIT)) is not None:
        got.append(item)
    return os.getpid(), got


def meet(barrier: Any, log: Any, name: str, arrived: Any) -> int:
    log.append(("arrive", name))
    arrived.set()
    index = barrier.wait(timeout=WAIT)
    log.append(("pass", name))
    return int(index)


def add_locked(lock: Any, counter: Any, n: int) -> int:
    for _ in range(n):
        with lock:
            counter.value += 1
    return os.getpid()


def fill(shared: dict[str, Any]) -> list[str]:
    d, items, ns, value, arr, done = (
        shared[k] for k in ("d", "items", "ns", "value", "arr", "done")
    )
    d["pid"] = os.getpid()
    d["square"] = d["f"](7)
    items.append(os.getpid())
    ns.seen = "yes"
    value.value = value.value + 1
    arr[0] = 42
    done.set()
    return sorted(d)  # iterating a dict proxy returns an Iterator proxy, built here


def take(q: Any, started: Any) -> Any:
    started.set()
    return q.get(timeout=WAIT)


def use_tally(tally: Any) -> tuple[int, int, str]:
    tally.add(5)
    child = tally.split()
    return tally.total(), child.add(1), type(child).__name__


def typeid_of(proxy: Any) -> str:
    return str(proxy._token.typeid)


def fail_to_initialize() -> None:
    raise ValueError("the initializer failed on purpose")


# -- a registered type ------------------------------------------------------------------


class Tally:
    """A counter with a method that returns another Tally (kept in the manager)."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def total(self) -> int:
        return self.n

    def split(self) -> Tally:
        return Tally(self.n)

    def secret(self) -> str:
        return "never sent"


class TallyManager(BaseManager):
    pass


# split() returns a Tally that stays in the server: a typeid without a callable (as the
# stdlib's "Iterator"), so the server keeps the object itself instead of calling Tally(obj).
EXPOSED = ("add", "total", "split")
TallyManager.register("Tally", Tally, exposed=EXPOSED, method_to_typeid={"split": "Split"})
TallyManager.register(
    "Split", None, exposed=EXPOSED, method_to_typeid={"split": "Split"}, create_method=False
)


# -- helpers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def manager() -> Iterator[SyncManager]:
    """One started manager for the module's tests that do not end it."""
    with Manager() as m:
        yield m


@pytest.fixture
def engines(client: Client) -> tuple[int, int]:
    ids = client.wait_for_engines(2, timeout=WAIT)
    return ids[0], ids[1]


# -- every standard type, from the client --------------------------------------------------


def check_queue(m: SyncManager) -> None:
    q = m.Queue()
    q.put("a")
    q.put_nowait("b")
    assert q.qsize() == 2
    assert not q.empty()
    assert q.get() == "a"
    assert q.get_nowait() == "b"
    assert q.empty()
    with pytest.raises(queue.Empty):  # the remote exception keeps its type
        q.get(timeout=0.01)
    small = m.Queue(1)
    small.put(1)
    assert small.full()
    with pytest.raises(queue.Full):
        small.put_nowait(2)


def check_joinable_queue(m: SyncManager) -> None:
    q = m.JoinableQueue()
    q.put("job")
    assert q.get() == "job"
    q.task_done()
    q.join()  # returns: every task is done
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()


def check_lock(m: SyncManager) -> None:
    lock = m.Lock()
    assert lock.acquire()
    assert not lock.acquire(timeout=0.01)  # not reentrant
    lock.release()
    with lock:
        assert not lock.acquire(blocking=False)
    with pytest.raises(RuntimeError):
        lock.release()


def check_rlock(m: SyncManager) -> None:
    lock = m.RLock()
    assert lock.acquire()
    assert lock.acquire()  # reentrant for its owner
    lock.release()
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def check_semaphore(m: SyncManager) -> None:
    sem = m.Semaphore(2)
    assert sem.acquire()
    assert sem.acquire()
    assert not sem.acquire(timeout=0.01)
    sem.release()
    sem.release()
    sem.release()  # unbounded: a third release is allowed
    assert sem.acquire(timeout=0.01)


def check_bounded_semaphore(m: SyncManager) -> None:
    sem = m.BoundedSemaphore(1)
    with sem:
        assert not sem.acquire(timeout=0.01)
    with pytest.raises(ValueError, match="released too many times"):
        sem.release()


def check_condition(m: SyncManager) -> None:
    cond = m.Condition(m.Lock())
    with cond:
        assert not cond.wait(0.01)  # nobody notifies: times out
        cond.notify()
        cond.notify_all()
        assert cond.wait_for(lambda: "ready") == "ready"
        assert not cond.wait_for(lambda: False, timeout=0.01)
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.notify()


def check_event(m: SyncManager) -> None:
    event = m.Event()
    assert not event.is_set()
    assert not event.wait(0.01)
    event.set()
    assert event.is_set()
    assert event.wait(WAIT)
    event.clear()
    assert not event.is_set()


def check_barrier(m: SyncManager) -> None:
    barrier = m.Barrier(1)
    assert barrier.parties == 1
    assert barrier.wait(WAIT) == 0
    assert barrier.n_waiting == 0
    barrier.abort()
    assert barrier.broken
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(WAIT)
    barrier.reset()
    assert not barrier.broken


def check_namespace(m: SyncManager) -> None:
    ns = m.Namespace(a=1)
    ns.b = [1, 2]
    assert ns.a == 1
    assert ns.b == [1, 2]
    del ns.a
    with pytest.raises(AttributeError):
        _ = ns.a
    assert "b=[1, 2]" in str(ns)


def check_value(m: SyncManager) -> None:
    value = m.Value("d", 1.5)
    value.value += 1
    assert value.get() == 2.5
    value.set(0.5)
    assert value.value == 0.5


def check_array(m: SyncManager) -> None:
    arr = m.Array("i", range(4))
    arr[1] = 7
    assert len(arr) == 4
    assert arr[:] == array.array("i", [0, 7, 2, 3])
    with pytest.raises(IndexError):
        _ = arr[10]
    with pytest.raises(TypeError):
        arr[0] = "not an int"


def check_list(m: SyncManager) -> None:
    items = m.list([3, 1])
    items.append(2)
    items.sort()
    assert items[:] == [1, 2, 3]
    items += [4]
    items.extend([5])
    del items[0]
    assert 5 in items
    assert len(items) == 4
    assert list(items) == [2, 3, 4, 5]
    assert items.pop() == 5
    assert items.index(3) == 1


def check_dict(m: SyncManager) -> None:
    d = m.dict(a=1)
    d["b"] = 2
    d.update(c=3)
    assert "c" in d
    assert len(d) == 3
    assert sorted(d) == ["a", "b", "c"]  # __iter__ returns an Iterator proxy
    assert isinstance(iter(d), IteratorProxy)
    assert d.get("z", 0) == 0
    assert d.pop("a") == 1
    assert d.copy() == {"b": 2, "c": 3}
    assert sorted(d.items()) == [("b", 2), ("c", 3)]
    with pytest.raises(KeyError):
        _ = d["a"]


CHECKS: dict[str, Callable[[SyncManager], None]] = {
    "Queue": check_queue,
    "JoinableQueue": check_joinable_queue,
    "Lock": check_lock,
    "RLock": check_rlock,
    "Semaphore": check_semaphore,
    "BoundedSemaphore": check_bounded_semaphore,
    "Condition": check_condition,
    "Event": check_event,
    "Barrier": check_barrier,
    "Namespace": check_namespace,
    "Value": check_value,
    "Array": check_array,
    "list": check_list,
    "dict": check_dict,
}


@pytest.mark.parametrize("typeid", sorted(CHECKS))
def test_standard_type_from_the_client(manager: SyncManager, typeid: str) -> None:
    """Each standard type behaves like the object it proxies, errors included."""
    CHECKS[typeid](manager)


def test_values_travel_with_shoals_serializer(manager: SyncManager) -> None:
    """Lambdas go into a shared dict and come back callable (stdlib pickle refuses them)."""
    d = manager.dict()
    d["f"] = lambda x: x * 2
    assert d["f"](21) == 42
    with SyncManager(serializer="pickle") as plain:
        stdlib = plain.dict()
        with pytest.raises((pickle.PicklingError, AttributeError)):
            stdlib["f"] = lambda x: x * 2


# -- proxies on engines -----------------------------------------------------------------


def test_proxies_work_on_an_engine(
    client: Client, manager: SyncManager, engines: tuple[int, int]
) -> None:
    """A task on an engine changes shared objects; the client sees every change."""
    d, items, ns = manager.dict(f=lambda x: x * x), manager.list(), manager.Namespace()
    value, arr, done = manager.Value("i", 0), manager.Array("i", [0, 0]), manager.Event()
    shared = {"d": d, "items": items, "ns": ns, "value": value, "arr": arr, "done": done}
    keys = client[engines[0]].apply_async(fill, shared).get(WAIT)  # proxies inside a dict
    assert keys == ["f", "pid", "square"]
    assert d["square"] == 49
    assert items[:] == [d["pid"]]
    assert d["pid"] != os.getpid()
    assert ns.seen == "yes"
    assert value.value == 1
    assert arr[:] == array.array("i", [42, 0])
    assert done.is_set()


def test_a_queue_shared_by_four_tasks_on_two_engines(
    client: Client, manager: SyncManager, engines: tuple[int, int]
) -> None:
    """Two producers and two consumers on two engines: every item arrives exactly once."""
    n = 500
    q = manager.Queue()
    e0, e1 = engines
    # Each engine runs a producer then a consumer: the producers run at once, then the
    # consumers, each until it meets one producer's end marker (two markers, two consumers).
    producers = [client[e0].apply_async(produce, q, "a", n)]
    producers.append(client[e1].apply_async(produce, q, "b", n))
    consumers = [client[e].apply_async(consume, q) for e in (e0, e1)]
    producer_pids = [p.get(WAIT) for p in producers]
    results = [c.get(WAIT) for c in consumers]
    consumer_pids = {pid for pid, _ in results}
    received = [item for _, got in results for item in got]
    assert len(set(producer_pids)) == 2
    assert len(consumer_pids) == 2
    assert consumer_pids == set(producer_pids)  # the consumers ran on both engines
    assert len(received) == 2 * n  # nothing twice ...
    assert set(received) == {(tag, i) for tag in "ab" for i in range(n)}  # ... nothing lost
    assert q.empty()


def test_a_barrier_across_both_engines(
    client: Client, manager: SyncManager, engines: tuple[int, int]
) -> None:
    """Nobody passes the barrier before the second engine's task arrives at it."""
    barrier, log = manager.Barrier(2), manager.list()
    first_arrived, second_arrived = manager.Event(), manager.Event()
    first = client[engines[0]].apply_async(meet, barrier, log, "first", first_arrived)
    assert first_arrived.wait(WAIT)
    # The first task is at the barrier now; the second one starts only after that.
    second = client[engines[1]].apply_async(meet, barrier, log, "second", second_arrived)
    indices = sorted([first.get(WAIT), second.get(WAIT)])
    events = list(log)
    assert indices == [0, 1]
    assert events[:2] == [("arrive", "first"), ("arrive", "second")]
    assert sorted(events[2:]) == [("pass", "first"), ("pass", "second")]


def test_a_lock_guards_a_counter_incremented_10000_times(
    client: Client, manager: SyncManager, engines: tuple[int, int]
) -> None:
    """Two engines add 5,000 each to one Value under one Lock: the total is exact."""
    counter, lock = manager.Value("i", 0), manager.Lock()
    pids = client[list(engines)].apply_async(add_locked, lock, counter, 5000).get(WAIT * 2)
    assert len(set(pids)) == 2  # both engines took part
    assert counter.value == 10_000
    assert lock.acquire(blocking=False)  # and nobody holds the lock any more
    lock.release()


# -- register -----------------------------------------------------------------------------


def test_register_with_exposed_and_method_to_typeid(
    client: Client, engines: tuple[int, int]
) -> None:
    """A registered class: exposed methods only, split() returns a proxy, on engines too."""
    with TallyManager() as m:
        tally = m.Tally(1)
        assert tally.add(2) == 3
        child = tally.split()  # a new Tally that stays in the manager
        assert isinstance(child, BaseProxy)
        assert child.add(10) == 13
        assert tally.total() == 3
        with pytest.raises(AttributeError, match="secret"):
            tally.secret()
        with pytest.raises(AttributeError, match="'secret' of the 'Tally' object is not exposed"):
            tally._callmethod("secret")
        remote = client[engines[0]].apply_async(use_tally, tally).get(WAIT)
        assert remote == (8, 9, "AutoProxy[Split]")
        assert tally.total() == 8


def test_register_rejects_bad_arguments() -> None:
    """Each wrong registration argument is named in a TypeError."""

    class Registry(BaseManager):
        pass

    with pytest.raises(TypeError, match="typeid"):
        Registry.register("not a name", Tally)
    with pytest.raises(TypeError, match="callable"):
        Registry.register("T", callable=5)
    with pytest.raises(TypeError, match="exposed"):
        Registry.register("T", Tally, exposed="add")
    with pytest.raises(TypeError, match="method_to_typeid"):
        Registry.register("T", Tally, method_to_typeid={"split": 1})
    with pytest.raises(TypeError, match="proxytype"):
        Registry.register("T", Tally, proxytype=multiprocessing.managers.BaseProxy)
    assert "T" not in Registry._registry
    Registry.register("T", Tally)
    assert Registry._registry["T"][3] is AutoProxy
    assert "T" not in BaseManager._registry  # registered on the subclass only


# -- the server's lifetime ------------------------------------------------------------------


def test_shutdown_with_block_and_garbage_collection_end_the_server() -> None:
    """shutdown(), the end of a with block and dropping the manager each end its process."""
    m = Manager()
    pid = m.pid
    assert pid is not None
    assert process_alive(pid)
    m.shutdown()
    assert not process_alive(pid)  # shutdown() waits for it
    m.shutdown()  # a second call does nothing

    with SyncManager() as m:
        pid = m.pid
        assert pid is not None
        assert m.Queue().empty()
        assert process_alive(pid)
    assert not process_alive(pid)

    m = Manager()
    pid = m.pid
    assert pid is not None
    del m
    gc.collect()
    wait_processes_gone([pid], WAIT)


CREATOR = """
import os, signal, sys
from shoal.hub._compat.managers import Manager
m = Manager()
q = m.Queue()
q.put(1)
print(m.pid, flush=True)
if sys.argv[1] == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("end", ["exit", "sigkill"])
def test_the_server_ends_with_its_creator(end: str) -> None:
    """A creator that exits, or is killed, takes its manager's server with it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CREATOR, end], stdout=subprocess.PIPE, cwd=os.getcwd()
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), line
        server = int(line)
        code = proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == (-signal.SIGKILL if end == "sigkill" else 0)
    if end == "exit":
        assert not process_alive(server)  # the creator waited for it at exit
    else:
        # It notices within a second; the bound is for a loaded machine.
        wait_processes_gone([server], WAIT)


# -- errors -----------------------------------------------------------------------------


def test_proxies_of_a_gone_manager_raise_manager_lost(
    client: Client, engines: tuple[int, int]
) -> None:
    """After shutdown every use of a proxy raises ManagerLost, here and on an engine."""
    m = Manager()
    q, started = m.Queue(), m.Event()
    waiting = client[engines[0]].apply_async(take, q, started)  # blocked in q.get()
    assert started.wait(WAIT)
    m.shutdown()
    with pytest.raises(RemoteError) as info:
        waiting.get(WAIT)  # the engine's get() fails at once: no hang
    assert info.value.ename == "ManagerLost"
    with pytest.raises(ManagerLost, match=r"is gone.*'put'.*'Queue'"):
        q.put(1)
    with pytest.raises(ProcessError, match="shut down"):
        m.Queue()
    with pytest.raises(ProcessError, match="only once"):
        m.start()
    with pytest.raises(RemoteError, match="ManagerLost"):  # unpickling it there fails
        client[engines[0]].apply_async(typeid_of, q).get(WAIT)


def test_misconfigured_managers_get_clear_errors() -> None:
    """Wrong arguments, an unstarted manager, a failing start and a bad connect are named."""
    with pytest.raises(TypeError, match="address must be"):
        SyncManager(address=5)
    with pytest.raises(TypeError, match="authkey must be bytes"):
        SyncManager(authkey="secret")
    with pytest.raises(ValueError, match="serializer must be one of"):
        SyncManager(serializer="json")
    with pytest.raises(ProcessError, match="not started"):
        SyncManager().Queue()
    with pytest.raises(ProcessError, match="ValueError: the initializer failed on purpose"):
        SyncManager().start(initializer=fail_to_initialize)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ProcessError, match=r"did not start.*in use"):
            SyncManager(address=taken.getsockname()).start()
    with pytest.raises(ManagerLost, match="no manager server answers"):
        SyncManager(address=("127.0.0.1", free_port())).connect()
    with pytest.raises(ValueError, match="connect\\(\\) needs the address"):
        SyncManager().connect()


def test_connect_to_a_running_server_and_a_wrong_key() -> None:
    """A second manager object connects with the key; a wrong key is refused."""
    with Manager(authkey=b"the key") as m:
        other = SyncManager(address=m.address, authkey=b"the key")
        other.connect()
        q = other.Queue()
        q.put("hello")
        assert isinstance(q, BaseProxy)
        assert q.get(timeout=WAIT) == "hello"
        d = other.dict(a=1)
        assert isinstance(d, DictProxy)
        with pytest.raises(multiprocessing.AuthenticationError):
            SyncManager(address=m.address, authkey=b"wrong").connect()


# -- signed messages ------------------------------------------------------------------------


class Touch:
    """Unpickles as ``open(path, "w")``: loading it creates the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def refused(conn: multiprocessing.connection.Connection[Any, Any]) -> bool:
    """True once the server closed ``conn`` without answering what was sent on it."""
    try:
        conn.recv_bytes()
    except EOFError:
        return True
    return False


def test_unsigned_and_wrong_key_requests_are_refused(tmp_path: Any) -> None:
    """After the authkey challenge, unsigned or wrongly signed requests are never acted on."""
    key = b"short key"
    with Manager(authkey=key) as m:
        items = m.list()
        touched = tmp_path / "touched"
        wrong = Codec(b"sixteen bytes, but not the manager's")
        shutdown = (None, "shutdown", (), {})
        attacks = [
            pickle.dumps(Touch(str(touched))),  # a pickle that acts when loaded
            pickle.dumps(shutdown),  # a request that would stop the server
            wrong.encode(Message(new_header("manager_message", ""), content=shutdown))[0],
        ]
        for attack in attacks:
            with multiprocessing.connection.Client(m.address, authkey=key) as raw:
                raw.send_bytes(attack)
                assert refused(raw)
            assert not touched.exists()
            items.append(len(attack))  # the server still serves honest proxies
        assert items[:] == [len(a) for a in attacks]


def test_a_replayed_signed_message_is_refused() -> None:
    """A signed request sent again, on its connection or another one, is refused."""
    with Manager() as m:
        items = m.list()
        honest = _client(m.address, authkey=m._authkey)
        sent: list[bytes] = []
        with honest:
            _dispatch(honest, "accept_connection", ("replay test",))
            send_bytes = honest.send_bytes  # record what goes out from now on

            def record(buf: bytes) -> None:
                sent.append(bytes(buf))
                send_bytes(buf)

            honest.send_bytes = record  # type: ignore[method-assign]
            honest.send((items._id, "append", ("once",), {}))
            assert honest.recv() == ("#RETURN", None)
            send_bytes(sent[-1])  # the append again, as it was signed
            assert refused(honest)
        other = _client(m.address, authkey=m._authkey)
        with other:
            _dispatch(other, "accept_connection", ("replay test",))
            other.send_bytes(sent[-1])  # the append, on a connection of its own
            assert refused(other)
        assert items[:] == ["once"]
