"""The cluster context's dummy, shared_memory, util and reduction, beside multiprocess's:
the same calls give the same results, on the client and on real engines."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import weakref
from pathlib import Path
from typing import Any

import multiprocess
import multiprocess.dummy
import multiprocess.pool
import multiprocess.reduction
import multiprocess.shared_memory
import multiprocess.util
import pytest

from shoal.hub import Client
from shoal.hub._compat import mp_dummy, mp_reduction, mp_shared_memory, mp_util
from shoal.hub._compat.mp_shared_memory import (
    ShareableList,
    SharedMemory,
    SharedMemoryHostError,
    SharedMemoryManager,
)
from shoal.hub.testing import ClusterStarter
from shoal.wire import Serializer

pytestmark = pytest.mark.timeout(120)

SHM = Path("/dev/shm")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (ended when it returns); fail on its errors."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def segments() -> Any:
    """Segments a test makes: unlinked after it, whatever happened."""
    made: list[SharedMemory] = []
    yield made
    for shm in made:
        shm.close()
        if (SHM / shm.name).exists():
            shm.unlink()


# -- what the engines run -----------------------------------------------------------------


def write_and_read(shm: SharedMemory) -> tuple[str, bytes, int]:
    shm.buf[5:10] = b"world"
    return shm.name, bytes(shm.buf[:10]), shm.size


def unpickle_elsewhere(data: bytes) -> str:
    """On an engine: load a pickled segment as a process of another host would."""
    before = os.environ.get("SHOAL_HOST")
    os.environ["SHOAL_HOST"] = "elsewhere.example"
    try:
        pickle.loads(data)
    except SharedMemoryHostError as exc:
        return str(exc)
    finally:
        if before is None:
            del os.environ["SHOAL_HOST"]
        else:
            os.environ["SHOAL_HOST"] = before
    return "loaded"


def add_path(folder: str) -> None:
    sys.path.insert(0, folder)


def bump_list(sl: ShareableList[Any]) -> list[object]:
    sl[0] = sl[0] + 1
    sl[3] = "from engine"
    return list(sl)


def total(sl: ShareableList[int]) -> int:
    return sum(sl)


# -- shared_memory ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((None, True, 0), {}), ((), {"size": -1}), (("nope_shoal_absent",), {})],
)
def test_shared_memory_bad_arguments_as_multiprocess(args: Any, kwargs: Any) -> None:
    """Bad arguments raise what multiprocess raises, with its message."""
    with pytest.raises((ValueError, FileNotFoundError)) as theirs:
        multiprocess.shared_memory.SharedMemory(*args, **kwargs)
    with pytest.raises((ValueError, FileNotFoundError)) as ours:
        SharedMemory(*args, **kwargs)
    assert type(ours.value) is type(theirs.value)
    if isinstance(theirs.value, ValueError):
        assert str(ours.value) == str(theirs.value)


def test_shared_memory_name_checked() -> None:
    """A name that is no segment name is refused with an error naming the argument."""
    with pytest.raises(ValueError, match="name must be"):
        SharedMemory("a/b", create=True, size=8)
    with pytest.raises(TypeError, match="name must be a str"):
        SharedMemory(5, create=True, size=8)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="size must be an int"):
        SharedMemory(create=True, size=2.5)  # type: ignore[arg-type]


def test_shared_memory_create_attach_unlink(segments: list[SharedMemory]) -> None:
    """Create, attach by name, share bytes, close and unlink as the stdlib does."""
    shm = SharedMemory(create=True, size=100)
    segments.append(shm)
    assert shm.name.startswith("psm_")
    assert (SHM / shm.name).exists()
    assert shm.size == 100 == len(shm.buf)
    shm.buf[:5] = b"hello"
    other = SharedMemory(shm.name, size=1)  # attaching: the segment's own size
    segments.append(other)
    assert other.size == 100
    assert bytes(other.buf[:5]) == b"hello"
    assert repr(other) == f"SharedMemory({shm.name!r}, size=100)"
    with pytest.raises(FileExistsError):
        SharedMemory(shm.name, create=True, size=10)
    other.close()
    with pytest.raises(ValueError, match="closed"):
        other.buf  # noqa: B018 - the property raises
    shm.unlink()
    assert not (SHM / shm.name).exists()
    assert bytes(shm.buf[:5]) == b"hello"  # still mapped here
    with pytest.raises(FileNotFoundError):
        shm.unlink()
    with pytest.raises(FileNotFoundError):
        SharedMemory(shm.name)
    named = SharedMemory(f"/shoal_test_{os.getpid()}", create=True, size=8)
    segments.append(named)
    assert named.name == f"/shoal_test_{os.getpid()}"
    assert (SHM / f"shoal_test_{os.getpid()}").exists()


def test_shared_memory_creator_unlinks_at_exit() -> None:
    """A process unlinks the segments it made at exit; one that only attached does not."""
    made = run_python(
        """
        from shoal.hub._compat.mp_shared_memory import SharedMemory
        kept = SharedMemory(create=True, size=10)
        print(kept.name)
        """
    ).stdout.strip()
    assert not (SHM / made).exists()
    shm = SharedMemory(create=True, size=10)
    try:
        run_python(
            f"""
            from shoal.hub._compat.mp_shared_memory import SharedMemory
            attached = SharedMemory({shm.name!r})
            attached.buf[0] = 7
            """
        )
        assert (SHM / shm.name).exists()
        assert shm.buf[0] == 7
    finally:
        shm.close()
        shm.unlink()


def test_shared_memory_on_engines(client: Client, segments: list[SharedMemory]) -> None:
    """A segment passed to tasks attaches by name on every engine of this host."""
    shm = SharedMemory(create=True, size=64)
    segments.append(shm)
    shm.buf[:5] = b"hello"
    got = client[:].apply_sync(write_and_read, shm)
    assert got == [(shm.name, b"helloworld", 64)] * 2
    assert bytes(shm.buf[:10]) == b"helloworld"


def test_shared_memory_refused_on_another_host(
    client: Client, segments: list[SharedMemory]
) -> None:
    """Unpickled on a process of another host, a segment raises an error naming both."""
    shm = SharedMemory(create=True, size=8)
    segments.append(shm)
    said = client[0].apply_sync(unpickle_elsewhere, pickle.dumps(shm))
    assert repr(shm.host) in said
    assert "'elsewhere.example'" in said
    assert shm.name in said
    sl = ShareableList([1])
    segments.append(sl.shm)
    assert "elsewhere.example" in client[0].apply_sync(unpickle_elsewhere, pickle.dumps(sl))


SEQUENCE: list[Any] = [7, 2.5, True, "héllo", b"bytes\x00x", None, -3, "a" * 20]


def test_shareable_list_as_multiprocess(segments: list[SharedMemory]) -> None:
    """A ShareableList has multiprocess's bytes, values, methods and errors."""
    theirs = json.loads(
        run_python(
            f"""
            import json
            from multiprocess.shared_memory import ShareableList
            sl = ShareableList({SEQUENCE!r})
            out = {{
                "bytes": bytes(sl.shm.buf).hex(), "format": sl.format, "len": len(sl),
                "count": sl.count(7), "index": sl.index(None),
            }}
            sl[0] = 99
            out["items"] = [repr(x) for x in sl]
            try:
                sl[3] = "x" * 100
            except ValueError as exc:
                out["too_long"] = str(exc)
            sl.shm.close()
            sl.shm.unlink()
            print(json.dumps(out))
            """
        ).stdout
    )
    sl: ShareableList[Any] = ShareableList(SEQUENCE)
    segments.append(sl.shm)
    assert bytes(sl.shm.buf).hex() == theirs["bytes"]
    assert (sl.format, len(sl), sl.count(7), sl.index(None)) == (
        theirs["format"],
        theirs["len"],
        theirs["count"],
        theirs["index"],
    )
    sl[0] = 99
    assert [repr(x) for x in sl] == theirs["items"]
    with pytest.raises(ValueError) as exc:  # noqa: PT011 - the message is compared
        sl[3] = "x" * 100
    assert str(exc.value) == theirs["too_long"]
    again: ShareableList[Any] = ShareableList(name=sl.shm.name)
    segments.append(again.shm)
    assert list(again) == list(sl)
    assert repr(again) == f"ShareableList({list(sl)!r}, name={sl.shm.name!r})"
    empty: ShareableList[int] = ShareableList()
    segments.append(empty.shm)
    assert list(empty) == []
    with pytest.raises(TypeError, match=r"sequence\[1\] must be"):
        ShareableList([1, [2]])  # type: ignore[type-var]


