"""The errors of the engine layer.

Theory of operation
-------------------
:class:`EngineError` is the base of every error the engine layer raises and is never
raised itself. Errors are split by where the fault happened:

* :class:`RemoteError` -- the user's code raised on the engine. It is pure data: the
  remote type name, message, formatted traceback text, engine id and task id, so it
  travels and prints even when the original exception cannot be pickled.
* :meth:`RemoteError.from_reply` keeps the remote exception's type: when the exception
  reached this process (or its type is a builtin one), the error raised here is an
  instance of a class made once per type that derives from *both* that type and
  :class:`RemoteError` (as Ray's task errors do). ``except ValueError`` and ``except
  RemoteError`` both catch it, ``str()`` and ``args`` are the original's, and its
  ``__cause__`` is a :class:`RemoteTraceback` whose text is the remote traceback, so an
  uncaught error prints where it really happened (as ``multiprocessing.pool`` does).
  Only ``Exception`` types get one: a remote ``KeyboardInterrupt`` or ``SystemExit``
  stays a plain :class:`RemoteError`, so it cannot stop the calling process.
* :class:`EngineDiedError` -- the engine process ended (segfault, ``os._exit``, out of
  memory, killed); the message states the exit code or signal.
* :class:`NoSuchObjectError` -- a request named an object id the engine does not hold.
"""

from __future__ import annotations

import builtins
import threading
import weakref
from collections.abc import Mapping
from typing import Any, cast

__all__ = ["EngineDiedError", "EngineError", "NoSuchObjectError", "RemoteError", "RemoteTraceback"]


class EngineError(Exception):
    """Base of every error raised by :mod:`shoal.engine`; never raised itself."""

    def __new__(cls, *args: object, **kwargs: object) -> EngineError:
        if cls is EngineError:
            raise TypeError("EngineError is a base class; raise one of its subclasses")
        return super().__new__(cls, *args)


