"""Cancellation that stops work: ``AsyncResult.cancel()``/``abort()`` drop queued tasks
and interrupt running ones on their engines (only those: never another client's), and a
Ctrl-C in a blocking wait stops the tasks it waited for. On a real cluster; Ctrl-C is a
real SIGINT sent to a client in a process of its own."""

from __future__ import annotations

import concurrent.futures
import functools
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.hub import AsyncResult, Client, LoadBalancedView, RemoteError
from shoal.hub.testing import RunningCluster, wait_until

pytestmark = pytest.mark.timeout(120)

#: A stopped engine must serve again within 1 s; asserted with room for a loaded machine.
SERVES_AGAIN = 5.0


def _spin(path: str) -> None:
    """Runs on an engine: say it started, then spin for ever (pure bytecode)."""
    open(path, "w").close()
    while True:
        pass


def _sleep(path: str) -> None:
    """Runs on an engine: say it started, then sleep a minute (in C)."""
    import time  # runs on the engine

    open(path, "w").close()
    time.sleep(60)


def _held(gate: str, value: int) -> int:
    """Runs on an engine: wait until ``gate`` exists, then return ``value``."""
    import os  # runs on the engine
    import time

    while not os.path.exists(gate):
        time.sleep(0.01)
    return value


def _mark(path: str) -> str:
    """Runs on an engine: leave a trace that it ran."""
    open(path, "w").close()
    return path


def _serves_again(client: Client, engine: int) -> float:
    """Seconds until ``engine`` answers a new task (a deadline, no fixed sleep)."""
    start = time.monotonic()
    assert client[engine].apply_async(int, "7").get(SERVES_AGAIN * 4) == 7
    return time.monotonic() - start


Submit = Callable[[Client, Callable[..., Any], str], AsyncResult[Any]]


def _direct(client: Client, f: Callable[..., Any], arg: str) -> AsyncResult[Any]:
    return client[0].apply_async(f, arg)


def _placed(client: Client, f: Callable[..., Any], arg: str) -> AsyncResult[Any]:
    """Load balanced, placed on the engine by the client itself (hub passed by)."""
    return client.load_balanced_view(targets=[0]).apply_async(f, arg)


def _scheduled(client: Client, f: Callable[..., Any], arg: str) -> AsyncResult[Any]:
    """Load balanced through the hub's scheduler (retries make it the hub's): the
    client does not know the engine, and an interrupted try is retried by the hub."""
    lb: LoadBalancedView = client.load_balanced_view(targets=[0])
    lb.set_flags(retries=1)
    return lb.apply_async(f, arg)


WAYS: dict[str, Submit] = {"direct": _direct, "placed": _placed, "scheduled": _scheduled}


@pytest.fixture(params=sorted(WAYS))
def submit(request: pytest.FixtureRequest) -> Submit:
    """Each way a task reaches an engine."""
    return WAYS[request.param]


@pytest.mark.parametrize("task", [_spin, _sleep], ids=["while_true", "sleep_60"])
def test_cancel_of_a_running_task_stops_it_and_frees_the_engine(
    client: Client, tmp_path: Path, submit: Submit, task: Callable[[str], None]
) -> None:
    """cancel() of a running `while True` or `time.sleep(60)` returns True, the future is
    cancelled, and the engine answers the next task at once."""
    started = tmp_path / "started"
    ar = submit(client, task, str(started))
    wait_until(started.exists, timeout=30)
    begun = time.monotonic()
    assert ar.cancel() is True
    took = time.monotonic() - begun
    assert ar.cancelled()
    assert ar.done()
    with pytest.raises(concurrent.futures.CancelledError):
        ar.get(1)
    serves = _serves_again(client, 0)
    print(f"cancel took {took:.3f} s; engine 0 served again {serves:.3f} s later")
    assert took + serves < SERVES_AGAIN
    assert ar.cancel() is True  # again: still cancelled


def test_cancel_of_a_finished_task_returns_false(client: Client) -> None:
    """A finished task cannot be cancelled: False, and its result stays."""
    ar = client[0].apply_async(int, "3")
    assert ar.get(30) == 3
    assert ar.cancel() is False
    assert not ar.cancelled()
    assert ar.get(1) == 3
    assert ar.abort() is False  # nothing left to stop: it finished


