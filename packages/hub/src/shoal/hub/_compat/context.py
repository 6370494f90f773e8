"""A multiprocess context whose processes run on the cluster's engines.

``mp = client.context()`` (or :func:`get_context`) has the API of
``multiprocess.get_context()``: code written for ``import multiprocess as mp`` runs with
its processes on engines by swapping that one line.

Theory of operation
-------------------
* **A Process is one task on one engine.** ``start()`` pickles the Process object (as
  multiprocess's *spawn* does: a subclass with ``run()`` overridden travels whole, with
  shoal's serializer) and sends ``_bootstrap(process)`` to an engine through a
  DirectView. The engine is one that none of this context's live processes occupies,
  the least loaded by load-balanced tasks (a Pool's, any client's: the hub's
  ``queue_status``, which does not count direct requests). When every engine
  has one, the Process waits (``pid`` is ``None`` meanwhile) and a launcher thread
  starts it when an engine frees. So at most as many Processes run at once as there
  are engines: more wait, they never share an engine.
* **The engine's pid is the Process's pid** (engines are long-lived, so two Processes can
  show the same pid one after the other). ``exitcode`` follows multiprocess: 0 after a
  return, ``n`` after ``sys.exit(n)`` (modulo 256, as the OS would), 1 after an exception,
  whose traceback is printed to the client's stderr under ``Process Name-1:``. What the
  task prints comes back with its reply and is written to the client's stdout/stderr then.
* **terminate()/kill() interrupt the task, never the engine.** The request is dropped if
  it has not started (``abort``), and the engine is asked to raise ``KeyboardInterrupt``
  in it with a targeted ``interrupt_request`` (the task's msg_id: an engine running
  anything else, e.g. another client's task, ignores it), repeated every
  :data:`_INTERRUPT_EVERY` seconds until the task ends. ``exitcode`` is then
  ``-SIGTERM`` / ``-SIGKILL``. Unlike a signal, code that catches ``KeyboardInterrupt``
  (or sits in a C call that ignores it) can delay or refuse its end, and SIGKILL is no
  stronger than SIGTERM here.
* **Shared objects live in one manager server**, a :class:`~shoal.hub.SyncManager` that
  the context starts on first use (``Queue``, locks, ``Value``, ``Array``, ``Pipe``) and
  stops at :meth:`ClusterContext.shutdown` or at exit. Its proxies pickle with their key
  and connect back from any engine. It binds loopback when every engine is on this host,
  else every interface.
* **At exit** (``atexit``), as multiprocess does: daemon processes are terminated,
  non-daemon ones joined, then the manager stops.
* Inside a task, the context arrives as a detached copy: ``current_process()`` (the
  running Process) and ``parent_process()`` (the client) work there; starting processes
  or creating shared objects from a task is refused with a clear error.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import importlib
import itertools
import multiprocessing
import multiprocessing.util
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
import traceback
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias, cast, overload

from shoal.engine import MsgType

from .._client.client import Client, current_client
from .manager_proxies import AcquirerProxy, ConditionProxy, QueueProxy
from .managers import SyncManager

if TYPE_CHECKING:
    from .._client.asyncresult import AsyncResult
    from .managers import BarrierProxy, EventProxy, ListProxy, ValueProxy
    from .pool import Pool as _Pool

__all__ = [
    "AuthenticationError",
    "BufferTooShort",
    "ClusterContext",
    "JoinableQueue",
    "PipeConnection",
    "Process",
    "ProcessError",
    "Queue",
    "SimpleQueue",
    "SynchronizedArray",
    "SynchronizedValue",
    "TimeoutError",
    "get_context",
]


def _errors_module() -> types.ModuleType:
    """multiprocess when installed (its classes are what its users catch), else the stdlib."""
    try:
        return importlib.import_module("multiprocess")
    except ImportError:
        return multiprocessing


_ERRORS: Final = _errors_module()
#: multiprocess's exception classes (the stdlib's when multiprocess is not installed).
TimeoutError: type[Exception] = _ERRORS.TimeoutError
AuthenticationError: type[Exception] = _ERRORS.AuthenticationError
ProcessError: type[Exception] = _ERRORS.ProcessError
BufferTooShort: type[Exception] = _ERRORS.BufferTooShort

#: The start method's name: the only one a ClusterContext has.
START_METHOD: Final = "cluster"
#: Seconds between two interrupt requests for a task being terminated.
_INTERRUPT_EVERY: Final = 0.5
#: Seconds shutdown() waits for terminated processes to end.
_SHUTDOWN_WAIT: Final = 10.0

_counter = itertools.count(1)

# The Process that the task running in this process (an engine) runs, and its parent.
_current_process: Process | None = None
_parent_process: _ParentProcess | None = None


# -- processes ----------------------------------------------------------------------------
class _ParentProcess:
    """The client that started the running task, as ``parent_process()`` shows it."""

    def __init__(self, name: str, pid: int, host: str) -> None:
        self.name = name
        self.pid = pid
        self.ident = pid
        self.host = host
        self.daemon = False
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        """Whether the client still runs (true when it is on another host: not knowable)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, as another user
            return True
        return True

    def __repr__(self) -> str:
        return f"<_ParentProcess name={self.name!r} pid={self.pid} host={self.host!r}>"


class _Run:
    """A started Process's state on the client (never pickled)."""

    __slots__ = (
        "__weakref__",
        "changed",
        "engine",
        "exitcode",
        "fds",
        "lock",
        "pid",
        "result",
        "signal",
        "state",
    )

    def __init__(self) -> None:
        self.state: Literal["waiting", "running", "done"] = "waiting"
        self.engine: int | None = None
        self.pid: int | None = None
        self.result: AsyncResult[tuple[int | None, str]] | None = None
        self.exitcode: int | None = None
        self.signal: int | None = None
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # launched or done
        # The sentinel pipe: [read end, write end], -1 once closed. The write end closes
        # when the task ends; both close when the Run is collected (as multiprocess's
        # Popen closes its sentinel), never twice (a reused fd number is someone else's).
        self.fds = list(os.pipe())
        weakref.finalize(self, _close_fds, self.fds, (0, 1))


def _close_fds(fds: list[int], which: tuple[int, ...]) -> None:
    for i in which:
        fd, fds[i] = fds[i], -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