def test_shareable_list_on_engines(client: Client, segments: list[SharedMemory]) -> None:
    """A ShareableList passed to a task is the same list on the engine."""
    sl: ShareableList[Any] = ShareableList([0, 1.5, b"x", "from client"])
    segments.append(sl.shm)
    assert client[0].apply_sync(bump_list, sl) == [1, 1.5, b"x", "from engine"]
    assert client[1].apply_sync(bump_list, sl) == [2, 1.5, b"x", "from engine"]
    assert list(sl) == [2, 1.5, b"x", "from engine"]


MANAGER_SCRIPT = """
import json, multiprocessing, os
{import_line}

def outcome(f):
    try:
        f()
        return "ok"
    except (multiprocessing.ProcessError, {process_error}) as exc:
        return f"ProcessError: {{exc}}"
    except ValueError as exc:
        return f"ValueError: {{exc}}"

out = {{}}
with SharedMemoryManager() as smm:
    shm = smm.SharedMemory(8)
    sl = smm.ShareableList([1, "a"])
    out["inside"] = [os.path.exists("/dev/shm/" + n) for n in (shm.name, sl.shm.name)]
    out["items"] = list(sl)
    out["size"] = shm.size
    out["start again"] = outcome(smm.start)
    out["size 0"] = outcome(lambda: smm.SharedMemory(0))
out["after"] = [os.path.exists("/dev/shm/" + n) for n in (shm.name, sl.shm.name)]
out["start after"] = outcome(smm.start)
out["with after"] = outcome(smm.__enter__)
out["shutdown again"] = outcome(smm.shutdown)
print(json.dumps(out))
"""


