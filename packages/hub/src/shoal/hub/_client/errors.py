"""The errors of the hub layer, and how an error reply becomes an exception.

Engine-side failures keep the engine layer's types: :class:`shoal.engine.RemoteError`
(user code raised), :class:`shoal.engine.EngineDiedError` (the engine running the
request died). The hub layer adds the failures that only a cluster has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoal.engine import EngineDiedError, RemoteError, RemoteTraceback

__all__ = [
    "CompositeError",
    "DependencyError",
    "HubLost",
    "KilledEngineError",
    "TaskAborted",
    "error_from_reply",
]

# The note a map's failing input gets on its engine: "map input 7: 'abc'".
MAP_INPUT_NOTE = "map input"


class HubLost(ConnectionError):
    """The hub stopped answering (killed, shut down, or unreachable): nothing sent to the
    cluster will be answered. Start a cluster again and make a new :class:`Client`."""


class TaskAborted(RuntimeError):
    """The task was dropped by ``abort()`` before it ran."""


class DependencyError(RuntimeError):
    """A task's ``after``/``follow`` dependencies can never be met (one failed, is
    unknown to the hub, or ran on an engine that is gone)."""


class KilledEngineError(EngineDiedError):
    """A load-balanced task was running on ``allowed_failures`` engines (3 by default)
    when each of them died, so the hub will not feed it more engines: it fails for good,
    whatever its ``retries`` (Dask calls this ``KilledWorker``).

    Raised by the task's result. The task most likely crashes its engine (a segfault,
    ``os._exit``, running out of memory): run it on one engine to see how, or raise the
    hub's ``allowed_failures`` if the deaths had other causes.

    Attributes
    ----------
    engine_ids : list of int
        The engines that died while they ran it, in order.
    """

    def __init__(self, message: str, engine_ids: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.engine_ids = list(engine_ids)


class CompositeError(RuntimeError):
    """Several remote errors at once, e.g. one per engine of a view.

    Each error of a ``map`` names the input that failed (its index and a short repr),
    and so does the message.

    Attributes
    ----------
    elist : list of Exception
        The errors, in the order of the requests.
    """

    def __init__(self, message: str, elist: Sequence[BaseException]) -> None:
        super().__init__(message, list(elist))
        self.message = message
        self.elist = list(elist)
        if any(isinstance(e, RemoteError) for e in self.elist):
            # Printed above an uncaught error's local traceback: where each one happened.
            self.__cause__ = RemoteTraceback(self.render_traceback())

    def __str__(self) -> str:
        lines = [f"{self.message}: {len(self.elist)} error(s)"]
        for e in self.elist:
            where = failed_input(e)
            lines.append(f"  {type(e).__name__}: {e}" + (f" ({where})" if where else ""))
        return "\n".join(lines)

    def _render_traceback_(self) -> list[str]:
        return self.render_traceback().splitlines()

    def render_traceback(self) -> str:
        """Every remote traceback, one after the other."""
        parts = []
        for e in self.elist:
            render = getattr(e, "render_traceback", None)
            parts.append(render() if render else f"{type(e).__name__}: {e}")
        return "\n\n".join(parts)

    def raise_exception(self, index: int = 0) -> None:
        """Raise one of the errors (the first by default)."""
        raise self.elist[index]


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters; never raises."""
    try:
        text = repr(value)
    except Exception:  # a user __repr__ may fail
        return "<repr() failed>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failed_input(error: BaseException) -> str | None:
    """ "map input 7: 'abc'" when ``error`` came from a map's input, else None: from the
    error's notes, or from the remote traceback when the exception itself did not
    travel."""
    notes = getattr(error, "__notes__", None) or []
    text = getattr(error, "traceback", "")
    lines = [*notes, *(text.splitlines() if isinstance(text, str) else ())]
    return next((line for line in lines if line.startswith(MAP_INPUT_NOTE + " ")), None)


def error_from_reply(content: dict[str, Any], *, task_id: str | None = None) -> BaseException:
    """The exception for an error or aborted reply's content.

    A task's own exception keeps its type (see :meth:`RemoteError.from_reply`): the error
    is an instance of that type and of :class:`RemoteError`, carrying the remote traceback,
    the engine id and ``task_id``.
    """
    if content.get("status") == "aborted":
        return TaskAborted("the task was aborted before it ran")
    ename = str(content.get("ename", "Exception"))
    evalue = str(content.get("evalue", ""))
    if ename == "EngineDiedError":
        return EngineDiedError(evalue)
    if ename == "KilledEngineError":
        ids = content.get("engine_ids")
        return KilledEngineError(evalue, ids if isinstance(ids, list) else ())
    if ename == "DependencyError":
        return DependencyError(evalue)
    return RemoteError.from_reply(content, task_id=task_id)