class RemoteTraceback(Exception):
    """The text of a remote traceback, set as the ``__cause__`` of a remote error so that
    Python prints it above the local traceback when the error is not caught."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


class RemoteError(EngineError):
    """User code raised an exception on an engine.

    An error built by :meth:`from_reply` is, when it can be, also an instance of the
    remote exception's own type: ``except ValueError`` catches it too.

    Attributes
    ----------
    ename : str
        The remote exception's type name, e.g. ``"ZeroDivisionError"``.
    evalue : str
        Its message.
    traceback : str
        The formatted remote traceback.
    engine_id : int or None
        The engine it happened on.
    task_id : str or None
        The id of the request (task) that raised, when known.
    """

    ename: str
    evalue: str
    traceback: str
    engine_id: int | None
    task_id: str | None

    def __init__(
        self,
        ename: str,
        evalue: str,
        traceback: str = "",
        engine_id: int | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(ename, evalue, traceback, engine_id, task_id)
        self._set_remote(ename, evalue, traceback, engine_id, task_id)

    def _set_remote(
        self, ename: str, evalue: str, traceback: str, engine_id: int | None, task_id: str | None
    ) -> None:
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_id = engine_id
        self.task_id = task_id

    def __str__(self) -> str:
        where = "" if self.engine_id is None else f"[engine {self.engine_id}] "
        return f"{where}{self.ename}: {self.evalue}"

    def render_traceback(self) -> str:
        """The remote traceback followed by the one-line summary."""
        return f"{self.traceback.rstrip()}\n{RemoteError.__str__(self)}"

    def _render_traceback_(self) -> list[str]:
        # IPython and Jupyter show these lines instead of the local traceback, which
        # only says where the result was waited for.
        return self.render_traceback().splitlines()

    @classmethod
    def from_reply(
        cls, content: Mapping[str, object], *, task_id: str | None = None
    ) -> RemoteError:
        """Build from an error reply's content (see PROTOCOL.md, "Error replies").

        The error is also an instance of the remote exception's type when the exception
        travelled in the reply (``content["exception"]``) or its type is a builtin one;
        otherwise a plain :class:`RemoteError`.
        """
        ename = str(content.get("ename", "Exception"))
        evalue = str(content.get("evalue", ""))
        text = str(content.get("traceback", ""))
        # Taken as it came (a received reply, deserialized): an int or None.
        engine_id = cast("int | None", content.get("engine_id"))
        remote = (ename, evalue, text, engine_id, task_id)
        original = content.get("exception")
        if not isinstance(original, Exception):
            original = _builtin_exception(ename, evalue)
        error = _typed(original, remote) if original is not None else None
        if error is None:
            error = cls(*remote)
        if text:
            error.__cause__ = RemoteTraceback(text)
        return error


_Remote = tuple[str, str, str, "int | None", "str | None"]

# One class per remote exception type, made on first need: "ValueError and RemoteError".
_typed_classes: weakref.WeakKeyDictionary[type, type[RemoteError]] = weakref.WeakKeyDictionary()
_typed_lock = threading.Lock()


def _builtin_exception(ename: str, evalue: str) -> Exception | None:
    """``ename(evalue)`` when ``ename`` names a builtin ``Exception`` type that takes one
    message, else None (the exception itself did not travel)."""
    kind = getattr(builtins, ename, None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        return None
    try:
        return kind(evalue)
    except Exception:  # e.g. UnicodeDecodeError needs five arguments
        return None


def _typed_class(kind: type[Exception]) -> type[RemoteError]:
    kind = getattr(kind, "_remote_of", kind)  # an error raised again remotely: its origin
    with _typed_lock:
        made = _typed_classes.get(kind)
        if made is None:
            namespace: dict[str, Any] = {
                "__module__": kind.__module__,
                "__qualname__": kind.__qualname__,
                "__doc__": kind.__doc__,
                "__str__": kind.__str__,
                "__reduce__": _reduce_typed,
                "_remote_of": kind,
            }
            made = cast("type[RemoteError]", type(kind.__name__, (kind, RemoteError), namespace))
            _typed_classes[kind] = made
        return made


def _typed(original: Exception, remote: _Remote) -> RemoteError | None:
    """An instance of ``type(original)`` and :class:`RemoteError` with ``original``'s
    arguments and attributes, or None when that type cannot have one (an incompatible
    layout, a ``__new__`` that refuses)."""
    kind = type(original)
    try:
        made = _typed_class(kind)
        args = original.args
        error = kind.__new__(made, *args)
        if kind.__module__ == "builtins":
            # Builtins keep fields in C (StopIteration.value, SyntaxError.lineno ...)
            # that only their __init__ sets; user types keep them in __dict__.
            kind.__init__(error, *args)
            if isinstance(original, OSError):  # the file names are not in args
                for field in ("filename", "filename2"):
                    if getattr(original, field) is not None:
                        setattr(error, field, getattr(original, field))
        error.__dict__.update(getattr(original, "__dict__", {}))
        error.args = args
    except Exception:
        return None
    error._set_remote(*remote)
    return error


def _reduce_typed(self: RemoteError) -> tuple[object, ...]:
    state = {k: v for k, v in self.__dict__.items() if k not in _REMOTE_FIELDS}
    remote = (self.ename, self.evalue, self.traceback, self.engine_id, self.task_id)
    kind = type(self)._remote_of  # type: ignore[attr-defined]
    return _rebuild_typed, (kind, self.args, state, remote)


_REMOTE_FIELDS = frozenset({"ename", "evalue", "traceback", "engine_id", "task_id"})


def _rebuild_typed(
    kind: type[Exception], args: tuple[object, ...], state: dict[str, object], remote: _Remote
) -> Exception:
    """Unpickles a typed remote error (as itself, or as the original when its type can no
    longer have a typed class)."""
    original = kind.__new__(kind, *args)
    original.args = args
    original.__dict__.update(state)
    typed = _typed(original, remote)
    return original if typed is None else typed


class EngineDiedError(EngineError, RuntimeError):
    """The engine process ended while a request was outstanding, or before one was sent.

    The message states the cause: the exit code, or the signal that killed it
    (``SIGSEGV``, ``SIGKILL`` ...). Call ``restart()`` to get a fresh engine.
    """


class NoSuchObjectError(EngineError, LookupError):
    """A request named an object id that the engine's object store does not hold
    (it was never stored, or its reference count reached zero)."""