def test_cancel_of_queued_tasks_returns_true_and_they_never_run(
    client: Client, tmp_path: Path, submit: Submit
) -> None:
    """Tasks queued behind a running one (on the engine, in the client or in the hub)
    are cancelled at once, never run, and the running one is not touched."""
    gate = tmp_path / "gate"
    marks = [tmp_path / f"mark{i}" for i in range(3)]
    try:
        blocker = submit(client, functools.partial(_held, value=5), str(gate))
        queued = [submit(client, _mark, str(m)) for m in marks]
        wait_until(lambda: client[0].status()["busy"], timeout=30)
        begun = time.monotonic()
        assert queued[0].cancel() is True
        assert queued[2].cancel() is True
        took = time.monotonic() - begun
        assert queued[0].cancelled()
        assert queued[2].cancelled()
        assert not blocker.done()
    finally:
        gate.touch()
    assert blocker.get(30) == 5  # not interrupted
    assert queued[1].get(30) == str(marks[1])  # not cancelled: it runs
    _serves_again(client, 0)
    assert not marks[0].exists()
    assert not marks[2].exists()
    assert took < SERVES_AGAIN  # not waiting for the blocker
    print(f"two cancels of queued tasks took {took:.3f} s")


def test_abort_interrupts_a_running_task_and_resolves_with_its_error(
    client: Client, tmp_path: Path
) -> None:
    """abort() stops a running task too: True, and the future fails with the remote
    KeyboardInterrupt rather than being cancelled."""
    started = tmp_path / "started"
    ar = client[1].apply_async(_spin, str(started))
    wait_until(started.exists, timeout=30)
    assert ar.abort() is True
    with pytest.raises(RemoteError) as info:
        ar.get(SERVES_AGAIN)
    assert info.value.ename == "KeyboardInterrupt"
    assert not ar.cancelled()
    _serves_again(client, 1)


def _stubborn(gate: str, started: str) -> str:
    """Runs on an engine: swallow every KeyboardInterrupt until ``gate`` exists."""
    import os  # runs on the engine
    import time

    open(started, "w").close()
    while True:
        try:
            while not os.path.exists(gate):
                time.sleep(0.01)
        except KeyboardInterrupt:
            continue  # wherever it landed: on with the loop
        return "done"


def test_cancel_of_a_task_that_ignores_the_interrupt_returns_false(
    client: Client, tmp_path: Path
) -> None:
    """A task that swallows KeyboardInterrupt is not stopped: cancel() says False after
    its bounded wait, and the future resolves as usual once the task ends."""
    gate, started = tmp_path / "gate", tmp_path / "started"
    ar = client[1].apply_async(_stubborn, str(gate), str(started))
    try:
        wait_until(started.exists, timeout=30)
        begun = time.monotonic()
        assert ar.cancel() is False
        assert time.monotonic() - begun < 30  # bounded (a few seconds)
        assert not ar.cancelled()
    finally:
        gate.touch()
    assert ar.get(30) == "done"


def test_cancel_of_a_task_on_every_engine(client: Client, tmp_path: Path) -> None:
    """One result with a running task on each engine: all are stopped, all engines serve."""
    ar = client[:].apply_async(_spin, str(tmp_path / "started"))
    wait_until(lambda: all(s["busy"] for s in client[:].status()), timeout=30)
    assert ar.cancel() is True
    assert client[:].apply_sync(int, "1") == [1, 1]


@pytest.mark.parametrize("way", ["direct", "scheduled"])
def test_another_clients_task_is_not_hit(cluster: RunningCluster, tmp_path: Path, way: str) -> None:
    """Cancelling our tasks never interrupts another client's task on the same engine
    (queued behind it), nor on the engines a hub-scheduled task might have been on."""
    gate = tmp_path / "gate"
    started = tmp_path / "started"
    with Client(url_file=cluster.url_file) as other, Client(url_file=cluster.url_file) as ours:
        try:
            theirs = [other[e].apply_async(_held, str(gate), e) for e in (0, 1)]
            wait_until(lambda: all(s["busy"] for s in ours[:].status()), timeout=30)
            queued = WAYS[way](ours, _mark, str(tmp_path / "mark"))
            assert queued.cancel() is True
            # A task of ours running beside theirs: our cancel goes to every engine when
            # the hub placed it, and must spare theirs.
            lb = ours.load_balanced_view(targets=[1])
            lb.set_flags(retries=1)
            running = lb.apply_async(_spin, str(started))
            assert not running.done()
            assert running.cancel() is True  # queued behind theirs: it never started
            assert not any(t.done() for t in theirs)
        finally:
            gate.touch()
        assert [t.get(30) for t in theirs] == [0, 1]
        assert not started.exists()
        assert not (tmp_path / "mark").exists()
        _serves_again(ours, 0)


