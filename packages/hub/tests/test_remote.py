"""Remote objects with real engines: proxies, scatter/gather, lifetimes, engine to engine.

The first part characterizes distob's documented behaviour on shoal's API (distob's
README and examples: scatter returns proxies with the object's interface, gather brings
them back, methods and attributes run where the object lives, vectorize/apply/call_all
run over scattered sequences); the rest is what distob never did.
"""

from __future__ import annotations

import concurrent.futures
import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.engine import NoSuchObjectError
from shoal.hub import (
    Client,
    EngineDiedError,
    ObjectHub,
    Ref,
    Remote,
    RemoteError,
    apply,
    call_all,
    call_async,
    gather,
    proxy_methods,
    scatter,
    vectorize,
)
from shoal.hub.testing import ClusterStarter, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory, hub: ClusterStarter) -> Iterator[Client]:
    with hub(tmp_path_factory.mktemp("remote"), 2, "--client-timeout", "3") as (_, client):
        yield client


def _settle(rc: Client, expected: dict[int, int], timeout: float = 20.0) -> None:
    """Wait until the engines hold ``expected`` object counts (drops travel in batches)."""

    def settled() -> bool:
        gc.collect()
        return ObjectHub(rc).counts() == expected

    wait_until(
        settled,
        timeout,
        interval=0.1,
        message=lambda: f"object counts {expected} (they are {ObjectHub(rc).counts()})",
    )


