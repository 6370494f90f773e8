"""Pool and Executor on a real cluster (a hub process with 2 engines), compared with the
builtins and the stdlib's own implementations of the same APIs."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import gc
import itertools
import logging
import math
import multiprocessing
import multiprocessing.pool
import os
import pickle
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import multiprocess
import pytest

from shoal.hub import Client, CompositeError, RemoteError, TaskAborted
from shoal.hub._compat.pool import Executor, Pool
from shoal.hub.testing import wait_until

# -- functions the engines run -----------------------------------------------------------


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def total(*xs: int) -> int:
    return sum(xs)


def fail(x: object) -> None:
    raise ValueError(f"bad {x}")


def fail_on_3(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def pid(_: object = None) -> int:
    return os.getpid()


def set_env(key: str, value: str) -> None:
    os.environ[key] = value


def get_env(key: str) -> str | None:
    return os.environ.get(key)


def pop_env(key: str) -> str | None:
    return os.environ.pop(key, None)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def pool(client: Client) -> Iterator[Pool]:
    p = Pool(client=client)
    yield p
    p.terminate()


@pytest.fixture
def executor(client: Client) -> Iterator[Executor]:
    ex = Executor(client)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def _mp_style_program(make_pool: Callable[[int], Any]) -> dict[str, Any]:
    """Code written for ``multiprocess.Pool``: only the Pool class changes."""
    out: dict[str, Any] = {}
    with make_pool(2) as p:
        out["map"] = p.map(square, range(20))
        out["starmap"] = p.starmap(pow, [(2, 3), (3, 2), (5, 0)])
        pending = [p.apply_async(add, (i, i)) for i in range(5)]
        out["apply_async"] = [r.get(timeout=60) for r in pending]
        out["imap"] = list(p.imap(square, range(10), chunksize=3))
        out["imap_unordered"] = sorted(p.imap_unordered(square, range(10)))
        collected: list[int] = []
        p.map_async(square, range(5), callback=collected.extend).wait(60)
        out["callback"] = sorted(collected)  # the callback ran before the result was ready
        try:
            p.apply(fail, (1,))
        except Exception as exc:
            out["error"] = "bad 1" in str(exc)
        late: list[int] = []
        for i in range(4):
            p.apply_async(square, (i,), callback=late.append)
        p.close()
        p.join()
        out["after_join"] = sorted(late)  # join waited for every callback
    return out


# -- Pool: results against the builtins --------------------------------------------------


def test_apply(pool: Pool) -> None:
    assert pool.apply(add, (2, 3)) == add(2, 3)
    assert pool.apply(add, (1,), {"b": 2}) == 3
    assert pool.apply(square, [9]) == 81


def test_apply_async_result_api(pool: Pool) -> None:
    r = pool.apply_async(square, (7,))
    assert r.get(60) == 49
    assert r.ready()
    assert r.successful()
    assert r.wait(0) is None
    assert r.async_result.msg_ids


def test_result_not_ready(pool: Pool) -> None:
    r = pool.apply_async(nap, (0.5,))
    assert not r.ready()
    with pytest.raises(ValueError, match="not ready"):
        r.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(timeout=0.01)
    with pytest.raises(TimeoutError):  # also the builtin one
        r.get(timeout=0.01)
    with pytest.raises(multiprocess.TimeoutError):  # and multiprocess's
        r.get(timeout=0.01)
    r.wait(0.01)
    assert r.get(60) == 0.5


@pytest.mark.parametrize("chunksize", [None, 1, 7, 1000])
def test_map_matches_builtin(pool: Pool, chunksize: int | None) -> None:
    assert pool.map(square, range(100), chunksize) == list(map(square, range(100)))


@pytest.mark.parametrize("chunksize", [1, 7, 30, 1000])
def test_map_chunksize_honoured(pool: Pool, chunksize: int) -> None:
    r = pool.map_async(square, range(100), chunksize=chunksize)
    assert r.get(60) == list(map(square, range(100)))
    assert len(r.async_result.msg_ids) == math.ceil(100 / chunksize)


def test_map_inputs(pool: Pool) -> None:
    assert pool.map(square, (x for x in range(10))) == list(map(square, range(10)))
    assert pool.map(square, []) == []
    assert pool.map(square, iter(())) == []
    assert pool.map(len, ["a", "bb", "ccc"]) == [1, 2, 3]
    with pytest.raises(ValueError, match="Chunksize"):
        pool.map(square, range(3), chunksize=0)


def test_starmap_matches_builtin(pool: Pool) -> None:
    pairs = [(i, 2 * i) for i in range(50)]
    assert pool.starmap(add, pairs) == list(itertools.starmap(add, pairs))
    assert pool.starmap(add, pairs, chunksize=8) == list(itertools.starmap(add, pairs))
    ragged = [(), (1,), (1, 2), (1, 2, 3)]
    assert pool.starmap(total, ragged) == list(itertools.starmap(total, ragged))
    assert pool.starmap_async(add, pairs).get(60) == list(itertools.starmap(add, pairs))


@pytest.mark.parametrize("chunksize", [1, 5, 200])
def test_imap_matches_builtin(pool: Pool, chunksize: int) -> None:
    assert list(pool.imap(square, range(60), chunksize)) == list(map(square, range(60)))
    got = collections.Counter(pool.imap_unordered(square, range(60), chunksize))
    assert got == collections.Counter(map(square, range(60)))


def test_imap_inputs(pool: Pool) -> None:
    assert list(pool.imap(square, (x for x in range(7)))) == list(map(square, range(7)))
    assert list(pool.imap(square, [])) == []
    assert list(pool.imap_unordered(square, iter(()))) == []


def test_imap_unordered_gives_results_as_they_finish(pool: Pool) -> None:
    # two engines: the quick task finishes while the slow one still runs
    it = pool.imap_unordered(nap, [1.5, 0.0])
    assert next(it) == 0.0
    assert next(it) == 1.5
    with pytest.raises(StopIteration):
        next(it)


def test_imap_next_timeout(pool: Pool) -> None:
    it = pool.imap(nap, [0.5, 0.0])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.01)
    assert it.next(timeout=60) == 0.5
    assert it.next(timeout=60) == 0.0
    with pytest.raises(StopIteration):
        it.next(timeout=60)


def test_imap_error_in_place(pool: Pool) -> None:
    it = pool.imap(fail_on_3, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RemoteError) as info:
        next(it)
    assert info.value.ename == "ValueError"
    assert list(it) == [4, 5]  # like multiprocessing with chunksize 1: it goes on


def test_imap_bad_input_raised_in_place(pool: Pool) -> None:
    def rows() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("broken input")

    it = pool.imap(square, rows())
    assert next(it) == 1
    assert next(it) == 4
    with pytest.raises(KeyError, match="broken input"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_imap_runs_before_it_is_consumed(pool: Pool) -> None:
    it = pool.imap(square, range(20), chunksize=3)
    pool.close()
    pool.join()  # waits for the imap's tasks too
    assert list(it) == list(map(square, range(20)))


# -- Pool: callbacks and errors ----------------------------------------------------------


def test_callbacks_get_the_values_in_a_pool_thread(pool: Pool) -> None:
    got: list[Any] = []
    threads: list[str] = []

    def callback(value: Any) -> None:
        threads.append(threading.current_thread().name)
        got.append(value)

    r1 = pool.apply_async(add, (1, 2), callback=callback)
    assert r1.get(60) == 3
    assert got == [3]  # ran before the result was ready
    r2 = pool.map_async(square, range(10), callback=callback)
    r2.wait(60)
    assert got == [3, list(map(square, range(10)))]
    r3 = pool.starmap_async(add, [(1, 1), (2, 2)], callback=callback)
    r3.wait(60)
    assert got[-1] == [2, 4]
    assert threading.current_thread().name not in threads
    assert "shoal-client-io" not in threads
    assert set(threads) == {"shoal-pool-callbacks"}


def test_error_callback(pool: Pool) -> None:
    ok: list[Any] = []
    errors: list[BaseException] = []
    r = pool.apply_async(fail, (3,), callback=ok.append, error_callback=errors.append)
    with pytest.raises(RemoteError) as info:
        r.get(60)
    assert info.value.ename == "ValueError"
    assert info.value.evalue == "bad 3"
    assert "bad 3" in info.value.traceback
    assert errors == [info.value]
    assert ok == []
    assert r.ready()
    assert not r.successful()


def test_map_error(pool: Pool) -> None:
    with pytest.raises(RemoteError) as info:
        pool.map(fail_on_3, range(10))
    assert (info.value.ename, info.value.evalue) == ("ValueError", "three")
    errors: list[BaseException] = []
    ok: list[Any] = []
    r = pool.map_async(
        fail_on_3, range(10), chunksize=2, callback=ok.append, error_callback=errors.append
    )
    r.wait(60)
    assert not r.successful()
    assert ok == []
    assert len(errors) == 1
    assert isinstance(errors[0], RemoteError)  # the task's own error, as get() raises it
    assert not isinstance(errors[0], CompositeError)
    with pytest.raises(RemoteError) as again:
        r.get(0)
    assert again.value is errors[0]
    with pytest.raises(RemoteError, match="three"):
        pool.starmap(fail_on_3, [(1,), (3,)])


def test_failing_callback_keeps_the_pool_and_client_alive(
    client: Client, pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_: Any) -> None:
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="shoal.hub.pool"):
        r = pool.apply_async(square, (4,), callback=broken)
        assert r.get(60) == 16
        e = pool.apply_async(fail, (0,), error_callback=broken)
        with pytest.raises(RemoteError):
            e.get(60)
    assert "callback bug" in caplog.text
    seen: list[int] = []
    assert pool.apply_async(square, (5,), callback=seen.append).get(60) == 25
    assert seen == [25]
    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
    assert any(t.name == "shoal-client-io" and t.is_alive() for t in threading.enumerate())


def test_close_join_waits_for_tasks_and_callbacks(pool: Pool) -> None:
    got: list[float] = []
    results = [pool.apply_async(nap, (0.05 * i,), callback=got.append) for i in range(6)]
    mapped = pool.map_async(square, range(30), callback=got.append)
    pool.close()
    pool.join()
    assert all(r.ready() for r in [*results, mapped])
    assert len(got) == 7
    assert [r.get(0) for r in results] == [0.05 * i for i in range(6)]


# -- Pool: lifecycle ---------------------------------------------------------------------

_CALLS: list[Callable[[Pool], Any]] = [
    lambda p: p.apply(square, (1,)),
    lambda p: p.apply_async(square, (1,)),
    lambda p: p.map(square, [1]),
    lambda p: p.map_async(square, [1]),
    lambda p: p.imap(square, [1]),
    lambda p: p.imap_unordered(square, [1]),
    lambda p: p.starmap(add, [(1, 2)]),
    lambda p: p.starmap_async(add, [(1, 2)]),
    lambda p: p.__enter__(),
]


@pytest.mark.parametrize("end", ["close", "terminate"])
def test_ended_pool_raises(client: Client, end: str) -> None:
    p = Pool(client=client)
    with pytest.raises(ValueError, match="Pool is still running"):
        p.join()
    getattr(p, end)()
    for call in _CALLS:
        with pytest.raises(ValueError, match="Pool not running"):
            call(p)
    p.join()
    p.terminate()  # twice is fine
    for call in _CALLS:
        with pytest.raises(ValueError, match="Pool not running"):
            call(p)


def test_context_manager_terminates(client: Client) -> None:
    with Pool(client=client) as p:
        assert p.map(square, range(10)) == list(map(square, range(10)))
        slow = [p.apply_async(nap, (0.3,)) for _ in range(8)]  # 2 engines: most are queued
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(square, (1,))
    assert all(r.ready() for r in slow)  # terminate leaves nothing pending
    outcomes = [r.successful() for r in slow]
    assert not all(outcomes)
    failed = next(r for r in slow if not r.successful())
    with pytest.raises(TaskAborted):
        failed.get(0)
    assert client[:].apply_sync(square, 3) == [9, 9]  # the engines serve on


def test_processes_selects_engines(client: Client) -> None:
    with Pool(1, client=client) as p:
        pids = set(p.map(pid, range(40), chunksize=1))
    assert len(pids) == 1
    assert pids <= set(client[:].apply_sync(os.getpid))
    with Pool(processes=10, client=client) as p:  # more than there are: all of them
        assert p._processes == len(client.ids)
        assert p.map(square, range(10)) == list(map(square, range(10)))
    with pytest.raises(ValueError, match="at least 1"):
        Pool(0, client=client)


def test_initializer_runs_on_each_engine(client: Client) -> None:
    key = f"SHOAL_POOL_TEST_{uuid.uuid4().hex}"
    with Pool(initializer=set_env, initargs=(key, "ready"), client=client) as p:
        assert p.map(get_env, [key] * 10) == ["ready"] * 10
    assert client[:].apply_sync(get_env, key) == ["ready"] * len(client.ids)
    assert client[:].apply_sync(pop_env, key) == ["ready"] * len(client.ids)
    with pytest.raises(RemoteError, match="bad"):
        Pool(initializer=fail, initargs=("init",), client=client)


def test_maxtasksperchild_refused(client: Client) -> None:
    """Engines are not replaced after n tasks: any value but None is refused, not ignored."""
    for value in (1, 10, 0, -1, 0.5, "12"):
        with pytest.raises(ValueError, match="maxtasksperchild"):
            Pool(maxtasksperchild=value, client=client)  # type: ignore[arg-type]
    with Pool(maxtasksperchild=None, client=client) as p:
        assert p.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_context_refused(client: Client) -> None:
    """A multiprocessing context has nothing to choose on running engines: refused."""
    for context in (multiprocess.get_context("spawn"), multiprocessing.get_context("fork")):
        with pytest.raises(ValueError, match="context"):
            Pool(context=context, client=client)
    with Pool(context=None, client=client) as p:
        assert p.apply(square, (3,)) == 9


def test_workers_are_the_engines(client: Client) -> None:
    """``_pool`` (multiprocessing's list of workers) holds one entry per engine used."""
    with Pool(1, client=client) as p:
        assert p._pool == client.ids[:1]
    with Pool(client=client) as p:
        assert len(p._pool) == len(client.ids)


def _busy(client: Client, engine_id: int) -> bool:
    return bool(client[engine_id].status()["busy"])


def test_terminate_interrupts_the_pools_running_tasks_only(client: Client) -> None:
    """terminate() stops the pool's task running on an engine at once; another client's
    task queued behind it on that engine runs and succeeds."""
    other = Client(url_file=client.url_file)
    try:
        p = Pool(1, client=client)  # engine 0 only
        running = p.apply_async(nap, (60,))
        wait_until(lambda: _busy(client, 0), message="the pool's task to start")
        theirs = other[0].apply_async(nap, 1.0)  # queued on engine 0 behind the pool's
        queued = p.apply_async(nap, (60,))
        start = time.monotonic()
        p.terminate()
        assert time.monotonic() - start < 30  # not 60 s: the task was interrupted
        p.join()
        for result in (running, queued):
            with pytest.raises(TaskAborted):
                result.get(0)
        assert theirs.get(60) == 1.0  # never interrupted: not the pool's
        wait_until(lambda: not _busy(client, 0), message="engine 0 to be idle")
    finally:
        other.close()


def test_unclosed_running_pool_warns_when_collected(client: Client) -> None:
    """A running pool collected without close/terminate gives a ResourceWarning."""
    pools = [Pool(1, client=client)]
    assert pools[0].apply(square, (2,)) == 4
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        _drop(pools)
    pools = [Pool(1, client=client)]
    pools[0].close()
    pools[0].join()
    _drop(pools)  # no warning: filterwarnings = error would fail the test


def _drop(pools: list[Pool]) -> None:
    """Forget the pools and collect them now."""
    pools.clear()
    gc.collect()


def test_pool_from_profile_owns_its_client(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOAL_DIR", str(tmp_path))
    (tmp_path / "profile_pooltest").mkdir()
    shutil.copy(client.url_file, tmp_path / "profile_pooltest" / "hub-client.json")
    with Pool(profile="pooltest") as p:
        assert p.map(square, range(10)) == list(map(square, range(10)))
        own = p._client
        assert own is not client
    assert own._closed
    assert not client._closed
    with pytest.raises(FileNotFoundError):
        Pool(profile="no-such-profile")


def test_pool_is_not_picklable(pool: Pool) -> None:
    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_client_factories(client: Client) -> None:
    p = client.pool(1)
    try:
        assert isinstance(p, Pool)
        assert p.apply(square, (3,)) == 9
    finally:
        p.terminate()
    with client.executor() as ex:
        assert isinstance(ex, Executor)
        assert ex.submit(square, 4).result(60) == 16


def test_code_written_for_multiprocessing_runs_unchanged(client: Client) -> None:
    # The reference: the stdlib's own Pool implementation (threads: no fork in a test).
    expected = _mp_style_program(multiprocessing.pool.ThreadPool)
    got = _mp_style_program(functools.partial(Pool, client=client))
    assert got == expected
    assert got["error"] is True


# -- Executor ----------------------------------------------------------------------------


def test_executor_submit(executor: Executor) -> None:
    future = executor.submit(add, 1, b=2)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(60) == 3
    assert future.done()
    assert executor.submit(lambda x: x + 1, 1).result(60) == 2


def test_executor_map_order(executor: Executor) -> None:
    assert list(executor.map(square, range(50))) == list(map(square, range(50)))
    for chunksize in (2, 7, 100):
        got = list(executor.map(square, range(50), chunksize=chunksize))
        assert got == list(map(square, range(50)))
    assert list(executor.map(add, range(10), range(5))) == list(map(add, range(10), range(5)))
    assert list(executor.map(square, [])) == []
    # submitted in order even when they finish out of order
    assert list(executor.map(nap, [0.4, 0.0, 0.1])) == [0.4, 0.0, 0.1]
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(square, range(3), chunksize=0)


def test_executor_map_buffersize_streams(executor: Executor) -> None:
    results = executor.map(square, itertools.count(), buffersize=4)
    assert list(itertools.islice(results, 10)) == list(map(square, range(10)))
    results.close()  # type: ignore[attr-defined]


def test_executor_map_timeout(executor: Executor) -> None:
    results = executor.map(nap, [1.0, 0.0], timeout=0.1)
    with pytest.raises(concurrent.futures.TimeoutError):
        next(results)
    quick = executor.map(square, range(5), timeout=60)
    assert list(quick) == [0, 1, 4, 9, 16]


def test_executor_exceptions(executor: Executor) -> None:
    future = executor.submit(fail, 2)
    error = future.exception(60)
    assert isinstance(error, RemoteError)
    assert (error.ename, error.evalue) == ("ValueError", "bad 2")
    with pytest.raises(RemoteError, match="bad 2"):
        future.result()
    results = executor.map(fail_on_3, range(6))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RemoteError, match="three"):
        next(results)


def test_executor_as_completed(executor: Executor) -> None:
    slow = executor.submit(nap, 1.0)
    quick = executor.submit(nap, 0.0)
    order = list(concurrent.futures.as_completed([slow, quick], timeout=60))
    assert order == [quick, slow]
    many = [executor.submit(square, i) for i in range(20)]
    done = {f.result() for f in concurrent.futures.as_completed(many, timeout=60)}
    assert done == set(map(square, range(20)))
    first = concurrent.futures.wait(
        [executor.submit(nap, 0.5), executor.submit(nap, 0.0)],
        timeout=60,
        return_when=concurrent.futures.FIRST_COMPLETED,
    )
    assert [f.result() for f in first.done] == [0.0]


def test_executor_shutdown_waits(client: Client) -> None:
    ex = Executor(client)
    futures = [ex.submit(nap, 0.2) for _ in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0.2] * 4
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(square, range(3))
    ex.shutdown()  # twice is fine


def test_executor_shutdown_cancel_futures(client: Client) -> None:
    ex = Executor(client)
    futures = [ex.submit(nap, 0.3) for _ in range(10)]
    start = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - start < 2.0  # not 10 x 0.3 s / 2 engines
    assert all(f.done() for f in futures)
    assert any(f.cancelled() for f in futures)
    waited = concurrent.futures.wait(futures, timeout=10)  # cancelled ones count as done
    assert not waited.not_done
    assert len(list(concurrent.futures.as_completed(futures, timeout=10))) == 10
    assert client[:].apply_sync(square, 2) == [4, 4]


def test_executor_context_manager(client: Client) -> None:
    with Executor(client, targets=client.ids[:1]) as ex:
        futures = [ex.submit(pid) for _ in range(6)]
    assert all(f.done() for f in futures)
    assert len({f.result() for f in futures}) == 1