class Process:
    """multiprocess's ``Process``, run as one task on one engine of the cluster.

    Made through a context: ``mp.Process(target=f, args=(1,))``, or subclass
    ``mp.Process`` and override :meth:`run`. The object is pickled to the engine when
    started, as multiprocess's *spawn* start method does.

    Parameters
    ----------
    group : None
        Must be None (as in multiprocess).
    target : callable, optional
        Called by :meth:`run` with ``args`` and ``kwargs``.
    name : str, optional
        Default ``"<ClassName>-<n>"``.
    args : iterable
        Positional arguments of ``target``.
    kwargs : mapping, optional
        Keyword arguments of ``target``.
    daemon : bool, optional
        Daemon processes are terminated at exit; the others are joined.

    Notes
    -----
    ``pid`` is the engine's pid, ``None`` while the Process waits for a free engine.
    ``terminate()`` and ``kill()`` interrupt the task (``KeyboardInterrupt``), they do not
    signal the engine: see :mod:`shoal.hub._compat.context`.

    Examples
    --------
    >>> mp = client.context()                                  # doctest: +SKIP
    >>> p = mp.Process(target=print, args=("hello",))          # doctest: +SKIP
    >>> p.start(); p.join(); p.exitcode                        # doctest: +SKIP
    hello
    0

    .. versionadded:: 0.6
    """

    #: The context that starts this class's processes (set on each context's subclass).
    _context: ClassVar[ClusterContext | None] = None

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: Iterable[object] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        daemon: bool | None = None,
    ) -> None:
        if group is not None:  # multiprocess's assertion, for code that expects it
            raise AssertionError(f"group argument must be None for now, got {group!r}")
        if target is not None and not callable(target):
            raise TypeError(f"target must be callable or None, got {target!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._identity = (next(_counter),)
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._name = name or f"{type(self).__name__}-{self._identity[0]}"
        self._daemon = bool(daemon)
        self._closed = False
        self._local: _Run | None = None

    # -- pickling: what travels to the engine ---------------------------------------------
    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_local"] = None  # sockets, threads and fds stay on the client
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)

    # -- what runs on the engine --------------------------------------------------------
    def run(self) -> None:
        """What the process does: ``target(*args, **kwargs)``; override it in subclasses."""
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    # -- control, from the client ---------------------------------------------------------
    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("process object is closed")

    def _run_state(self, action: str) -> _Run:
        self._check_closed()
        run = self._local
        if run is None:
            if self.__dict__.get("_started_elsewhere"):
                raise RuntimeError(
                    f"cannot {action} {self._name!r} here: this is the copy of the Process"
                    " inside its task on an engine; use the object in the client that"
                    " started it"
                )
            raise AssertionError(f"can only {action} a started process")
        return run

    def _bound_context(self) -> ClusterContext:
        ctx = type(self)._context
        if ctx is None:
            raise TypeError(
                "Process objects are made through a context: mp = client.context();"
                " mp.Process(target=...) (or subclass mp.Process)"
            )
        return ctx

    def start(self) -> None:
        """Send the process to a free engine, or queue it until one frees.

        Raises
        ------
        AssertionError
            When it was started before (as multiprocess).
        ValueError
            When it was closed.
        RuntimeError
            Inside a task on an engine (processes start from the client only).
        shoal.wire.UnpicklableError
            When the Process (its target, arguments or attributes) cannot be pickled.
        """
        self._check_closed()
        if self._local is not None:
            raise AssertionError("cannot start a process twice")
        if self.__dict__.get("_started_elsewhere"):
            raise RuntimeError("a Process is started from the client, not inside its own task")
        ctx = self._bound_context()
        ctx._start(self)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the process ends, at most ``timeout`` seconds."""
        run = self._run_state("join")
        if timeout is not None and timeout < 0:
            timeout = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with run.lock:
                if run.state == "done":
                    return
                result = run.result
                if result is None:  # waiting for an engine: until launched (or ended)
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    if left == 0:
                        return
                    run.changed.wait(left)
                    continue
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            # Read the reply in this thread: no hand-off from the client's I/O thread.
            if not result.wait(left):
                return
            self._settle()
            return

    def is_alive(self) -> bool:
        """Whether the process was started and has not ended."""
        self._check_closed()
        if self is _current_process:
            return True
        run = self._local
        if run is None:
            return False
        result = run.result
        if result is not None and result.done():
            self._settle()
        return run.state != "done"

    def _signal(self, signum: int) -> None:
        self._check_closed()
        run = self._local
        if run is None:
            return  # not started: nothing to stop (multiprocess fails obscurely here)
        ctx = self._bound_context()
        with run.lock:
            if run.state == "done":
                return
            first = run.signal is None
            run.signal = signum
            result = run.result
        if result is None:
            if ctx._unqueue(self):
                self._settle()
                return
            result = run.result  # launched meanwhile
        if result is not None and first and not result.done():
            ctx._interrupt(run, result)
            thread = threading.Thread(
                target=ctx._keep_interrupting,
                args=(run, result),
                name=f"shoal-terminate-{self._name}",
                daemon=True,
            )
            thread.start()

    def terminate(self) -> None:
        """Stop the task (``KeyboardInterrupt`` in it); ``exitcode`` becomes ``-SIGTERM``."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """As :meth:`terminate`, with ``exitcode`` ``-SIGKILL`` (no stronger: see Notes)."""
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        """Release the process's resources; ``ValueError`` while it still runs."""
        if self._closed:
            return
        run = self._local
        if run is not None:
            if self.is_alive():
                raise ValueError(
                    "Cannot close a process while it is still running. You should first"
                    " call join() or terminate()."
                )
            _close_fds(run.fds, (0,))
            ctx = type(self)._context
            if ctx is not None:
                ctx._forget(self)
        self._closed = True

    def _settle(self) -> None:
        """Book the end of the task (once): exitcode, output, engine freed, sentinel."""
        run = self._local
        if run is None:
            return
        ctx = self._bound_context()
        with run.lock:
            if run.state == "done":
                return
            result = run.result
            if result is not None and not result.done():
                return
            run.exitcode = self._exitcode_of(result, run.signal)
            run.state = "done"
            run.changed.notify_all()
        _close_fds(run.fds, (1,))
        if run.engine is not None:
            ctx._release(run.engine, self)

    def _exitcode_of(
        self, result: AsyncResult[tuple[int | None, str]] | None, signum: int | None
    ) -> int:
        if result is None:  # terminated while it waited for an engine
            return -(signum or signal.SIGTERM)
        with contextlib.suppress(Exception):  # output is a courtesy: never fail here
            out, err = result.stdout, result.stderr
            if isinstance(out, str) and out:
                sys.stdout.write(out)
                sys.stdout.flush()
            if isinstance(err, str) and err:
                sys.stderr.write(err)
                sys.stderr.flush()
        error = result.exception()
        if error is None:
            code, note = result.result()
            if code is not None:
                return code
            if signum is not None:
                return -signum
            sys.stderr.write(note)  # a KeyboardInterrupt nobody here asked for
            return 1
        if signum is not None:
            return -signum
        sys.stderr.write(f"Process {self._name}: its task on engine {self._engine_name()}")
        sys.stderr.write(f" failed: {type(error).__name__}: {error}\n")
        return 1

    def _engine_name(self) -> str:
        run = self._local
        return "?" if run is None or run.engine is None else str(run.engine)

    # -- attributes ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The process's name (not necessarily unique)."""
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        self._name = name

    @property
    def daemon(self) -> bool:
        """Whether the process is terminated (not joined) at exit."""
        return self._daemon

    @daemon.setter
    def daemon(self, daemonic: bool) -> None:
        if self._local is not None:
            raise AssertionError("process has already started")
        self._daemon = bool(daemonic)

    @property
    def pid(self) -> int | None:
        """The pid of the engine that runs it; None before start and while it waits."""
        if self is _current_process:
            return os.getpid()
        run = self._local
        return None if run is None else run.pid

    ident = pid

    @property
    def exitcode(self) -> int | None:
        """None while it runs; then 0, ``sys.exit``'s code, 1 (an exception) or -signal."""
        self._check_closed()
        run = self._local
        if run is None:
            return None
        if run.state != "done" and run.result is not None and run.result.done():
            self._settle()
        return run.exitcode

    @property
    def sentinel(self) -> int:
        """A file descriptor that becomes readable when the process ends (for
        ``multiprocessing.connection.wait``)."""
        self._check_closed()
        run = self._local
        if run is None:
            raise ValueError("process not started")
        return run.fds[0]

    @property
    def engine_id(self) -> int | None:
        """The engine the process runs on (shoal's addition); None until it is placed."""
        run = self._local
        return None if run is None else run.engine

    def __repr__(self) -> str:
        run = self._local
        if self._closed:
            status = "closed"
        elif run is None:
            status = "initial"
        elif run.state == "done":
            status = f"stopped exitcode={run.exitcode}"
        else:
            status = "started" if run.state == "running" else "waiting for an engine"
        daemon = " daemon" if self._daemon else ""
        return f"<{type(self).__name__} name={self._name!r} pid={self.pid} {status}{daemon}>"


