"""``multiprocess.util`` for the cluster context: logging, finalizers, exit and fork hooks.

Theory of operation
-------------------
Everything here acts in the process that calls it: the client, or an engine when a task
calls it there. A cluster's engines are separate, long-lived processes, started by a hub
(not forked from the client), so nothing set up on the client reaches them by itself: to
log on the engines, run ``log_to_stderr`` there (``client[:].apply_sync(log_to_stderr,
logging.INFO)``); their stderr reaches the client with each task's output.

What differs from multiprocess, and why:

* :func:`get_logger` returns the logger named ``"multiprocess"``, like multiprocess's (the
  same object when multiprocess is imported too), without needing multiprocess; once it
  was called, the exit of the process is logged as multiprocess logs it.
* :func:`log_to_stderr` adds its stderr handler once per process (multiprocess adds one
  more at each call, and each record is then printed that many times).
* :class:`Finalize`, :func:`is_exiting`, :func:`get_temp_dir`,
  :class:`ForkAwareThreadLock` and :class:`ForkAwareLocal` are the standard library's
  (``multiprocessing.util``): they behave right in any process, engines included (a
  ``Finalize`` with an ``exitpriority`` made in a task runs when that engine exits).
* :func:`register_after_fork` registers with the standard library, so ``func(obj)`` runs
  in children that ``multiprocessing`` forks from *this* process. It never runs on the
  engines, and need not: after-fork hooks repair what a fork copied as it was (a lock
  held at the fork, a socket shared with the parent), and an engine gets nothing copied
  by a fork. It gets objects by pickling, which builds them anew there.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util as _std
import sys
import threading
from typing import Final, TypeVar

__all__ = [
    "DEBUG",
    "DEFAULT_LOGGING_FORMAT",
    "INFO",
    "LOGGER_NAME",
    "NOTSET",
    "SUBDEBUG",
    "SUBWARNING",
    "Finalize",
    "ForkAwareLocal",
    "ForkAwareThreadLock",
    "debug",
    "get_logger",
    "get_temp_dir",
    "info",
    "is_exiting",
    "log_to_stderr",
    "register_after_fork",
    "sub_debug",
    "sub_warning",
]

NOTSET: Final = 0
SUBDEBUG: Final = 5
DEBUG: Final = 10
INFO: Final = 20
SUBWARNING: Final = 25

LOGGER_NAME: Final = "multiprocess"
DEFAULT_LOGGING_FORMAT: Final = "[%(levelname)s/%(processName)s] %(message)s"

Finalize = _std.Finalize
is_exiting = _std.is_exiting
get_temp_dir = _std.get_temp_dir
ForkAwareThreadLock = _std.ForkAwareThreadLock
ForkAwareLocal = _std.ForkAwareLocal

_T = TypeVar("_T")

_lock = threading.Lock()
_logger: logging.Logger | None = None  # set by get_logger: until then, debug() etc. say nothing
_stderr_handler: logging.Handler | None = None


def get_logger() -> logging.Logger:
    """The ``"multiprocess"`` logger (not propagating to the root), as multiprocess's."""
    global _logger  # noqa: PLW0603 - one logger per process, as multiprocess keeps it
    with _lock:
        if _logger is None:
            logger = logging.getLogger(LOGGER_NAME)
            logger.propagate = False
            _logger = logger
            # Registered after logging's own hook, so it runs before logging shuts down.
            atexit.register(_exit_function)
        return _logger


def _exit_function() -> None:
    """What multiprocess does at exit, said as it says it: the finalizers with an
    ``exitpriority`` run (the standard library's, which would run them a moment later)."""
    info("process shutting down")
    debug('running all "atexit" finalizers with priority >= 0')
    _std._run_finalizers(0)  # type: ignore[attr-defined]
    debug('running the remaining "atexit" finalizers')
    _std._run_finalizers()  # type: ignore[attr-defined]


def log_to_stderr(level: int | str | None = None) -> logging.Logger:
    """Log the ``"multiprocess"`` logger's records to this process's stderr; set its
    ``level`` if given. Called again, it adds no second handler."""
    global _stderr_handler  # noqa: PLW0603 - one handler per process
    logger = get_logger()
    with _lock:
        if _stderr_handler is None:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(DEFAULT_LOGGING_FORMAT))
            logger.addHandler(handler)
            _stderr_handler = handler
    if level is not None:
        if not isinstance(level, int | str):
            raise TypeError(f"level must be an int, a level name or None, got {level!r}")
        logger.setLevel(level)
    return logger


def _log(level: int, msg: object, *args: object) -> None:
    if _logger is not None:
        _logger.log(level, msg, *args, stacklevel=3)


def sub_debug(msg: object, *args: object) -> None:
    """Log at ``SUBDEBUG`` (5), once :func:`get_logger` was called."""
    _log(SUBDEBUG, msg, *args)


def debug(msg: object, *args: object) -> None:
    """Log at ``DEBUG``, once :func:`get_logger` was called."""
    _log(DEBUG, msg, *args)


def info(msg: object, *args: object) -> None:
    """Log at ``INFO``, once :func:`get_logger` was called."""
    _log(INFO, msg, *args)


def sub_warning(msg: object, *args: object) -> None:
    """Log at ``SUBWARNING`` (25), once :func:`get_logger` was called."""
    _log(SUBWARNING, msg, *args)


def register_after_fork(obj: _T, func: object) -> None:
    """Call ``func(obj)`` in each child that ``multiprocessing`` forks from this process.

    Never on the cluster's engines: they are not forked from this process, and receive
    objects by pickling, which rebuilds them (see the module docstring). ``obj`` is held
    weakly, as in multiprocess.
    """
    if not callable(func):
        raise TypeError(f"func must be callable, got {func!r}")
    _std.register_after_fork(obj, func)
