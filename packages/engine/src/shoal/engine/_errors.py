"""The errors of the engine layer.

Theory of operation
-------------------
:class:`EngineError` is the base of every error the engine layer raises and is never
raised itself. Errors are split by where the fault happened:

* :class:`RemoteError` -- the user's code raised on the engine. It is pure data: the
  remote type name, message, formatted traceback text and engine id, so it travels and
  prints even when the original exception cannot be pickled.
* :class:`EngineDiedError` -- the engine process ended (segfault, ``os._exit``, out of
  memory, killed); the message states the exit code or signal.
* :class:`NoSuchObjectError` -- a request named an object id the engine does not hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

__all__ = ["EngineDiedError", "EngineError", "NoSuchObjectError", "RemoteError"]


class EngineError(Exception):
    """Base of every error raised by :mod:`shoal.engine`; never raised itself."""

    def __new__(cls, *args: object, **kwargs: object) -> EngineError:
        if cls is EngineError:
            raise TypeError("EngineError is a base class; raise one of its subclasses")
        return super().__new__(cls, *args)


class RemoteError(EngineError):
    """User code raised an exception on an engine.

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
    """

    def __init__(
        self, ename: str, evalue: str, traceback: str = "", engine_id: int | None = None
    ) -> None:
        super().__init__(ename, evalue, traceback, engine_id)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_id = engine_id

    def __str__(self) -> str:
        where = "" if self.engine_id is None else f"[engine {self.engine_id}] "
        return f"{where}{self.ename}: {self.evalue}"

    def render_traceback(self) -> str:
        """The remote traceback followed by the one-line summary."""
        return f"{self.traceback.rstrip()}\n{self}"

    @classmethod
    def from_reply(cls, content: Mapping[str, object]) -> RemoteError:
        """Build from an error reply's content (see PROTOCOL.md, "Error replies")."""
        return cls(
            str(content.get("ename", "Exception")),
            str(content.get("evalue", "")),
            str(content.get("traceback", "")),
            # Taken as it came (a received reply, deserialized): an int or None.
            cast("int | None", content.get("engine_id")),
        )


class EngineDiedError(EngineError, RuntimeError):
    """The engine process ended while a request was outstanding, or before one was sent.

    The message states the cause: the exit code, or the signal that killed it
    (``SIGSEGV``, ``SIGKILL`` ...). Call ``restart()`` to get a fresh engine.
    """


class NoSuchObjectError(EngineError, LookupError):
    """A request named an object id that the engine's object store does not hold
    (it was never stored, or its reference count reached zero)."""