def test_shared_memory_manager_as_multiprocess() -> None:
    """The manager's lifecycle, segments and errors are multiprocess's."""
    theirs, ours = (
        json.loads(run_python(MANAGER_SCRIPT.format(import_line=line, process_error=error)).stdout)
        for line, error in (
            (
                "from multiprocess.managers import SharedMemoryManager",
                "__import__('multiprocess').ProcessError",
            ),
            (
                "from shoal.hub._compat.mp_shared_memory import SharedMemoryManager",
                "multiprocessing.ProcessError",
            ),
        )
    )
    assert ours == theirs
    assert theirs["inside"] == [True, True]
    assert theirs["after"] == [False, False]


def test_shared_memory_manager_on_engines(client: Client) -> None:
    """The manager's segments work on engines; using it unstarted is a clear error."""
    with SharedMemoryManager() as smm:
        shm = smm.SharedMemory(32)
        sl = smm.ShareableList([1, 2, 3])
        shm.buf[:5] = b"hello"
        assert client[0].apply_sync(write_and_read, shm)[1] == b"helloworld"
        assert client[1].apply_sync(total, sl) == 6
        names = [shm.name, sl.shm.name]
    assert not any((SHM / n).exists() for n in names)
    with pytest.raises(multiprocessing.ProcessError, match="not started"):
        smm.SharedMemory(8)
    idle = SharedMemoryManager()
    with pytest.raises(multiprocessing.ProcessError, match="not started"):
        idle.ShareableList([1])
    assert "initial" in repr(idle)


# -- util -----------------------------------------------------------------------------------


def test_util_names_as_multiprocess() -> None:
    """Levels, logger name and format are multiprocess's; the common names exist."""
    for name in ("SUBDEBUG", "SUBWARNING", "DEBUG", "INFO", "NOTSET", "LOGGER_NAME"):
        assert getattr(mp_util, name) == getattr(multiprocess.util, name), name
    assert mp_util.DEFAULT_LOGGING_FORMAT == multiprocess.util.DEFAULT_LOGGING_FORMAT
    assert set(multiprocess.util.__all__) - {"close_all_fds_except"} <= set(mp_util.__all__)
    assert mp_util.is_exiting() is False


def test_util_logging_as_multiprocess() -> None:
    """get_logger, log_to_stderr and debug/info/sub_* log what multiprocess's log."""
    script = """
        import logging
        {import_line}
        util.info("before get_logger: dropped")
        logger = util.get_logger()
        print(logger.name, bool(logger.propagate))
        util.log_to_stderr(util.SUBDEBUG)
        util.sub_debug("sub %d", 1)
        util.debug("debug %s", "x")
        util.info("info")
        util.sub_warning("warn")
        util.get_logger().setLevel(logging.INFO)
        util.debug("filtered")
        util.info("after")
        """
    theirs = run_python(script.format(import_line="from multiprocess import util"))
    ours = run_python(script.format(import_line="from shoal.hub._compat import mp_util as util"))
    assert ours.stdout == theirs.stdout == "multiprocess False\n"
    assert ours.stderr == theirs.stderr
    assert "[INFO/MainProcess] after" in ours.stderr