class Counter:
    """A small stateful class (importable on the engines: this test module is)."""

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def inc(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def same(self) -> Counter:
        return self

    def _secret(self) -> str:
        return "psst"

    @property
    def double(self) -> int:
        return 2 * self.n


def count_up(n: int) -> Iterator[int]:
    yield from range(n)


class Unsendable(Exception):
    """An exception that cannot be serialized (it holds a generator)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.gen = (i for i in range(3))


def fail(exc: BaseException) -> None:
    raise exc


def fail_unsendable(text: str) -> None:
    raise Unsendable(text)


class Resource:
    def __init__(self) -> None:
        self.state = "new"

    def __enter__(self) -> Resource:
        self.state = "open"
        return self

    def __exit__(self, *exc: object) -> None:
        self.state = f"closed after {exc[0].__name__ if exc[0] else 'nothing'}"


# -- distob's behaviour, on shoal's API -----------------------------------------------


def test_scatter_a_list_spreads_its_items_and_gather_brings_them_back(rc: Client) -> None:
    items = list(range(10))
    proxies = scatter(items, client=rc)
    assert type(proxies) is list
    assert len(proxies) == 10
    assert all(isinstance(p, Remote) for p in proxies)
    engines = [p.__engine_id__ for p in proxies]
    assert engines == sorted(engines)
    assert set(engines) == {0, 1}
    assert gather(proxies) == items
    as_tuple = scatter((1, "two", 3.0), client=rc)
    assert type(as_tuple) is tuple
    assert gather(as_tuple) == (1, "two", 3.0)
    nested = {"a": as_tuple[0], "b": [as_tuple[1], 7]}
    assert gather(nested) == {"a": 1, "b": ["two", 7]}  # plain objects pass through
    assert gather(5) == 5


def test_a_proxy_has_the_objects_interface(rc: Client) -> None:
    c = scatter(Counter(3), destination=1, client=rc)
    assert isinstance(c, Remote)
    assert not isinstance(c, Counter)
    assert c.__engine_id__ == 1
    assert isinstance(c.__ref__, Ref)
    assert c.__ref__.engine == 1
    assert "inc" in dir(c)
    assert c.inc() == 4
    assert c.inc(10) == 14
    assert c.n == 14
    assert c.double == 28
    c.n = 100
    assert c.n == 100
    c.extra = "x"
    del c.extra
    with pytest.raises(AttributeError):
        c.extra  # noqa: B018 - the remote AttributeError, with its original type
    assert "engine 1" in repr(c)
    assert "Counter" in repr(c)
    assert c.same() is c  # a method returning the object gives the same proxy
    assert type(scatter(Counter(), client=rc)) is type(c)  # one proxy class per type


def test_special_methods_run_remotely(rc: Client) -> None:
    lst = scatter([3, 1, 2], split=False, client=rc)
    assert len(lst) == 3
    assert lst[0] == 3
    assert lst[-1] == 2
    assert lst[1:] == [1, 2]
    assert list(lst) == [3, 1, 2]
    assert 2 in lst
    assert 9 not in lst
    lst[0] = 30
    del lst[1]
    assert gather(lst) == [30, 2]
    before = lst
    lst += [4]  # in place: still the same remote list
    assert lst is before
    assert gather(lst) == [30, 2, 4]
    assert [*lst, 5] == [30, 2, 4, 5]  # a new list comes back by value
    assert lst == [30, 2, 4]
    assert lst != [1]
    assert lst < [31]
    num = scatter(7, client=rc)
    assert num + 1 == 8
    assert 1 + num == 8
    assert -num == -7
    assert num * 2 == 14
    assert num // 2 == 3
    assert num % 4 == 3
    assert abs(num) == 7
    assert int(num) == 7
    assert hash(num) == hash(7)
    d = scatter({"a": 1}, client=rc)
    assert d["a"] == 1
    assert d.get("b", 2) == 2
    assert sorted(d.keys()) == ["a"]
    with pytest.raises(KeyError):
        d["missing"]
    with pytest.raises(TypeError):
        hash(d)  # unhashable like a dict
    r = scatter(Resource(), client=rc)
    with r as inside:
        assert inside is r
        assert r.state == "open"
    assert r.state == "closed after nothing"
    with pytest.raises(ZeroDivisionError), r:
        1 / 0  # noqa: B018
    assert r.state == "closed after ZeroDivisionError"
    f = scatter(len, client=rc)  # a callable
    assert f([1, 2]) == 2


def test_results_come_back_by_value_unless_they_cannot_or_are_asked_not_to(rc: Client) -> None:
    holder = scatter({"lock": None}, client=rc)
    holder["lock"] = None
    gen = scatter([1, 2, 3], split=False, client=rc).__iter__  # a bound method by value
    assert list(gen()) == [1, 2, 3]
    box = scatter([np.arange(4)], split=False, client=rc)
    assert isinstance(box[0], np.ndarray)  # serializable: by value
    kept = box.copy.options(prefer_local=False)()  # asked to stay on the engine
    assert isinstance(kept, Remote)
    assert kept.__engine_id__ == box.__engine_id__
    assert gather(kept)[0].tolist() == [0, 1, 2, 3]
    text = scatter(["line one\n", "line two\n"], split=False, client=rc)
    it = scatter(iter(gather(text)), client=rc)  # an iterator, advanced on the engine
    assert next(it) == "line one\n"
    assert next(it) == "line two\n"
    with pytest.raises(StopIteration):
        next(it)
    maker = scatter(count_up, client=rc)
    gen = maker(3)  # a generator cannot be serialized: it stays remote
    assert isinstance(gen, Remote)
    assert type(gen).__name__ == "RemoteGenerator"
    assert next(gen) == 0
    assert list(gen) == [1, 2]
    future = scatter(Counter(), client=rc).inc.call_async(5)
    assert future.result(30) == 5
    assert call_async(box, "__len__").result(30) == 1


def test_registered_proxy_classes(rc: Client) -> None:
    @proxy_methods(Counter, include_underscore=("_secret", "__init__"), exclude=("same",))
    class RemoteCounter(Remote):
        def local_helper(self) -> str:
            return "here"

    c = scatter(Counter(), client=rc)
    assert type(c) is RemoteCounter
    assert c.local_helper() == "here"
    assert c.inc() == 1
    assert c._secret() == "psst"
    assert "same" not in RemoteCounter.__shoal_methods__
    made = scatter(Counter, client=rc)()  # a Counter made on the engine
    assert type(made) is RemoteCounter  # registered types come back as proxies
    assert made.inc(5) == 5

    @proxy_methods(Resource, instance_check=True)
    class RemoteResource(Remote):
        pass

    r = scatter(Resource(), client=rc)
    assert isinstance(r, Resource)
    assert isinstance(r, Remote)
    assert type(r) is RemoteResource
    with pytest.raises(TypeError, match="subclass of Remote"):
        proxy_methods(Counter)(object)  # type: ignore[arg-type]


def test_vectorize_apply_and_call_all_run_where_the_items_are(rc: Client) -> None:
    proxies = scatter([Counter(i) for i in range(6)], client=rc)
    where = vectorize(lambda c: (c.n, os.getpid()))(proxies)
    pids = rc[:].apply_sync(os.getpid)
    assert [n for n, _ in where] == list(range(6))
    assert [pid for _, pid in where] == [pids[p.__engine_id__] for p in proxies]
    assert call_all(proxies, "inc", 10) == [10, 11, 12, 13, 14, 15]
    assert apply(lambda c, k: c.n * k, proxies[5], 2) == 30
    assert apply(lambda c: c.n, proxies) == [10, 11, 12, 13, 14, 15]
    assert apply(lambda x: x + 1, [1, 2]) == [2, 3]  # plain items run here


def test_refs_are_hashable_and_picklable_and_the_object_hub_sees_every_object(
    rc: Client,
) -> None:
    proxies = scatter(["a", "b", "c"], client=rc)
    refs = {p.__ref__ for p in proxies}
    assert len(refs) == 3
    assert pickle.loads(pickle.dumps(proxies[0].__ref__)) == proxies[0].__ref__
    hub = ObjectHub(rc)
    assert refs <= set(hub.keys())
    assert len(hub) == sum(hub.counts().values()) >= 3
    assert proxies[1].__ref__ in hub
    again = hub[proxies[1].__ref__]
    assert isinstance(again, Remote)
    assert gather(again) == "b"
    with pytest.raises(KeyError):
        hub[Ref(0, 10**9)]


# -- beyond distob -------------------------------------------------------------------


def test_dropped_proxies_free_their_objects(tmp_path: Path, hub: ClusterStarter) -> None:
    with hub(tmp_path, 2, "--client-timeout", "3") as (_, rc):
        proxies = scatter(list(range(10_000)), client=rc)
        assert ObjectHub(rc).counts() == {0: 5000, 1: 5000}
        copies = [p for p in proxies[:100] for _ in range(3)]  # the same proxy held thrice
        sent = rc[1].apply_async(len, proxies[-50:])  # pickled copies
        del proxies
        assert sent.get(30) == 50
        _settle(rc, {0: 100, 1: 0})
        assert gather(copies[0]) == 0  # the copies' objects stay
        assert ObjectHub(rc).counts() == {0: 100, 1: 0}
        del copies
        _settle(rc, {0: 0, 1: 0})


def test_a_proxy_argument_moves_engine_to_engine(rc: Client) -> None:
    target = scatter([1], destination=0, split=False, client=rc)
    other = scatter([2, 3], destination=1, split=False, client=rc)
    target.extend(other)  # other's list is fetched by engine 0 from engine 1
    assert gather(target) == [1, 2, 3]
    assert target.count(other[0]) == 1  # a value argument works as usual
    same_engine = scatter([9], destination=0, split=False, client=rc)
    target.extend(same_engine)  # resolved in place on engine 0
    assert gather(target) == [1, 2, 3, 9]
    nested = scatter({}, destination=0, client=rc)
    nested.update({"x": other})  # a proxy nested in a dict argument
    assert gather(nested) == {"x": [2, 3]}


def test_a_proxy_sent_to_an_engine_still_points_at_the_same_object(rc: Client) -> None:
    counter = scatter(Counter(), destination=0, client=rc)
    ref = counter.__ref__

    def bump(c: Any, times: int) -> tuple[int, str]:
        for _ in range(times):
            c.inc()
        return c.n, type(c).__name__

    # On engine 1 the proxy talks to engine 0 itself; on engine 0 it is the object.
    assert rc[1].apply_sync(bump, counter, 3) == (3, "RemoteCounter")
    assert rc[0].apply_sync(bump, counter, 2) == (5, "Counter")
    assert counter.n == 5
    rc[:].push({"everywhere": counter}, block=True)  # one message, a copy on each engine
    rc[:].execute("del everywhere", block=True)
    rc[:].execute("pass", block=True)  # the engines' drops went out after the last request
    assert counter.n == 5  # the copies gave back their own references, not the proxy's
    rc[1].push({"kept": counter})  # held in engine 1's namespace
    del counter
    assert rc[1].pull("kept.inc()", block=True) == 6
    rc[1].execute("del kept", block=True)
    # Every copy gave its reference back (engine 1's through its own requests to engine
    # 0): the object is freed.

    def freed() -> bool:
        gc.collect()
        return ref not in ObjectHub(rc)

    wait_until(freed, timeout=20, interval=0.1)


def test_remote_exceptions_keep_their_type_when_it_imports(rc: Client) -> None:
    lst = scatter([1], split=False, client=rc)
    with pytest.raises(ValueError, match="is not in list") as err:
        lst.index(5)
    cause = err.value  # also a RemoteError: the engine's traceback
    assert isinstance(cause, RemoteError)
    assert "index" not in cause.ename
    assert "ValueError" in cause.traceback
    assert cause.engine_id == lst.__engine_id__
    failing = scatter(fail, client=rc)
    with pytest.raises(KeyError, match="k"):
        failing(KeyError("k"))
    with pytest.raises(RemoteError, match="Unsendable: boom") as remote:
        scatter(fail_unsendable, client=rc)("boom")
    assert remote.value.ename == "Unsendable"


def test_proxies_are_safe_to_use_from_many_threads(rc: Client) -> None:
    counter = scatter(Counter(), client=rc)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: counter.inc(), range(400)))
    assert counter.n == 400


def test_a_killed_clients_objects_are_freed(tmp_path: Path, hub: ClusterStarter) -> None:
    """A client SIGKILLed with proxies alive: its lease ends, the engines free them.

    The client script runs as ``__main__`` and scatters an instance of a class it
    defines there: such a class travels by value.
    """
    with hub(tmp_path / "hub", 2, "--client-timeout", "3") as (_, rc):
        _killed_client(rc, tmp_path)


def _killed_client(rc: Client, tmp_path: Path) -> None:
    mine = scatter(["kept"], destination=0, client=rc)  # the live client's object stays
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from shoal.hub import Client, scatter, gather

            class Point:
                def __init__(self, x, y):
                    self.x, self.y = x, y
                def norm2(self):
                    return self.x ** 2 + self.y ** 2

            rc = Client(url_file={rc.url_file!r})
            points = scatter([Point(i, i) for i in range(50)])
            assert points[3].norm2() == 18, points[3].norm2()
            assert gather(points[4]).x == 4
            print("ready", flush=True)
            time.sleep(600)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.strip() == "ready", line
        assert ObjectHub(rc).counts() == {0: 26, 1: 25}
        assert sum(_engine_owned(rc).values()) == 50
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    _settle(rc, {0: 1, 1: 0}, timeout=30)
    assert gather(mine) == ["kept"]


def _engine_owned(rc: Client) -> dict[str, int]:
    owners: dict[str, int] = {}
    for e in rc.ids:
        reply = rc.object_request(e, "list_request", {}).result(30)
        for owner, n in reply["owners"].items():
            if owner != rc.owner:
                owners[owner] = owners.get(owner, 0) + n
    return owners


def test_calls_on_a_killed_engines_objects_fail_clearly(
    tmp_path: Path, hub: ClusterStarter
) -> None:
    with hub(tmp_path, 2, "--client-timeout", "3") as (_, client):
        doomed = scatter([1, 2], destination=0, split=False, client=client)
        safe = scatter([3], destination=1, split=False, client=client)
        safe.extend(doomed)  # engine 1 fetches from engine 0: their link is up
        assert gather(safe) == [3, 1, 2]
        pid = client[0].apply_sync(os.getpid)
        slow = client[0].execute("import time; time.sleep(30)")
        pending = call_async(doomed, "__len__")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineDiedError):
            pending.result(20)
        with pytest.raises(EngineDiedError):
            slow.get(20)
        wait_until(lambda: 0 not in client.ids, timeout=20)
        with pytest.raises(EngineDiedError, match="engine 0"):
            len(doomed)
        assert len(safe) == 3  # the other engine serves on
        # A fetch from the dead engine fails, naming it, instead of waiting forever.
        start = time.monotonic()
        with pytest.raises(EngineDiedError, match="fetch_request to the engine at tcp://"):
            safe.extend(doomed)
        assert time.monotonic() - start < 30
        assert len(safe) == 3
        del doomed


def test_a_freed_object_gives_a_clear_error(rc: Client) -> None:
    p = scatter([1], split=False, client=rc)
    ref = p.__ref__
    reply = rc.object_request(
        ref.engine, "refs_request", {"owner": rc.owner, "deltas": [[ref.id, -1]]}
    )
    assert reply.result(30)["missing"] == 0
    with pytest.raises(NoSuchObjectError, match=f"no object with id {ref.id}"):
        len(p)
