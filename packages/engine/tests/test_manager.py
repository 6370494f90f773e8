"""KernelManager and the engine process: real subprocesses, real signals, real crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.engine import EngineDiedError, KernelManager, RemoteError
from shoal.hub.testing import wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def streams() -> list[tuple[float, str, str]]:
    """What the engine wrote, with arrival times."""
    return []


@pytest.fixture
def km(streams: list[tuple[float, str, str]]) -> Iterator[KernelManager]:
    """A started KernelManager whose engine is ended when the test ends, whatever happens."""
    manager = KernelManager(on_stream=lambda n, t: streams.append((time.monotonic(), n, t)))
    manager.start()
    try:
        yield manager
    finally:
        pid = manager.pid
        manager.shutdown(timeout=2.0)
        if pid is not None:
            assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours is not alive; reap it if it is one.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def test_round_trips(km: KernelManager) -> None:
    """execute, apply, push, pull and status all answer correctly."""
    assert km.execute("x = 6\nx * 7") == 42
    assert km.execute("y = 1") is None
    assert km.apply(lambda a, b=1: a + b, 40, b=2) == 42
    km.push({"p": 3, "q": [1, 2]})
    assert km.pull("p") == 3
    assert km.pull(["q", "p * x"]) == [[1, 2], 18]
    status = km.status()
    assert status["pid"] == km.pid
    assert status["busy"] is False
    assert status["memory_rss"] > 0


def test_object_store_through_the_engine(km: KernelManager) -> None:
    """Objects stored on the engine are used by id, and unknown ids get clear errors."""
    ref = km.request("store_request", {"obj": [3, 1, 2]})["ref"]
    assert km.request("call_method_request", {"id": ref["id"], "method": "sort"})["status"] == "ok"
    reply = km.request("getattr_request", {"id": ref["id"], "name": "__len__", "returns": "ref"})
    assert reply["status"] == "ok"
    assert km.request("decref_request", {"id": ref["id"]})["refcount"] == 0
    missing = km.request("decref_request", {"id": ref["id"]})
    assert missing["status"] == "error"
    assert missing["ename"] == "NoSuchObjectError"


def test_remote_error_carries_type_message_traceback(km: KernelManager) -> None:
    """A failing request raises RemoteError with the remote type, message and traceback."""
    with pytest.raises(RemoteError) as info:
        km.execute("def f():\n    return 1 / 0\nf()")
    err = info.value
    assert err.ename == "ZeroDivisionError"
    assert err.evalue == "division by zero"
    assert "return 1 / 0" in err.traceback
    assert km.execute("1 + 1") == 2


def test_output_streams_while_running(
    km: KernelManager, streams: list[tuple[float, str, str]]
) -> None:
    """stdout arrives while a long execute still runs, not when it ends."""
    km.execute("import time\nprint('first')\ntime.sleep(1.0)\nprint('last')")
    done = time.monotonic()
    first = next(t for t, name, text in streams if name == "stdout" and "first" in text)
    assert done - first > 0.5
    assert "".join(text for _, _, text in streams) == "first\nlast\n"


@pytest.mark.parametrize("code", ["while True: pass", "import time; time.sleep(60)"])
def test_interrupt(km: KernelManager, code: str) -> None:
    """interrupt() stops pure-Python loops and sleeps quickly; the engine stays up."""
    pid = km.pid
    timer = threading.Timer(0.5, km.interrupt)
    timer.start()
    start = time.monotonic()
    with pytest.raises(RemoteError) as info:
        km.execute(code)
    assert info.value.ename == "KeyboardInterrupt"
    assert time.monotonic() - start < 5.0
    assert km.pid == pid
    assert km.execute("21 * 2") == 42


def test_ignored_interrupt_escalates(km: KernelManager) -> None:
    """Code that ignores SIGINT is terminated after the grace period; restart works."""
    code = (
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ignoring', flush=True)\ntime.sleep(60)"
    )

    def interrupt_once_ignored(name: str, text: str) -> None:
        # Only once SIGINT is ignored: before it (the first execute makes the IPython
        # shell) the interrupt would simply stop the code.
        if "ignoring" in text:
            threading.Thread(target=km.interrupt).start()

    km.on_stream = interrupt_once_ignored
    with pytest.raises(EngineDiedError, match="SIGTERM"):
        km.execute(code)
    km.restart()
    assert km.execute("1") == 1


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        ("import os; os._exit(3)", "exited with code 3"),
        ("import ctypes; ctypes.string_at(0)", "SIGSEGV"),
    ],
    ids=["exit", "segfault"],
)
def test_crash_is_reported_and_restart_works(km: KernelManager, code: str, cause: str) -> None:
    """An engine crash raises EngineDiedError naming the cause; the parent is unharmed."""
    with pytest.raises(EngineDiedError, match=cause):
        km.execute(code)
    assert not km.is_alive()
    km.restart()
    assert km.apply(pow, 2, 10) == 1024


def test_memory_error_is_a_remote_error(km: KernelManager) -> None:
    """A MemoryError in user code is an ordinary remote error; the engine goes on."""
    with pytest.raises(RemoteError) as info:
        km.execute("bytearray(1 << 60)")
    assert info.value.ename in ("MemoryError", "OverflowError")
    assert km.execute("2") == 2


def test_heartbeat_answered_while_busy(km: KernelManager) -> None:
    """Heartbeats are echoed while the engine runs numpy on a large array for seconds."""
    km.execute("import numpy as np; a = np.random.default_rng(0).random(4_000_000)")
    msg_id = km.submit(
        "execute_request",
        {"code": "import time\nt = time.time()\nwhile time.time() - t < 2.5:\n    np.sort(a)"},
    )
    wait_until(lambda: km.status()["busy"], timeout=20)  # it runs the loop
    pings = [km.ping(timeout=1.0) for _ in range(5)]
    assert km.get_reply(msg_id)["status"] == "ok"
    assert max(pings) < 1.0


def test_many_requests_in_flight(km: KernelManager) -> None:
    """1,000 requests submitted at once are all answered, in order, correctly."""
    ids = [km.submit("apply_request", {"f": abs, "args": (-i,), "kwargs": {}}) for i in range(1000)]
    results = [km.get_reply(msg_id, timeout=60)["result"] for msg_id in ids]
    assert results == list(range(1000))


def test_bad_input_answered_and_engine_keeps_serving(km: KernelManager) -> None:
    """Garbage frames are dropped; unknown types and bad content get error replies."""
    shell = km._sockets["shell"]
    shell.send_multipart([km._identity, b"garbage"])
    shell.send_multipart([km._identity, b"<SHOAL|1>" + b"0" * 64 + b"junk"])
    unknown = km.request("frobnicate_request", {})
    assert unknown["status"] == "error"
    assert "frobnicate_request" in unknown["evalue"]
    bad = km.request("execute_request", {"code": 42})
    assert bad["status"] == "error"
    assert "code" in bad["evalue"]
    raising = km.request("call_method_request", {"id": 12345, "method": "x"})
    assert raising["ename"] == "NoSuchObjectError"
    assert km.execute("'still here'") == "still here"


def test_unserializable_result_is_an_error_reply(km: KernelManager) -> None:
    """A result that cannot travel gives a clear error instead of a lost reply."""
    with pytest.raises(RemoteError) as info:
        km.execute("(i for i in range(3))")
    assert info.value.ename == "UnpicklableError"
    assert km.execute("3") == 3


def test_engine_exits_when_parent_is_killed(tmp_path: Any) -> None:
    """An engine whose parent was SIGKILLed exits by itself within a few seconds."""
    script = textwrap.dedent(
        """
        import sys, time
        from shoal.engine import KernelManager
        km = KernelManager()
        km.start()
        print(km.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    engine_pid = None
    try:
        assert parent.stdout is not None
        engine_pid = int(parent.stdout.readline())
        assert _alive(engine_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_until(lambda: not _alive(engine_pid), timeout=5.0)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if engine_pid is not None and _alive(engine_pid):
            os.kill(engine_pid, signal.SIGKILL)
        if parent.stdout is not None:
            parent.stdout.close()


def test_requests_before_start_are_refused() -> None:
    """Using a KernelManager that was never started says what to do."""
    with pytest.raises(RuntimeError, match="start"):
        KernelManager().execute("1")


def test_shutdown_leaves_no_process() -> None:
    """The context manager ends the engine process."""
    with KernelManager() as manager:
        pid = manager.pid
        assert pid is not None
        assert _alive(pid)
    assert not _alive(pid)


def test_unknown_control_request_is_answered(km: KernelManager) -> None:
    """An unknown control request gets an error reply naming it and the known ones."""
    header = km._send("control", "frobnicate_request", {})
    reply = km._wait_reply(header.msg_id, 10).content
    assert reply["status"] == "error"
    assert "frobnicate_request" in reply["evalue"]
    assert "interrupt_request" in reply["evalue"]
    assert km.execute("5") == 5


def test_abort_all_queued(km: KernelManager, tmp_path: Path) -> None:
    """abort() drops the queued requests, each answered 'aborted'; the running one ends."""
    gate = tmp_path / "gate"
    code = (
        f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.01)\n'done'"
    )
    running = km.submit("execute_request", {"code": code})
    queued = [
        km.submit("apply_request", {"f": len, "args": ([1],), "kwargs": {}}) for _ in range(3)
    ]
    try:
        wait_until(lambda: km.status()["busy"], timeout=20)  # the first one runs
        km.abort()  # answered once the engine noted it; the running request holds meanwhile
    finally:
        gate.touch()
    assert [km.get_reply(q, timeout=10)["status"] for q in queued] == ["aborted"] * 3
    assert km.get_reply(running, timeout=10)["result"] == "done"
    assert km.apply(len, [1, 2]) == 2  # and it serves on


def test_abort_chosen_ids(km: KernelManager) -> None:
    """abort(msg_ids) drops only those; the blocking call for an aborted one raises."""
    km.submit("execute_request", {"code": "import time; time.sleep(0.5)"})
    keep = km.submit("apply_request", {"f": len, "args": ([1],), "kwargs": {}})
    drop = km.submit("apply_request", {"f": len, "args": ([1, 2],), "kwargs": {}})
    km.abort([drop])
    assert km.get_reply(drop, timeout=10) == {"status": "aborted"}
    assert km.get_reply(keep, timeout=10)["result"] == 1


def test_freed_object_returns_its_memory(km: KernelManager) -> None:
    """An object whose count reaches zero is dropped, and the engine's memory goes down."""
    np = pytest.importorskip("numpy")
    before = km.status()["memory_rss"]
    ref = km.request("store_request", {"obj": np.ones(64 * 1024 * 1024, dtype=np.uint8)})["ref"]
    # A large buffer arrives in shared memory, mapped lazily: reading it maps its pages.
    total = km.request("call_method_request", {"id": ref["id"], "method": "sum"})["result"]
    assert total == 64 * 1024 * 1024
    holding = km.status()["memory_rss"]
    assert holding - before > 48 * 1024 * 1024
    assert km.request("incref_request", {"id": ref["id"]})["refcount"] == 2
    assert km.request("decref_request", {"id": ref["id"]})["refcount"] == 1
    assert km.status()["memory_rss"] - before > 48 * 1024 * 1024  # still held
    assert km.request("decref_request", {"id": ref["id"]})["refcount"] == 0
    after = km.status()["memory_rss"]
    assert holding - after > 48 * 1024 * 1024


def test_rich_output_reaches_on_display(km: KernelManager) -> None:
    """An engine process sends display() and results as mime bundles, before the reply,
    and tells in kernel_info whether IPython runs its code."""
    pytest.importorskip("IPython")
    shown: list[tuple[str, dict[str, Any]]] = []
    km.on_display = lambda kind, content: shown.append((kind, content))
    code = "from IPython.display import HTML, display\ndisplay(HTML('<b>rich</b>'))\n'done'"
    assert km.execute(code) == "done"
    assert [kind for kind, _ in shown] == ["display_data", "execute_result"]
    assert shown[0][1]["data"]["text/html"] == "<b>rich</b>"
    assert km.request("kernel_info_request", {}, 10)["ipython"] is True


def test_input_without_a_front_end_fails_at_once(km: KernelManager) -> None:
    """input() in an engine whose requester allows no stdin raises EOFError, never hangs."""
    with pytest.raises(EOFError, match="no front end"):
        km.execute("input('anyone? ')", timeout=30)
    assert km.execute("1 + 1") == 2