def test_util_finalize_and_after_fork() -> None:
    """Finalize runs when called or at exit; register_after_fork runs in forked children."""
    out = run_python(
        """
        import multiprocessing
        from shoal.hub._compat import mp_util as util

        class Thing:
            pass

        def said(text):
            print(text, flush=True)

        thing = Thing()
        util.register_after_fork(thing, lambda obj: said(f"child {type(obj).__name__}"))
        child = multiprocessing.get_context("fork").Process(target=said, args=("ran",))
        child.start()
        child.join()
        now = util.Finalize(thing, said, args=("called",), exitpriority=1)
        now()
        assert not now.still_active()
        util.Finalize(None, said, args=("at exit",), exitpriority=1)
        try:
            util.register_after_fork(thing, 5)
        except TypeError as exc:
            said(str(exc))
        """
    ).stdout.splitlines()
    assert out == ["child Thing", "ran", "called", "func must be callable, got 5", "at exit"]


# -- dummy ----------------------------------------------------------------------------------


def work(x: int) -> tuple[int, str]:
    return x * x, threading.current_thread().name


def test_dummy_as_multiprocess() -> None:
    """dummy's processes, queues, locks, manager and Pool are threads, as multiprocess's."""
    assert mp_dummy.implementation == "multiprocess"
    assert set(multiprocess.dummy.__all__) <= set(mp_dummy.__all__)
    for name in multiprocess.dummy.__all__:
        assert getattr(mp_dummy, name) is getattr(multiprocess.dummy, name), name
    q: mp_dummy.Queue[int] = mp_dummy.Queue()
    p = mp_dummy.Process(target=q.put, args=(os.getpid(),))
    p.start()
    assert p in mp_dummy.active_children() or not p.is_alive()
    p.join()
    assert q.get(timeout=30) == os.getpid()
    assert mp_dummy.current_process() is threading.current_thread()
    m = mp_dummy.Manager()
    d = m.dict(a=1)
    assert d == {"a": 1}
    assert m.Value("i", 3).value == 3
    assert list(mp_dummy.Array("i", [1, 2])) == [1, 2]
    a, b = mp_dummy.Pipe()
    a.send("x")
    assert b.recv() == "x"
    with mp_dummy.Pool(2) as pool, multiprocess.dummy.Pool(2) as theirs:
        assert [r[0] for r in pool.map(work, range(5))] == [
            r[0] for r in theirs.map(work, range(5))
        ]
        assert all(name != "MainThread" for _, name in pool.map(work, range(5)))


def test_dummy_without_multiprocess() -> None:
    """Without multiprocess, dummy is the standard library's, with the same names."""
    out = run_python(
        """
        import sys
        sys.modules["multiprocess"] = None  # as if it were not installed
        import multiprocessing.dummy, multiprocessing.pool
        from shoal.hub._compat import mp_dummy
        assert mp_dummy.Pool is multiprocessing.dummy.Pool
        assert mp_dummy.ThreadPool is multiprocessing.pool.ThreadPool
        with mp_dummy.Pool(2) as pool:
            print(mp_dummy.implementation, pool.map(abs, [-1, -2]))
        """
    )
    assert out.stdout == "multiprocessing [1, 2]\n"


def test_thread_pool_as_multiprocess() -> None:
    """ThreadPool is multiprocess's: same results, on threads of this process."""
    assert mp_dummy.ThreadPool is multiprocess.pool.ThreadPool
    with mp_dummy.ThreadPool(2) as pool:
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        assert pool.apply_async(os.getpid).get(timeout=30) == os.getpid()


# -- reduction ------------------------------------------------------------------------------


