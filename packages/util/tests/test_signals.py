"""signal_children, with real parent and child processes."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from shoal.util import signal_children

SocketFactory = Callable[[int], zmq.Socket[Any]]
TIMEOUT_S = 30

# Run as "parent URL": starts children of every kind, calls signal_children, and waits
# for a signal. Run as "child URL": waits for SIGINT/SIGTERM and reports it. Every
# process reports over a zmq PUSH to the test's PULL socket at URL.
PARENT_SCRIPT = """
import multiprocessing
import os
import signal
import subprocess
import sys

import zmq


def report(url, text):
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(url)
    push.send_string(text)
    push.close(linger=10_000)
    ctx.term()


def child(url):
    def on_signal(signum, frame):
        report(url, f"got {os.getpid()} {signum}")
        os._exit(0)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    report(url, f"ready {os.getpid()}")
    while True:
        signal.pause()


def parent(url):
    from shoal.util import signal_children

    cmd = [sys.executable, __file__, "child", url]
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    popen = subprocess.Popen(cmd)
    proc = multiprocessing.get_context("fork").Process(target=child, args=(url,))
    proc.start()
    by_pid = subprocess.Popen(cmd)
    children = [done, popen, proc, by_pid.pid]
    signal_children(children)
    children.append(subprocess.Popen(cmd))  # added after the handlers were installed
    report(url, f"parent {os.getpid()}")
    while True:
        signal.pause()


if __name__ == "__main__":
    role, url = sys.argv[1:3]
    if role == "child":
        child(url)
    else:
        parent(url)
"""
N_CHILDREN = 4


def _recv_words(pull: zmq.Socket[Any]) -> list[str]:
    if not pull.poll(TIMEOUT_S * 1000, zmq.POLLIN):
        pytest.fail(f"no report within {TIMEOUT_S} s")
    text: str = pull.recv_string()
    return text.split()


def _wait_exited(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` (not our child) ends within ``timeout_s``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True  # already gone and reaped
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # readable once the process has exited
        return bool(poller.poll(int(timeout_s * 1000)))
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs os.pidfd_open (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_children_relays_to_real_children(
    tmp_path: Path, make_socket: SocketFactory, signum: int
) -> None:
    """A parent that gets the signal passes it to each running child, then exits 128+signum."""
    pull = make_socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    url = f"tcp://127.0.0.1:{port}"
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), "parent", url])
    children: set[int] = set()
    gone: set[int] = set()
    try:
        parent_ready = False
        while not parent_ready or len(children) < N_CHILDREN:
            words = _recv_words(pull)
            if words[0] == "parent":
                assert int(words[1]) == parent.pid
                parent_ready = True
            else:
                assert words[0] == "ready"
                children.add(int(words[1]))

        parent.send_signal(signum)
        assert parent.wait(timeout=TIMEOUT_S) == 128 + signum

        got: dict[int, int] = {}
        while len(got) < N_CHILDREN:
            kind, child_pid, child_sig = _recv_words(pull)
            assert kind == "got"
            got[int(child_pid)] = int(child_sig)
        assert got == dict.fromkeys(children, int(signum))
        for pid in children:
            assert _wait_exited(pid, TIMEOUT_S), f"child {pid} still runs"
            gone.add(pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=TIMEOUT_S)
        for pid in children - gone:  # only the processes our parent script started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("bad", [object(), "1234", True, 1.5])
def test_signal_children_rejects_other_types(bad: object) -> None:
    """A child that is no process or pid raises TypeError before any handler is installed."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(TypeError, match=r"children must be subprocess\.Popen"):
        signal_children([bad])  # type: ignore[list-item]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
