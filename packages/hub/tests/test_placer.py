"""Load-balanced tasks the client places on engines itself: the rules (Placer alone), and
the way with real engines (the hub passed by, dependencies, aborts, deaths, history)."""

from __future__ import annotations

import collections
import os
import signal
import threading
from pathlib import Path

import pytest
import zmq

from shoal.engine import BATCH_MAX, MsgType
from shoal.hub import Client, DependencyError, EngineDiedError, RemoteError, TaskAborted
from shoal.hub._client.placer import Placed, Placer
from shoal.hub.testing import ClusterStarter, wait_until
from shoal.wire import Codec, Message, new_header, read_connection_file

pytestmark = pytest.mark.timeout(90)


# -- the rules ----------------------------------------------------------------------------
class _Engines:
    """What the placer sent where, and what went to the hub."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.batches: list[list[str]] = []
        self.hub: list[str] = []

    def send(self, engine: int, tasks: list[Placed]) -> bool:
        self.sent.extend((engine, t.msg_id) for t in tasks)
        self.batches.append([t.msg_id for t in tasks])
        return True

    def to_hub(self, task: Placed) -> None:
        self.hub.append(task.msg_id)


def _tasks(*names: str, targets: frozenset[int] | None = None, small: bool = False) -> list[Placed]:
    if small:
        header = new_header("apply_request", "s", "client")
        return [Placed(n, targets, header, {}, b"content") for n in names]
    return [Placed(n, targets, frames=[b"head", b"buffer"]) for n in names]


def test_the_placer_keeps_to_hwm_and_balances() -> None:
    engines = _Engines()
    placer = Placer(engines.send, engines.to_hub, hwm=2)
    placer.submit(_tasks("a", "b", "c", "d", "e"), [0, 1])
    assert engines.sent == [(0, "a"), (1, "b"), (0, "c"), (1, "d")]
    assert len(placer) == 1
    assert placer.done("b", "ok", 1.0, 2.0)
    placer.place([0, 1])
    assert engines.sent[-1] == (1, "e")
    assert placer.records["b"][:2] == (1, "ok")
    assert not placer.done("unknown", "ok")
    assert placer.load() == {0: 2, 1: 2}


def test_short_tasks_go_in_batches_long_ones_alone() -> None:
    engines = _Engines()
    placer = Placer(engines.send, engines.to_hub, hwm=2)
    assert placer.batch_size() == 1  # nothing known yet: one by one
    placer.submit(_tasks("a", "b", small=True), [0, 1])
    assert engines.batches == [["a"], ["b"]]
    placer.done("a", "ok", 10.0, 10.0001)  # 100 us: 20 fit in 2 ms
    assert placer.batch_size() == 20
    placer.submit(_tasks(*(f"s{i}" for i in range(50)), small=True), [0, 1])
    # an engine holds 2 messages: engine 0 none yet, engine 1 one (b)
    assert [len(b) for b in engines.batches[2:]] == [20, 20, 10]
    assert len(placer) == 0
    placer.submit(_tasks("big", "small", small=False), [0, 1])  # no room: they wait
    assert len(placer) == 2
    for i in range(20):  # the first batch is answered: room for one message
        placer.done(f"s{i}", "ok", 10.0, 10.0001)
    placer.place([0, 1])
    assert engines.batches[-1] == ["big"]  # buffers: never batched
    placer.done("b", "ok", 10.0, 10.0001)
    placer.place([0, 1])
    assert engines.batches[-1] == ["small"]
    assert placer.load() == {0: 11, 1: 21}
    slow = Placer(engines.send, engines.to_hub, hwm=2)
    slow.submit(_tasks("x", small=True), [0])
    slow.done("x", "ok", 10.0, 11.0)  # a second per task: one by one
    assert slow.batch_size() == 1


def test_a_task_whose_engines_are_busy_lets_others_pass() -> None:
    engines = _Engines()
    placer = Placer(engines.send, engines.to_hub, hwm=1)
    placer.submit(_tasks("a", "b"), [0, 1])  # a on 0, b on 1
    placer.submit(_tasks("only0", targets=frozenset({0})) + _tasks("any"), [0, 1])
    assert len(placer) == 2
    placer.done("b", "ok")
    placer.place([0, 1])
    assert engines.sent[-1] == (1, "any")  # passed the task waiting for engine 0
    placer.done("a", "ok")
    placer.place([0, 1])
    assert engines.sent[-1] == (0, "only0")


def test_what_cannot_be_placed_here_goes_to_the_hub() -> None:
    engines = _Engines()
    placer = Placer(engines.send, engines.to_hub, hwm=1)
    placer.submit(_tasks("elsewhere", targets=frozenset({7})), [0])
    assert engines.hub == ["elsewhere"]
    placer.submit(_tasks("a", "b"), [0])
    assert placer.engine_lost(0) == ["a"]
    placer.place([])  # no engine of this host left
    assert engines.hub == ["elsewhere", "b"]
    assert placer.abort({"b"}) == []


def test_aborted_waiting_tasks_never_leave() -> None:
    engines = _Engines()
    placer = Placer(engines.send, engines.to_hub, hwm=1)
    placer.submit(_tasks("a", "b", "c"), [0])
    assert placer.abort({"b", "zzz"}) == ["b"]
    placer.done("a", "ok")
    placer.place([0])
    assert [m for _, m in engines.sent] == ["a", "c"]


# -- with engines ---------------------------------------------------------------------------
def _ways_open(rc: Client, n: int) -> bool:
    return len(rc._transport.direct_engines()) == n


def _nap(seconds: float) -> int:
    import os  # runs on the engine
    import time

    time.sleep(seconds)
    return os.getpid()


def test_placed_tasks_pass_the_hub_by_and_use_every_engine(client: Client) -> None:
    wait_until(lambda: _ways_open(client, 2), timeout=30)
    lb = client.load_balanced_view()
    before = client.hub_statistics()["shell"]["received"]
    pids = {ar.get(30) for ar in [lb.apply_async(_nap, 0.3) for _ in range(2)]}
    assert len(pids) == 2  # one task each: the least loaded engine
    assert lb.map_sync(lambda x: x * 2, range(100)) == [x * 2 for x in range(100)]
    assert client.hub_statistics()["shell"]["received"] == before  # no reply crossed it
    ar = lb.apply_async(lambda: 1)
    ar.get(30)
    # The hub learns of placed tasks from the engines' reports.
    wait_until(lambda: client.history([ar.msg_ids[0]])[0] is not None, timeout=30)
    record = client.history([ar.msg_ids[0]])[0]
    assert record is not None
    assert record["status"] == "ok"


def test_dependencies_on_placed_tasks(client: Client) -> None:
    wait_until(lambda: _ways_open(client, 2), timeout=30)
    lb = client.load_balanced_view()
    first = lb.apply_async(lambda: (__import__("time").sleep(0.5), __import__("time").time())[1])
    with lb.temp_flags(after=[first]):  # still running: the hub waits for its engine
        second = lb.apply_async(lambda: __import__("time").time())
    assert second.get(30) >= first.get(30)
    where = lb.apply_async(os.getpid)
    where.get(30)
    with lb.temp_flags(follow=where):  # done: the client tells the hub where it ran
        same = [lb.apply_async(os.getpid) for _ in range(3)]
    assert {s.get(30) for s in same} == {where.get(30)}
    failed = lb.apply_async(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError) as err:
        failed.get(30)
    assert isinstance(err.value, RemoteError)
    with lb.temp_flags(after=failed):
        doomed = lb.apply_async(lambda: 1)
    with pytest.raises(DependencyError, match="did not succeed"):
        doomed.get(30)


def test_abort_placed_tasks(client: Client, tmp_path: Path) -> None:
    """Tasks waiting in the client, and the one queued on the engine, are aborted."""

    wait_until(lambda: _ways_open(client, 2), timeout=30)
    gate = tmp_path / "gate"
    lb = client.load_balanced_view(targets=[0])
    try:
        blocker = lb.apply_async(_wait_for, str(gate))
        queued = [lb.apply_async(lambda: 1) for _ in range(4)]
        status = client.queue_status()
        assert status["unassigned"] == 3  # hwm 2: one more went to the engine
        assert isinstance(status[0], dict)
        assert status[0]["outstanding"] == 2
        for ar in queued:
            ar.abort()
        client[0].status()  # a control request behind the hub's ask: the engine has it
    finally:
        gate.touch()
    for ar in queued:
        with pytest.raises(TaskAborted):
            ar.get(30)
    blocker.get(30)
    assert lb.apply_sync(lambda: 2) == 2


def test_a_dead_engine_fails_its_placed_tasks_and_the_rest_go_on(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    with hub(tmp_path, 2) as (_, rc):
        wait_until(lambda: _ways_open(rc, 2), timeout=30)
        pid0, pid1 = rc[0].apply_sync(os.getpid), rc[1].apply_sync(os.getpid)
        lb = rc.load_balanced_view()
        gate = tmp_path / "gate"
        # One running on each engine, one queued on each (hwm 2), two waiting here.
        tasks = [lb.apply_async(_wait_for, str(gate)) for _ in range(6)]
        wait_until(lambda: len(list(tmp_path.glob("gate.*"))) == 2, timeout=30)
        os.kill(pid0, signal.SIGKILL)
        wait_until(lambda: 0 not in rc.ids, timeout=30)
        gate.touch()
        outcomes: list[object] = []
        for ar in tasks:
            try:
                outcomes.append(ar.get(30))
            except EngineDiedError:
                outcomes.append("died")
        assert collections.Counter(outcomes) == {"died": 2, pid1: 4}, outcomes
        assert lb.apply_sync(os.getpid) == pid1


def _wait_for(path: str) -> int:
    import os  # runs on the engine
    import time

    open(f"{path}.{os.getpid()}", "w").close()
    while not os.path.exists(path):
        time.sleep(0.01)
    return os.getpid()


def test_short_tasks_travel_in_batches(client: Client) -> None:
    wait_until(lambda: _ways_open(client, 2), timeout=30)
    lb = client.load_balanced_view()
    results = [lb.apply_async(lambda i=i: i * i) for i in range(3000)]
    assert [r.get(60) for r in results] == [i * i for i in range(3000)]
    assert client._placer.batch_size() > 1  # they ran short: they went many at a time
    # Output and errors still reach their own task inside a batch.
    loud = [lb.apply_async(lambda i=i: print(f"task {i}")) for i in range(200)]
    for i, ar in enumerate(loud):
        ar.get(30)
        assert ar.stdout == f"task {i}\n"
    mixed = [lb.apply_async(lambda i=i: 1 // (i % 7)) for i in range(100)]
    for i, ar in enumerate(mixed):
        if i % 7:
            assert ar.get(30) == 1 // (i % 7)
        else:
            with pytest.raises(ZeroDivisionError):
                ar.get(30)


def test_a_task_in_a_batch_keeps_its_own_time_limit_and_abort(client: Client) -> None:
    wait_until(lambda: _ways_open(client, 2), timeout=30)
    lb = client.load_balanced_view(targets=[0])
    assert [ar.get(30) for ar in [lb.apply_async(lambda: 1) for _ in range(500)]] == [1] * 500
    assert client._placer.batch_size() > 1  # short tasks: what follows goes in batches
    lb.set_flags(timeout=1.0)
    results = [lb.apply_async(lambda i=i: i) for i in range(30)]
    slow = lb.apply_async(_nap, 60)  # behind them, in a batch with the tasks after it
    after = [lb.apply_async(lambda i=i: -i) for i in range(30)]
    client.abort(after[-1].msg_ids)
    with pytest.raises(TimeoutError, match="longer than its limit") as err:
        slow.get(30)
    assert isinstance(err.value, RemoteError)
    assert [ar.get(30) for ar in results] == list(range(30))
    assert [ar.get(30) for ar in after[:-1]] == [-i for i in range(29)]
    with pytest.raises(TaskAborted):
        after[-1].get(30)


def test_a_malformed_batch_is_refused_and_the_engine_serves_on(client: Client) -> None:
    url = client.direct_url(0)
    assert url is not None
    key = read_connection_file(client.url_file).key
    codec = Codec(key)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        rogue = ctx.socket(zmq.DEALER)
        rogue.linger = 0
        rogue.connect(url)
        rogue.send_multipart([b"<SHOAL|2>forged", b"x"])  # unsigned: dropped unread
        refused = []
        for tasks in (
            "nonsense",
            [],  # no task
            [["id", b"x", None]] * (BATCH_MAX + 1),  # too many
            [["id", "not bytes", None]],
            [["id", b"x"]],  # no time limit
        ):
            header = new_header(MsgType.APPLY_BATCH_REQUEST, "rogue", "client")
            rogue.send_multipart(codec.encode(Message(header, None, {}, {"tasks": tasks})))
            assert rogue.poll(30_000), "the engine did not answer a malformed batch"
            reply = codec.decode(rogue.recv_multipart())
            assert reply.msg_type == MsgType.APPLY_BATCH_REPLY
            refused.append((reply.content["status"], reply.content["ename"]))
        assert refused == [("error", "ValueError")] * 5
        rogue.close()
    finally:
        ctx.term()
    assert client[0].apply_sync(lambda: 5) == 5
    assert client.load_balanced_view(targets=[0]).apply_sync(lambda: 6) == 6


def test_a_callback_fires_while_nobody_waits(client: Client) -> None:
    """Right after a caller read its own reply the I/O thread stays away for a moment;
    it still comes back to deliver results nobody waits for."""
    lb = client.load_balanced_view()
    for _ in range(3):
        fired = threading.Event()
        assert lb.apply_sync(lambda: 1) == 1  # a caller just read
        ar = lb.apply_async(lambda: 2)
        ar.add_done_callback(lambda _f, fired=fired: fired.set())
        assert fired.wait(30)
        assert ar.result(0) == 2
