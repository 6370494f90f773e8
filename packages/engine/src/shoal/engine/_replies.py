"""Error replies (PROTOCOL.md, "Error replies"): one builder for every request handler."""

from __future__ import annotations

import os
import traceback

from shoal.wire import Serializer

__all__ = ["error_reply"]

_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


def error_reply(
    exc: BaseException, *, engine_id: int | None, serializer: Serializer | None
) -> dict[str, object]:
    """The error reply content for ``exc``.

    Leading traceback frames from the engine's own modules are left out, so the user's
    code comes first. The exception's tracebacks are then cleared, so the reply does not
    keep the failed call's frames (and their locals) alive. ``exception`` is the exception
    itself when it survives serialization both ways, else ``None``: the text always
    travels.
    """
    tb = exc.__traceback__
    while tb is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == _ENGINE_DIR:
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # a broken __str__ must not lose the reply
        text = f"{type(exc).__name__}: <the traceback could not be formatted>\n"
    _clear_tracebacks(exc)
    return {
        "status": "error",
        "ename": type(exc).__name__,
        "evalue": _safe_str(exc),
        "traceback": text,
        "engine_id": engine_id,
        "exception": _portable(exc, serializer),
    }


def _portable(exc: BaseException, serializer: Serializer | None) -> BaseException | None:
    """``exc`` if it survives serialization both ways, else None."""
    if serializer is None:
        return None
    try:
        serializer.loads(serializer.dumps(exc))
    except BaseException:  # any failure means "send the text only"
        return None
    return exc


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # user __str__ may fail
        return f"<str() of the {type(exc).__name__} failed>"


def _clear_tracebacks(exc: BaseException) -> None:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        todo += (e.__cause__, e.__context__)