_BaseProcess = Process  # the name ClusterContext's annotations use (it has a Process)


def _exit_code(code: object) -> int:
    """``SystemExit.code`` as multiprocess turns it into an exit code."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code % 256  # what the OS would keep of it
    sys.stderr.write(f"{code}\n")
    return 1


def _bootstrap(process: Process, parent: _ParentProcess) -> tuple[int | None, str]:
    """Run ``process`` in this engine: ``(exitcode, "")``, or ``(None, traceback)`` when
    interrupted (the client knows whether it asked for that)."""
    global _current_process, _parent_process  # noqa: PLW0603 - this task's identity
    process.__dict__["_started_elsewhere"] = True
    _current_process, _parent_process = process, parent
    try:
        try:
            process.run()
        except SystemExit as exc:
            return _exit_code(exc.code), ""
        except KeyboardInterrupt:
            return None, f"Process {process.name}:\n{traceback.format_exc()}"
        except BaseException:
            sys.stderr.write(f"Process {process.name}:\n{traceback.format_exc()}")
            return 1, ""
        return 0, ""
    finally:
        _current_process = _parent_process = None
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()


# -- queues ---------------------------------------------------------------------------------
class Queue(QueueProxy):
    """multiprocess's ``Queue``: a ``queue.Queue`` in the context's manager server.

    Usable from the client and from any engine (pass it to a Process). ``get`` and
    ``put`` raise ``queue.Empty`` / ``queue.Full`` as multiprocess's do. ``close``,
    ``join_thread`` and ``cancel_join_thread`` are local: there is no feeder thread.

    .. versionadded:: 0.6
    """

    _closed_here = False

    def _check_open(self) -> None:
        if self._closed_here:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj: object, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj``; ``queue.Full`` when there is no room within ``timeout``."""
        self._check_open()
        super().put(obj, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        """Remove and return an item; ``queue.Empty`` when none came within ``timeout``."""
        self._check_open()
        return super().get(block, timeout)

    def put_nowait(self, obj: object) -> None:
        """``put(obj, False)``."""
        self._check_open()
        super().put_nowait(obj)

    def get_nowait(self) -> object:
        """``get(False)``."""
        self._check_open()
        return super().get_nowait()

    def close(self) -> None:
        """This process puts and gets no more (the queue lives on for the others)."""
        self._closed_here = True

    def join_thread(self) -> None:
        """Nothing to wait for (puts are synchronous); only after :meth:`close`."""
        if not self._closed_here:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """Nothing to cancel: puts are synchronous."""


class JoinableQueue(Queue):
    """multiprocess's ``JoinableQueue``: a :class:`Queue` with ``task_done`` and ``join``.

    .. versionadded:: 0.6
    """


class SimpleQueue(QueueProxy):
    """multiprocess's ``SimpleQueue``: ``put``, ``get``, ``empty`` and ``close``.

    .. versionadded:: 0.6
    """

    _closed_here = False

    def put(self, obj: object, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj`` (never blocks: the queue is unbounded)."""
        if self._closed_here:
            raise OSError("handle is closed")
        super().put(obj, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        """Remove and return an item, waiting for one."""
        if self._closed_here:
            raise OSError("handle is closed")
        return super().get(block, timeout)

    def close(self) -> None:
        """This process uses the queue no more."""
        self._closed_here = True


class _ContextManager(SyncManager):
    """The context's manager: the standard types, and the queue proxies above."""


_Queue = Queue
_JoinableQueue = JoinableQueue
_SimpleQueue = SimpleQueue
_ContextManager.register("Queue", queue.Queue, Queue, create_method=False)
_ContextManager.register("JoinableQueue", queue.Queue, JoinableQueue, create_method=False)
_ContextManager.register(
    "SimpleQueue",
    queue.SimpleQueue,
    SimpleQueue,
    exposed=("empty", "get", "put"),
    create_method=False,
)


# -- Value and Array ------------------------------------------------------------------------
_TYPECODES: Final[dict[str, type[ctypes._SimpleCData[Any]]]] = {
    "c": ctypes.c_char,
    "u": ctypes.c_wchar,
    "b": ctypes.c_byte,
    "B": ctypes.c_ubyte,
    "h": ctypes.c_short,
    "H": ctypes.c_ushort,
    "i": ctypes.c_int,
    "I": ctypes.c_uint,
    "l": ctypes.c_long,
    "L": ctypes.c_ulong,
    "q": ctypes.c_longlong,
    "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float,
    "d": ctypes.c_double,
}
_CType: TypeAlias = "type[ctypes._SimpleCData[Any]]"
_Lock: TypeAlias = AcquirerProxy


def _ctype(typecode_or_type: str | type[object]) -> _CType:
    if isinstance(typecode_or_type, str):
        found = _TYPECODES.get(typecode_or_type)
        if found is None:
            raise TypeError(
                f"typecode_or_type must be one of {''.join(_TYPECODES)} or a simple ctypes"
                f" type, got {typecode_or_type!r}"
            )
        return found
    if isinstance(typecode_or_type, type) and issubclass(typecode_or_type, ctypes._SimpleCData):
        return typecode_or_type
    raise TypeError(
        f"typecode_or_type must be a typecode such as 'i' or a simple ctypes type such as"
        f" ctypes.c_int, got {typecode_or_type!r}"
    )


def _convert(ctype: _CType, value: object) -> object:
    """``value`` as the C type would hold it (wrapped, truncated), or the ctypes error."""
    return ctype(value).value


class _Synchronized:
    """The lock half of :class:`SynchronizedValue` and :class:`SynchronizedArray`."""

    _lock: _Lock | None

    def get_lock(self) -> _Lock:
        """The lock that guards the object (an RLock by default)."""
        if self._lock is None:
            raise AttributeError(
                f"{type(self).__name__} made with lock=False has no lock (multiprocess's"
                " raw objects have no get_lock either)"
            )
        return self._lock

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock."""
        return self.get_lock().acquire(blocking, timeout)

    def release(self) -> None:
        """Release the lock."""
        self.get_lock().release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class SynchronizedValue(_Synchronized):
    """multiprocess's ``Value``: ``.value`` in the manager server, and ``get_lock()``.

    ``v.value += 1`` is a read then a write, as with multiprocess: hold ``get_lock()``
    around it when several processes add.

    .. versionadded:: 0.6
    """

    def __init__(self, ctype: _CType, proxy: ValueProxy[object], lock: _Lock | None) -> None:
        self._ctype = ctype
        self._proxy = proxy
        self._lock = lock

    @property
    def value(self) -> object:
        """The value."""
        return self._proxy.get()

    @value.setter
    def value(self, value: object) -> None:
        self._proxy.set(_convert(self._ctype, value))

    def get_obj(self) -> object:
        """A ctypes object holding the current value (a copy: it is not shared)."""
        return self._ctype(self.value)

    def __repr__(self) -> str:
        return f"<Synchronized wrapper for {self._ctype.__name__}({self.value!r})>"


class SynchronizedArray(_Synchronized):
    """multiprocess's ``Array``: a fixed-size sequence in the manager server.

    Indexing and slicing (slices read as lists), ``len``, iteration and ``get_lock()``.

    .. versionadded:: 0.6
    """

    def __init__(
        self, ctype: _CType, proxy: ListProxy[object], length: int, lock: _Lock | None
    ) -> None:
        self._ctype = ctype
        self._proxy = proxy
        self._length = length
        self._lock = lock

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> object: ...
    @overload
    def __getitem__(self, index: slice) -> list[object]: ...
    def __getitem__(self, index: int | slice) -> object:
        if isinstance(index, slice):
            return list(self._proxy[index])
        if not isinstance(index, int):
            raise TypeError(f"array indices must be integers or slices, not {index!r}")
        if not -self._length <= index < self._length:
            raise IndexError("invalid index")
        return self._proxy[index]

    def __setitem__(self, index: int | slice, value: object) -> None:
        if isinstance(index, slice):
            items = [_convert(self._ctype, v) for v in cast("Iterable[object]", value)]
            if len(items) != len(range(*index.indices(self._length))):
                raise ValueError("Can only assign sequence of same size")
            self._proxy[index] = items
            return
        if not isinstance(index, int):
            raise TypeError(f"array indices must be integers or slices, not {index!r}")
        if not -self._length <= index < self._length:
            raise IndexError("invalid index")
        self._proxy[index] = _convert(self._ctype, value)

    def __iter__(self) -> Iterator[object]:
        return iter(self[:])  # one round trip, not one per item

    def get_obj(self) -> list[object]:
        """The items now, as a list (a copy)."""
        return self[:]

    def __repr__(self) -> str:
        return f"<SynchronizedArray wrapper for {self._ctype.__name__}{self[:]!r}>"


# -- Pipe -----------------------------------------------------------------------------------
class _EOF:
    """What a closed end sends: the peer's ``recv`` raises ``EOFError`` after it."""

    def __reduce__(self) -> str:
        return "_EOF_MARK"


_EOF_MARK: Final = _EOF()


class _Bytes:
    """A ``send_bytes`` payload, told apart from objects sent with ``send``."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[type[_Bytes], tuple[bytes]]:
        return (_Bytes, (self.data,))


class PipeConnection:
    """One end of :meth:`ClusterContext.Pipe`: multiprocess's ``Connection`` API over two
    queues in the context's manager server, so an end works on any engine.

    ``send``/``recv`` objects, ``send_bytes``/``recv_bytes``/``recv_bytes_into`` bytes,
    ``poll``, ``close`` (the peer's ``recv`` then raises ``EOFError``), ``closed``,
    ``readable``, ``writable``. There is no file descriptor (``fileno`` raises).

    .. versionadded:: 0.6
    """

    def __init__(self, inbox: QueueProxy | None, outbox: QueueProxy | None) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False
        self._eof = False
        self._held: list[object] = []  # what poll() took from the inbox
        # Sent to another process and not used here: that copy is the live end, so
        # closing this one must not end the peer's stream (as closing a copy of a
        # multiprocess end does not).
        self._handed_off = False
        self._used = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called on this end."""
        return self._closed

    @property
    def readable(self) -> bool:
        """Whether this end receives."""
        return self._inbox is not None

    @property
    def writable(self) -> bool:
        """Whether this end sends."""
        return self._outbox is not None

    def fileno(self) -> int:
        """Not available: the end is not a file descriptor."""
        raise OSError(
            "a cluster Pipe end has no file descriptor (it is carried by the context's"
            " manager server); use poll(timeout) to wait for it"
        )

    def _out(self) -> QueueProxy:
        if self._closed:
            raise OSError("handle is closed")
        if self._outbox is None:
            raise OSError("connection is read-only")
        self._used = True
        return self._outbox

    def _in(self) -> QueueProxy:
        if self._closed:
            raise OSError("handle is closed")
        if self._inbox is None:
            raise OSError("connection is write-only")
        self._used = True
        return self._inbox

    def send(self, obj: object) -> None:
        """Send an object (shoal's serializer: dill semantics)."""
        self._out().put(obj)

    def send_bytes(
        self, buf: bytes | bytearray | memoryview, offset: int = 0, size: int | None = None
    ) -> None:
        """Send ``buf[offset:offset + size]`` as one message."""
        view = memoryview(buf).cast("B")
        n = len(view)
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        self._out().put(_Bytes(bytes(view[offset : offset + size])))

    def _next(self, timeout: float | None, block: bool = True) -> object:
        inbox = self._in()
        if self._held:
            return self._held.pop(0)
        if self._eof:
            raise EOFError
        item = inbox.get(block, timeout)
        if isinstance(item, _EOF):
            self._eof = True
            raise EOFError  # noqa: TRY004 - the end of file, not a wrong type
        return item

    def recv(self) -> object:
        """Receive an object; ``EOFError`` once the peer closed and all came."""
        item = self._next(None)
        if isinstance(item, _Bytes):
            return pickle.loads(item.data)
        return item

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one message's bytes (``OSError`` when longer than ``maxlength``)."""
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        item = self._next(None)
        data = item.data if isinstance(item, _Bytes) else pickle.dumps(item)
        if maxlength is not None and len(data) > maxlength:
            self.close()
            raise OSError("bad message length")
        return data

    def recv_bytes_into(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Receive one message into ``buf`` at ``offset``; its length.

        ``BufferTooShort`` (its ``args[0]`` the message) when it does not fit.
        """
        view = memoryview(buf).cast("B")
        if offset < 0 or offset > len(view):
            raise ValueError("offset out of bounds")
        item = self._next(None)
        data = item.data if isinstance(item, _Bytes) else pickle.dumps(item)
        if len(data) > len(view) - offset:
            raise BufferTooShort(data)
        view[offset : offset + len(data)] = data
        return len(data)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is something to receive (or the end of file), waiting at most
        ``timeout`` seconds (``None``: until there is)."""
        self._in()
        if self._held or self._eof:
            return True
        try:
            item = self._next(timeout, block=timeout is None or timeout > 0)
        except queue.Empty:
            return False
        except EOFError:
            return True
        self._held.append(item)
        return True

    def close(self) -> None:
        """Close this end; the peer's ``recv`` raises ``EOFError`` after what was sent.

        Closing an end that was passed to another process and not used here signals
        nothing: the other process's copy is the live end.
        """
        if self._closed:
            return
        if self._outbox is not None and (self._used or not self._handed_off):
            with contextlib.suppress(Exception):  # the manager may be gone at exit
                self._outbox.put(_EOF_MARK)
        self._closed = True

    def __enter__(self) -> PipeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, object]:
        if self._closed:
            raise OSError("a closed Pipe end cannot be sent")
        self._handed_off = True
        return {**self.__dict__, "_handed_off": False, "_used": False}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        mode = "rw" if self.readable and self.writable else "r" if self.readable else "w"
        return f"<PipeConnection {mode}{' closed' if self._closed else ''}>"


# -- the context ----------------------------------------------------------------------------
_LAZY_MODULES: Final = {
    "dummy": "shoal.hub._compat.mp_dummy",
    "shared_memory": "shoal.hub._compat.mp_shared_memory",
    "util": "shoal.hub._compat.mp_util",
    "reduction": "shoal.hub._compat.mp_reduction",
}


class ClusterContext:
    """multiprocess's context API (``multiprocess.get_context()``) on a shoal cluster.

    ``Process`` runs as a task on an engine; ``Queue``, ``Lock``, ``Value``, ``Pipe``
    and the other shared objects live in a manager server the context starts on first
    use, so they work on the client and on every engine; ``Pool`` and ``Manager`` are
    shoal's. Get one with ``client.context()`` or :func:`get_context`.

    Parameters
    ----------
    client : Client
        The cluster whose engines run the processes.

    Notes
    -----
    At most as many Processes run at once as there are engines: more wait for a free
    engine (their ``pid`` is ``None`` meanwhile). ``terminate()`` interrupts the task
    rather than signalling a process (see :mod:`shoal.hub._compat.context`). Daemon
    processes are terminated and the others joined at exit, as multiprocess does;
    :meth:`shutdown` does the same at once and stops the manager server.

    Examples
    --------
    >>> mp = client.context()                                   # doctest: +SKIP
    >>> q = mp.Queue()                                          # doctest: +SKIP
    >>> ps = [mp.Process(target=q.put, args=(i,)) for i in range(4)]  # doctest: +SKIP
    >>> for p in ps: p.start()                                  # doctest: +SKIP
    >>> for p in ps: p.join()                                   # doctest: +SKIP
    >>> sorted(q.get() for _ in ps)                             # doctest: +SKIP
    [0, 1, 2, 3]

    .. versionadded:: 0.6
    """

    #: multiprocess's exceptions (the stdlib's when multiprocess is not installed).
    TimeoutError: ClassVar[type[Exception]] = TimeoutError
    AuthenticationError: ClassVar[type[Exception]] = AuthenticationError
    ProcessError: ClassVar[type[Exception]] = ProcessError
    BufferTooShort: ClassVar[type[Exception]] = BufferTooShort

    def __init__(self, client: Client) -> None:
        if not isinstance(client, Client):
            raise TypeError(f"client must be a shoal.hub.Client, got {client!r}")
        self._client: Client | None = client
        self._setup()
        _contexts.add(self)

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # an engine freed, or one queued
        self._manager: _ContextManager | None = None
        self._manager_lock = threading.Lock()
        self._busy: dict[int, _BaseProcess] = {}
        self._waiting: collections.deque[_BaseProcess] = collections.deque()
        self._children: set[_BaseProcess] = set()
        self._launcher: threading.Thread | None = None
        self._pids: dict[int, int] = {}
        self._closing = False
        # A subclass of Process bound to this context: ``mp.Process`` and its subclasses.
        self._process_class: type[_BaseProcess] = type(
            "Process", (Process,), {"_context": self, "__module__": __name__}
        )

    @classmethod
    def _detached(cls) -> ClusterContext:
        """The context as a task on an engine receives it: no client."""
        self = object.__new__(cls)
        self._client = None
        self._setup()
        return self

    def __reduce__(self) -> tuple[Callable[[], ClusterContext], tuple[()]]:
        # Inside a task the context is a detached copy: current_process() and friends.
        return (_engine_context, ())

    def _need_client(self, what: str) -> Client:
        client = self._client
        if client is None:
            raise RuntimeError(
                f"cannot {what} inside a task on an engine: the cluster context does that"
                " on the client. Create it there and pass it to the Process"
            )
        return client

    def __repr__(self) -> str:
        where = "detached (inside a task)" if self._client is None else self._client.url
        return f"<ClusterContext {where}>"

    # -- processes --------------------------------------------------------------------
    @property
    def Process(self) -> type[_BaseProcess]:
        """The Process class of this context (subclass it to override ``run``)."""
        return self._process_class

    def _engine_pid(self, client: Client, engine: int) -> int | None:
        pid = self._pids.get(engine)
        if pid is None:
            info = client._engines.get(engine)  # registration: the hub told its pid
            raw = None if info is None else info.get("pid")
            if isinstance(raw, int) and raw > 0:
                pid = self._pids[engine] = raw
        return pid

    def _loads(self, client: Client) -> dict[int, int]:
        """Each engine's outstanding tasks (any client's), when there is a choice to make:
        a Process should not queue behind a Pool's tasks while another engine idles."""
        if len(client.ids) - len(self._busy) < 2:
            return {}
        try:
            status = client.queue_status()
        except Exception:  # a slow or lost hub: any free engine will do
            return {}
        return {
            e: int(s.get("outstanding", 0))
            for e, s in status.items()
            if isinstance(e, int) and isinstance(s, dict)
        }

    def _free_engine(self, client: Client, loads: Mapping[int, int]) -> int | None:
        """The least loaded engine none of this context's processes occupies (lowest id
        among equals); call with the lock held."""
        free = [engine for engine in client.ids if engine not in self._busy]
        return min(free, key=lambda e: loads.get(e, 0)) if free else None

    def _start(self, process: _BaseProcess) -> None:
        client = self._need_client("start a process")
        if self._closing:
            raise RuntimeError("the context was shut down: it starts no more processes")
        run = _Run()
        loads = self._loads(client)  # a hub round trip: outside the lock
        with self._lock:
            # Reap the ended ones, as multiprocess does at each start.
            self._children = {c for c in self._children if not _ended(c)}
            process._local = run
            self._children.add(process)
            engine = self._free_engine(client, loads)
            if engine is None:
                self._waiting.append(process)
                self._ensure_launcher()
                self._freed.notify_all()
                return
            self._busy[engine] = process
        try:
            self._launch(client, process, engine)
        except BaseException:
            with self._lock:
                self._busy.pop(engine, None)
                self._children.discard(process)
                process._local = None
                self._freed.notify_all()
            _close_fds(run.fds, (0, 1))
            raise

    def _launch(self, client: Client, process: _BaseProcess, engine: int) -> None:
        run = process._local
        assert run is not None  # noqa: S101 - set by _start
        parent = _ParentProcess("MainProcess", os.getpid(), socket.gethostname())
        result: AsyncResult[tuple[int | None, str]] = client[engine].apply_async(
            _bootstrap, process, parent
        )
        with run.lock:
            run.engine = engine
            run.pid = self._engine_pid(client, engine)
            run.result = result
            run.state = "running"
            run.changed.notify_all()
        result.add_done_callback(lambda _: process._settle())

    def _ensure_launcher(self) -> None:
        """Start the thread that places waiting processes (call with the lock held)."""
        if self._launcher is None or not self._launcher.is_alive():
            self._launcher = threading.Thread(
                target=self._place_waiting, name="shoal-context-launcher", daemon=True
            )
            self._launcher.start()

    def _place_waiting(self) -> None:
        client = self._client
        assert client is not None  # noqa: S101 - only started on the client
        while True:
            with self._lock:
                while True:
                    if not self._waiting:
                        self._launcher = None
                        return
                    engine = self._free_engine(client, {})  # one freed: no choice
                    if engine is not None:
                        break
                    self._freed.wait(1.0)  # also notices engines added meanwhile
                process = self._waiting.popleft()
                self._busy[engine] = process
            try:
                self._launch(client, process, engine)
            except Exception as exc:  # e.g. unpicklable: the process fails, others go on
                sys.stderr.write(f"Process {process.name}: could not start: {exc}\n")
                run = process._local
                assert run is not None  # noqa: S101
                with run.lock:
                    run.exitcode, run.state = 1, "done"
                    run.changed.notify_all()
                _close_fds(run.fds, (1,))
                self._release(engine, process)

    def _unqueue(self, process: _BaseProcess) -> bool:
        with self._lock:
            try:
                self._waiting.remove(process)
            except ValueError:
                return False
            return True

    def _release(self, engine: int, process: _BaseProcess) -> None:
        with self._lock:
            if self._busy.get(engine) is process:
                del self._busy[engine]
            self._freed.notify_all()

    def _forget(self, process: _BaseProcess) -> None:
        with self._lock:
            self._children.discard(process)

    def _interrupt(self, run: _Run, result: AsyncResult[tuple[int | None, str]]) -> None:
        """Drop the task if queued, interrupt it if running (its msg_id named)."""
        client = self._client
        engine = run.engine
        if client is None or engine is None or result.done():
            return
        with contextlib.suppress(Exception):  # a lost hub or engine: the task ends anyway
            client.abort(list(result.msg_ids))
            client._control(engine, MsgType.INTERRUPT_REQUEST, {"msg_ids": list(result.msg_ids)})

    def _keep_interrupting(self, run: _Run, result: AsyncResult[tuple[int | None, str]]) -> None:
        """Ask again until the task ended: an interrupt may come before the task runs."""
        while not result.wait(_INTERRUPT_EVERY):
            self._interrupt(run, result)

    def active_children(self) -> list[_BaseProcess]:
        """This context's started processes that have not ended (reaping the others)."""
        with self._lock:
            children = list(self._children)
        alive = []
        for child in children:
            if child._closed or not child.is_alive():
                self._forget(child)
            else:
                alive.append(child)
        return alive

    def current_process(self) -> _BaseProcess | multiprocessing.process.BaseProcess:
        """Inside a task: the Process it runs; elsewhere this process's own (MainProcess)."""
        if _current_process is not None:
            return _current_process
        return multiprocessing.current_process()

    def parent_process(self) -> _ParentProcess | multiprocessing.process.BaseProcess | None:
        """Inside a task: the client that started it; on the client: None."""
        if _parent_process is not None:
            return _parent_process
        return multiprocessing.parent_process()

    # -- shared objects ---------------------------------------------------------------
    def _get_manager(self) -> _ContextManager:
        client = self._need_client("create shared objects")
        with self._manager_lock:
            if self._closing:
                raise RuntimeError("the context was shut down: it makes no more shared objects")
            if self._manager is None:
                hosts = {info.get("hostname") for info in list(client._engines.values())}
                local = hosts <= {client.host, None}
                manager = _ContextManager(("127.0.0.1", 0) if local else ("", 0))
                manager.start()
                self._manager = manager
            return self._manager

    def Queue(self, maxsize: int = 0) -> _Queue:
        """A :class:`Queue` shared by the client and every engine."""
        return cast(_Queue, self._get_manager()._make("Queue", _check_maxsize(maxsize)))

    def JoinableQueue(self, maxsize: int = 0) -> _JoinableQueue:
        """A :class:`JoinableQueue` (``task_done``, ``join``)."""
        return cast(
            _JoinableQueue, self._get_manager()._make("JoinableQueue", _check_maxsize(maxsize))
        )

    def SimpleQueue(self) -> _SimpleQueue:
        """A :class:`SimpleQueue`."""
        return cast(_SimpleQueue, self._get_manager()._make("SimpleQueue"))

    def Lock(self) -> AcquirerProxy:
        """A lock any process may release (as multiprocess's ``Lock``)."""
        return self._get_manager().Lock()

    def RLock(self) -> AcquirerProxy:
        """A reentrant lock."""
        return self._get_manager().RLock()

    def Semaphore(self, value: int = 1) -> AcquirerProxy:
        """A semaphore."""
        if value < 0:
            raise ValueError(f"semaphore initial value must be >= 0, got {value!r}")
        return self._get_manager().Semaphore(value)

    def BoundedSemaphore(self, value: int = 1) -> AcquirerProxy:
        """A bounded semaphore (``ValueError`` on a release too many)."""
        if value < 0:
            raise ValueError(f"semaphore initial value must be >= 0, got {value!r}")
        return self._get_manager().BoundedSemaphore(value)

    def Condition(self, lock: AcquirerProxy | None = None) -> ConditionProxy:
        """A condition variable on ``lock`` (a Lock or RLock of this context; default a new
        RLock)."""
        if lock is not None and not isinstance(lock, AcquirerProxy):
            raise TypeError(
                f"lock must be a Lock or RLock made by this context (mp.Lock()), got {lock!r}"
            )
        return self._get_manager().Condition(lock)

    def Event(self) -> EventProxy:
        """An event."""
        return self._get_manager().Event()

    def Barrier(
        self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
    ) -> BarrierProxy:
        """A barrier for ``parties`` processes (``action`` runs in the manager server)."""
        if not isinstance(parties, int) or parties < 1:
            raise ValueError(f"parties must be an int >= 1, got {parties!r}")
        return self._get_manager().Barrier(parties, action, timeout)

    def _value_lock(self, lock: bool | AcquirerProxy) -> AcquirerProxy | None:
        if lock is True:
            return self.RLock()
        if lock is False:
            return None
        if isinstance(lock, AcquirerProxy):
            return lock
        raise TypeError(f"lock must be True, False or a Lock/RLock of this context, got {lock!r}")

    def Value(
        self, typecode_or_type: str | type[object], *args: object, lock: bool | AcquirerProxy = True
    ) -> SynchronizedValue:
        """A shared value of a C type: ``.value`` and ``get_lock()``.

        ``Value("i")`` is 0; a value the type cannot hold raises the ctypes error
        (``TypeError``), as multiprocess's.
        """
        ctype = _ctype(typecode_or_type)
        if len(args) > 1:
            raise TypeError(f"Value takes one initial value, got {len(args)}: {args!r}")
        value = _convert(ctype, args[0]) if args else ctype().value
        manager = self._get_manager()
        proxy = manager.Value(typecode_or_type, value)
        return SynchronizedValue(ctype, proxy, self._value_lock(lock))

    def RawValue(self, typecode_or_type: str | type[object], *args: object) -> SynchronizedValue:
        """A shared value without a lock (``get_lock()`` raises)."""
        return self.Value(typecode_or_type, *args, lock=False)

    def Array(
        self,
        typecode_or_type: str | type[object],
        size_or_initializer: int | Sequence[object],
        *,
        lock: bool | AcquirerProxy = True,
    ) -> SynchronizedArray:
        """A shared fixed-size array of a C type: indexing, slicing, ``len``, ``get_lock()``.

        ``size_or_initializer``: a length (zeros) or the items.
        """
        ctype = _ctype(typecode_or_type)
        if isinstance(size_or_initializer, int):
            if size_or_initializer < 0:
                raise ValueError(f"size_or_initializer must be >= 0, got {size_or_initializer}")
            items = [ctype().value] * size_or_initializer
        elif isinstance(size_or_initializer, Iterable):
            items = [_convert(ctype, v) for v in size_or_initializer]
        else:
            raise TypeError(
                f"size_or_initializer must be an int or a sequence, got {size_or_initializer!r}"
            )
        proxy = self._get_manager().list(items)
        return SynchronizedArray(ctype, proxy, len(items), self._value_lock(lock))

    def RawArray(
        self, typecode_or_type: str | type[object], size_or_initializer: int | Sequence[object]
    ) -> SynchronizedArray:
        """A shared array without a lock."""
        return self.Array(typecode_or_type, size_or_initializer, lock=False)

    def Pipe(self, duplex: bool = True) -> tuple[PipeConnection, PipeConnection]:
        """Two connected ends; either may be passed to a Process on any engine.

        ``duplex=False``: the first end receives, the second sends.
        """
        manager = self._get_manager()
        a_to_b = cast(QueueProxy, manager._make("Queue"))
        if not duplex:
            return PipeConnection(a_to_b, None), PipeConnection(None, a_to_b)
        b_to_a = cast(QueueProxy, manager._make("Queue"))
        return PipeConnection(b_to_a, a_to_b), PipeConnection(a_to_b, b_to_a)

    # -- shoal's Pool and Manager -----------------------------------------------------
    def Pool(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[object] = (),
        maxtasksperchild: int | None = None,
    ) -> _Pool:
        """A :class:`shoal.hub.Pool` on this context's cluster."""
        from .pool import Pool  # noqa: PLC0415 - the pool module is large

        client = self._need_client("make a Pool")
        return Pool(processes, initializer, initargs, maxtasksperchild, client=client)

    def Manager(self) -> SyncManager:
        """A started :class:`shoal.hub.SyncManager` (``shoal.hub.Manager()``)."""
        from .managers import Manager  # noqa: PLC0415

        self._need_client("start a Manager")
        return Manager()

    # -- the rest of the context API --------------------------------------------------
    def cpu_count(self) -> int:
        """How many engines the cluster has (how many processes run at once)."""
        client = self._need_client("count the engines")
        n = len(client.ids)
        if n == 0:
            raise NotImplementedError("the cluster has no engines now: cannot count them")
        return n

    def get_context(self, method: str | None = None) -> ClusterContext:
        """This context (``method`` None or ``"cluster"``)."""
        if method is None or method == START_METHOD:
            return self
        raise ValueError(
            f"cannot find context for {method!r}: a cluster context has one start method,"
            f" {START_METHOD!r} (use multiprocess.get_context({method!r}) for local processes)"
        )

    def get_start_method(self, allow_none: bool = False) -> str:
        """``"cluster"``."""
        return START_METHOD

    def get_all_start_methods(self) -> list[str]:
        """``["cluster"]``."""
        return [START_METHOD]

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """Accept ``"cluster"`` (or None with ``force``); refuse any other method."""
        if method == START_METHOD or (method is None and force):
            return
        raise ValueError(
            f"cannot set start method {method!r}: a cluster context always uses"
            f" {START_METHOD!r}; use multiprocess.get_context({method!r}) for local processes"
        )

    def freeze_support(self) -> None:
        """Nothing to do: engines are not frozen executables spawned by this program."""

    def allow_connection_pickling(self) -> None:
        """Nothing to do: Pipe ends and proxies always pickle."""

    def get_logger(self) -> object:
        """multiprocess's logger (``multiprocess.get_logger()``), as ``util`` has it."""
        return self.util.get_logger()

    def log_to_stderr(self, level: int | str | None = None) -> object:
        """multiprocess's logger, writing to stderr, as ``util`` has it."""
        return self.util.log_to_stderr(level)

    @property
    def dummy(self) -> types.ModuleType:
        """multiprocess.dummy's API on threads of this process."""
        return importlib.import_module(_LAZY_MODULES["dummy"])

    @property
    def ThreadPool(self) -> type:
        """A thread pool (``multiprocess.pool.ThreadPool``) in this process."""
        return cast(type, self.dummy.ThreadPool)

    @property
    def shared_memory(self) -> types.ModuleType:
        """``multiprocess.shared_memory``'s API for this host and its engines."""
        return importlib.import_module(_LAZY_MODULES["shared_memory"])

    @property
    def util(self) -> types.ModuleType:
        """``multiprocess.util``'s API."""
        return importlib.import_module(_LAZY_MODULES["util"])

    @property
    def reduction(self) -> types.ModuleType:
        """``multiprocess.reduction``'s API (reducers registered on client and engines,
        this context's client among them)."""
        module = importlib.import_module(_LAZY_MODULES["reduction"])
        if self._client is not None:  # inside a task: registers on that engine only
            module.attach(self._client)
        return module

    # -- ending ---------------------------------------------------------------------
    def shutdown(self, join: bool = False, timeout: float = _SHUTDOWN_WAIT) -> None:
        """Stop: terminate the running processes (or join them, with ``join``; daemon
        ones are terminated either way), wait for them, stop the manager server.

        shoal's addition, run at exit with ``join=True`` as multiprocess does there.
        """
        with self._lock:
            self._closing = True
            children = list(self._children)
        for child in children:
            if child._closed:
                continue
            if child.daemon or not join:
                child.terminate()
        deadline = time.monotonic() + timeout
        for child in children:
            if child._closed or child._local is None:
                continue
            child.join(None if join and not child.daemon else max(0.0, deadline - time.monotonic()))
        with self._manager_lock:
            manager, self._manager = self._manager, None
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.shutdown()


def _ended(process: Process) -> bool:
    run = process._local
    return process._closed or run is None or run.state == "done"


def _check_maxsize(maxsize: int) -> int:
    if not isinstance(maxsize, int) or isinstance(maxsize, bool):
        raise TypeError(f"maxsize must be an int, got {maxsize!r}")
    return maxsize


_engine_ctx: ClusterContext | None = None


def _engine_context() -> ClusterContext:
    """The detached context tasks receive (one per engine process)."""
    global _engine_ctx  # noqa: PLW0603 - one per process
    if _engine_ctx is None:
        _engine_ctx = ClusterContext._detached()
    return _engine_ctx


_contexts: weakref.WeakSet[ClusterContext] = weakref.WeakSet()
_by_client: weakref.WeakValueDictionary[int, ClusterContext] = weakref.WeakValueDictionary()
_by_client_lock = threading.Lock()


def get_context(client: Client | None = None) -> ClusterContext:
    """The multiprocess context of ``client``'s cluster (``client.context()``).

    Parameters
    ----------
    client : Client, optional
        Default: the current client (:func:`shoal.hub.current_client`).

    Returns
    -------
    ClusterContext
        The same object for the same client while it is in use.

    Examples
    --------
    >>> import shoal.hub
    >>> mp = shoal.hub.get_context()                            # doctest: +SKIP
    >>> with mp.Pool() as pool:                                 # doctest: +SKIP
    ...     pool.map(abs, [-1, 2])
    [1, 2]

    .. versionadded:: 0.6
    """
    if client is None:
        client = current_client()
    elif not isinstance(client, Client):
        raise TypeError(f"client must be a shoal.hub.Client or None, got {client!r}")
    with _by_client_lock:
        ctx = _by_client.get(id(client))
        if ctx is None or ctx._client is not client or ctx._closing:
            ctx = ClusterContext(client)
            _by_client[id(client)] = ctx
        return ctx


def _at_exit() -> None:
    """As multiprocess at exit: daemon processes terminated, the others joined."""
    for ctx in list(_contexts):
        with contextlib.suppress(Exception):
            ctx.shutdown(join=True)


# Registered after the client module's atexit hook, so it runs before clients close.
atexit.register(_at_exit)