# -- Ctrl-C ---------------------------------------------------------------------------------
_CLIENT = textwrap.dedent(
    """
    import faulthandler, os, signal, sys, threading, time
    from shoal.hub import Client

    signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest's may ignore it
    faulthandler.dump_traceback_later(45, exit=True)  # a hang says where it hangs

    def spin(path):
        open(path + "." + str(__import__("os").getpid()), "w").close()
        while True:
            pass

    def say_when_waiting(path, main=threading.main_thread().ident):
        # The test's SIGINT must come during the wait, not while the tasks are sent.
        while True:
            frame = sys._current_frames().get(main)
            while frame is not None:
                code = frame.f_code
                if code.co_name == "wait" and code.co_filename.endswith("transport.py"):
                    open(path, "w").close()
                    return
                frame = frame.f_back
            time.sleep(0.005)

    url_file, how, started = sys.argv[1:]
    rc = Client(url_file=url_file)
    if how == "wait":
        rc[0].apply_async(time.sleep, 0.01).get()  # warm
    waiting = os.path.join(os.path.dirname(started), "waiting")
    threading.Thread(target=say_when_waiting, args=(waiting,), daemon=True).start()
    try:
        if how == "apply_sync":
            rc[0].apply_sync(spin, started)
        elif how == "map_sync":
            rc.load_balanced_view().map_sync(spin, [started] * 2, chunksize=1)
        elif how == "imap":
            for _ in rc.load_balanced_view().imap(spin, [started] * 2):
                pass
        else:
            rc[:].apply_async(spin, started).wait()
    except KeyboardInterrupt:
        print("KeyboardInterrupt raised", flush=True)
        rc.close()
        sys.exit(3)
    """
)


@pytest.fixture
def ctrl_c_client(
    cluster: RunningCluster, tmp_path: Path
) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Start a client script in a process of its own; ended when the test ends."""
    procs: list[subprocess.Popen[str]] = []
    script = tmp_path / "client.py"
    script.write_text(_CLIENT)

    def start(how: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), cluster.url_file, how, str(tmp_path / "started")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


@pytest.mark.parametrize(
    "case",
    [
        ("apply_sync", 1, "stopped the task this wait was for (1 interrupted"),
        ("map_sync", 2, "stopped the 2 tasks this wait was for (2 interrupted"),
        ("wait", 2, "stopped the 2 tasks this wait was for (2 interrupted"),
        ("imap", 2, "stopped the task this wait was for (1 interrupted"),
    ],
    ids=["apply_sync", "map_sync", "wait", "imap"],
)
def test_ctrl_c_in_a_blocking_wait_stops_the_tasks_it_waited_for(
    client: Client,
    tmp_path: Path,
    ctrl_c_client: Callable[[str], subprocess.Popen[str]],
    case: tuple[str, int, str],
) -> None:
    """SIGINT to a client blocked in apply_sync/map_sync/wait: KeyboardInterrupt is
    raised there, the engines are freed at once, and one line says what was stopped."""
    how, tasks, said = case
    proc = ctrl_c_client(how)
    wait_until(
        lambda: (
            (
                len(list(tmp_path.glob("started.[0-9]*"))) == tasks
                and (tmp_path / "waiting").exists()
            )
            or proc.poll() is not None
        ),
        timeout=60,
    )
    assert proc.poll() is None, proc.communicate()
    begun = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    left = time.monotonic() - begun
    assert proc.returncode == 3, (out, err)
    assert "KeyboardInterrupt raised" in out
    lines = [line for line in err.splitlines() if "Ctrl-C" in line]
    if how == "imap":  # and the chunk it had submitted ahead, on a line of its own
        assert lines[1:] == ["Ctrl-C: stopped the 1 chunk(s) imap had submitted ahead"], err
        del lines[1:]
    assert len(lines) == 1, err
    assert said in lines[0], err
    assert "view.interrupt()" in lines[0]
    serves = max(_serves_again(client, e) for e in (0, 1))
    print(f"Ctrl-C: client left after {left:.3f} s; engines served again {serves:.3f} s later")
    assert left + serves < SERVES_AGAIN
