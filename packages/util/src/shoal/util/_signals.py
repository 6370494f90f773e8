"""Relay SIGINT/SIGTERM to child processes, so that stopping a launcher stops its children."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.process
import os
import signal
import subprocess
import sys
from collections.abc import Collection, Iterable
from types import FrameType
from typing import TypeAlias

__all__ = ["signal_children"]

_log = logging.getLogger("shoal.util")

#: What `signal_children` accepts as a child.
Child: TypeAlias = (
    "subprocess.Popen[bytes] | subprocess.Popen[str] | multiprocessing.process.BaseProcess | int"
)

#: The signals relayed. SIGABRT (which IPython also caught) is left alone: a Python
#: handler never runs for a C-level abort(), and it should dump core anyway.
RELAYED = (signal.SIGINT, signal.SIGTERM)


def _check(child: object) -> None:
    if isinstance(child, bool) or not isinstance(
        child, subprocess.Popen | multiprocessing.process.BaseProcess | int
    ):
        raise TypeError(
            "children must be subprocess.Popen, multiprocessing.Process or int pids,"
            f" got {type(child).__name__}: {child!r}"
        )


def _send(child: Child, signum: int) -> None:
    if isinstance(child, subprocess.Popen):
        child.send_signal(signum)  # does nothing once the child was reaped
        return
    if isinstance(child, multiprocessing.process.BaseProcess):
        if child.pid is None or child.exitcode is not None:
            return  # not started, or already gone
        pid = child.pid
    else:
        pid = child
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        os.kill(pid, signum)


def _relay(child: Child, signum: int) -> None:
    try:
        _check(child)  # the list may have grown with anything since
        _send(child, signum)
    except Exception:
        # One bad child must not keep the signal from the others.
        _log.exception("could not relay signal %i to %r", signum, child)


def signal_children(children: Iterable[Child]) -> None:
    """On SIGINT or SIGTERM, send the same signal to ``children``, then exit.

    Installs a handler for both signals in this process. The handler sends the
    signal it got to each child that is still running, and exits with status
    ``128 + signum`` (what a shell reports for a process killed by that signal).

    Parameters
    ----------
    children : iterable of subprocess.Popen, multiprocessing.Process or int
        The children, or their pids. It is iterated when the signal arrives, so a list
        that the caller appends to later covers the later children too.

    Raises
    ------
    TypeError
        When an item of ``children`` (as it is now) is of another type.
    ValueError
        When called from a thread other than the main thread (Python's rule for
        signal handlers).

    Examples
    --------
    >>> procs = [subprocess.Popen([sys.executable, "-m", "shoal.engine"])]  # doctest: +SKIP
    >>> signal_children(procs)  # doctest: +SKIP

    .. versionadded:: 0.1
    """
    # Check what is there now; a one-shot iterator is left for the handler to read.
    for child in children if isinstance(children, Collection) else ():
        _check(child)

    def relay(signum: int, frame: FrameType | None) -> None:
        _log.critical("Got signal %i, relaying it to the children and exiting", signum)
        for child in children:
            _relay(child, signum)
        sys.exit(128 + signum)

    for signum in RELAYED:
        signal.signal(signum, relay)
