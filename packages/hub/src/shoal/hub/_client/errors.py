"""The errors of the hub layer, and how an error reply becomes an exception.

Engine-side failures keep the engine layer's types: :class:`shoal.engine.RemoteError`
(user code raised), :class:`shoal.engine.EngineDiedError` (the engine running the
request died). The hub layer adds the failures that only a cluster has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoal.engine import EngineDiedError, RemoteError

__all__ = [
    "CompositeError",
    "DependencyError",
    "HubLost",
    "KilledEngineError",
    "TaskAborted",
    "error_from_reply",
]


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

    Attributes
    ----------
    elist : list of Exception
        The errors, in the order of the requests.
    """

    def __init__(self, message: str, elist: Sequence[BaseException]) -> None:
        super().__init__(message, list(elist))
        self.message = message
        self.elist = list(elist)

    def __str__(self) -> str:
        lines = [f"{self.message}: {len(self.elist)} error(s)"]
        lines += [f"  {type(e).__name__}: {e}" for e in self.elist]
        return "\n".join(lines)

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


def error_from_reply(content: dict[str, Any], *, original: bool = False) -> BaseException:
    """The exception for an error or aborted reply's content.

    With ``original``, the remote exception itself when it reached the client (its type
    imports here), chained to a :class:`RemoteError` carrying the remote traceback.
    """
    if original and isinstance(content.get("exception"), BaseException):
        exc: BaseException = content["exception"]
        exc.__cause__ = RemoteError.from_reply(content)
        return exc
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
    return RemoteError.from_reply(content)