def test_forking_pickler_as_multiprocess() -> None:
    """ForkingPickler dumps what loads back, lambdas included, as multiprocess's does."""
    obj = {"f": lambda x: x + 1, "n": [1, 2.5, "x"], "b": b"z" * 100_000}
    ours = mp_reduction.ForkingPickler.dumps(obj)
    theirs = multiprocess.reduction.ForkingPickler.dumps(obj)
    assert isinstance(ours, memoryview)
    assert isinstance(theirs, memoryview)
    for data in (ours, theirs):
        back = mp_reduction.ForkingPickler.loads(data)
        assert back["f"](1) == 2
        assert back["n"] == obj["n"]
        assert back["b"] == obj["b"]
    file = io.BytesIO()
    mp_reduction.dump([1, 2], file)
    assert pickle.loads(file.getvalue()) == [1, 2]
    with pytest.raises(ValueError, match="protocol must be"):
        mp_reduction.ForkingPickler.dumps(1, protocol=2)
    with pytest.raises(TypeError, match="type must be a class"):
        mp_reduction.register(5, repr)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reduce must be callable"):
        mp_reduction.register(int, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="client must be"):
        mp_reduction.attach("client")  # type: ignore[arg-type]


POINT_MODULE = '''
import os


class Point:
    """A type only this test registers a reducer for."""

    def __init__(self, x, where="made"):
        self.x = x
        self.where = where


def rebuild(x, where):
    return Point(x, where)


def reduce_point(p):
    return rebuild, (p.x, f"reduced in {os.getpid()}")


def make_point(x):
    return Point(x)


def where_is(p):
    return p.where
'''


@pytest.fixture
def fresh_reductions(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's registrations start empty and are forgotten after the test: later
    tests' clients must not be sent types their engines cannot import."""
    monkeypatch.setattr(mp_reduction, "_registry", {})
    monkeypatch.setattr(mp_reduction, "_local", Serializer(threshold=sys.maxsize))
    monkeypatch.setattr(mp_reduction, "_clients", weakref.WeakKeyDictionary())
    monkeypatch.setattr(mp_reduction.ForkingPickler, "_extra_reducers", {})


@pytest.mark.usefixtures("fresh_reductions")
def test_register_on_client_and_engines(
    tmp_path: Path, hub: ClusterStarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """register() applies to the client's serializer, its engines', and late engines'."""
    name = f"shoal_point_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(POINT_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    with hub(tmp_path / "cluster", 1) as (_, rc):
        rc[:].apply_sync(add_path, str(tmp_path))
        engine_pid = rc[0].apply_sync(os.getpid)
        mp_reduction.attach(rc)
        mp_reduction.register(module.Point, module.reduce_point)
        assert mp_reduction.registered()[module.Point] is module.reduce_point
        # Client to engine: the client's serializer used the reducer.
        assert rc[0].apply_sync(module.where_is, module.Point(1)) == (f"reduced in {os.getpid()}")
        # Engine to client: the engine's serializer used it too.
        assert rc[0].apply_sync(module.make_point, 2).where == f"reduced in {engine_pid}"
        assert mp_reduction.sync(rc) == []  # every engine has them
        # An engine that joins later gets them at the next sync().
        rc.add_engines(1)
        (new,) = set(rc.wait_for_engines(2, timeout=60)) - {0}
        rc[new].apply_sync(add_path, str(tmp_path))
        new_pid = rc[new].apply_sync(os.getpid)
        assert rc[new].apply_sync(module.make_point, 3).where == "made"
        assert mp_reduction.sync(rc) == [new]
        assert rc[new].apply_sync(module.make_point, 3).where == f"reduced in {new_pid}"
        # ForkingPickler uses it here too.
        back = pickle.loads(mp_reduction.ForkingPickler.dumps(module.Point(4)))
        assert back.where == f"reduced in {os.getpid()}"

        # A class defined here travels by value, and keeps its identity on the engine.
        class Local:
            def __init__(self, where: str = "made") -> None:
                self.where = where

        def rebuild(where: str) -> Local:
            return Local(where)

        def reduce_local(obj: Local) -> tuple[object, ...]:
            return rebuild, (f"local, reduced in {os.getpid()}",)

        def make_local() -> Local:
            return Local()

        mp_reduction.register(Local, reduce_local)
        back = rc[0].apply_sync(make_local)
        assert type(back) is Local
        assert back.where == f"local, reduced in {engine_pid}"


# -- the modules ----------------------------------------------------------------------------


@pytest.mark.parametrize("module", [mp_dummy, mp_shared_memory, mp_util, mp_reduction])
def test_module_surface(module: Any) -> None:
    """Each module says what differs from multiprocess and exports what it lists."""
    assert "multiprocess" in (module.__doc__ or "")
    for name in module.__all__:
        assert hasattr(module, name), name
    assert logging.getLogger(mp_util.LOGGER_NAME) is mp_util.get_logger()
