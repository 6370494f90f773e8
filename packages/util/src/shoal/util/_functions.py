"""Decorators for functions: log instead of raise, and run in the engine's namespace."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from types import FunctionType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast, overload

__all__ = ["interactive", "log_errors"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_F = TypeVar("_F", bound=Callable[..., object])

if TYPE_CHECKING:
    import asyncio

    from typing_extensions import Never


class _Logger(Protocol):
    """What ``log_errors`` logs to: a ``logging.Logger`` or ``logging.LoggerAdapter``."""

    def exception(self, msg: object, *args: object) -> None: ...
    def error(self, msg: object, *args: object, exc_info: BaseException) -> None: ...


# A coroutine function's coroutine is typed ``Coroutine[object, Never, R]`` here: it may
# yield anything to the event loop, and Never as the send type admits every send type.
class _LogErrorsDecorator(Protocol):
    @overload
    def __call__(
        self, f: Callable[_P, Coroutine[object, Never, _R]], /
    ) -> Callable[_P, Coroutine[object, Never, _R | None]]: ...
    @overload
    def __call__(self, f: Callable[_P, _R], /) -> Callable[_P, _R | None]: ...


@overload
def log_errors(
    f: Callable[_P, Coroutine[object, Never, _R]], /
) -> Callable[_P, Coroutine[object, Never, _R | None]]: ...
@overload
def log_errors(f: Callable[_P, _R], /) -> Callable[_P, _R | None]: ...
@overload
def log_errors(*, logger: _Logger | None = None) -> _LogErrorsDecorator: ...
def log_errors(
    f: Callable[..., object] | None = None, /, *, logger: _Logger | None = None
) -> Callable[..., object]:
    """Log the exceptions a function raises instead of raising them.

    For callbacks (a zmq ``on_recv`` handler, a done-callback) where an exception
    would otherwise close the stream or vanish. The wrapped function returns ``None``
    when ``f`` raised an ``Exception``; a ``BaseException`` (``KeyboardInterrupt``,
    ``SystemExit``, ``asyncio.CancelledError``) still propagates.

    Works on ``async def`` functions (the wrapper is a coroutine function too), and on
    a plain function that returns a future (the error is logged when it resolves) or
    another awaitable (the wrapper returns an awaitable that logs).

    Parameters
    ----------
    f : callable
        The function or method. Use bare (``@log_errors``) or with arguments
        (``@log_errors(logger=log)``).
    logger : logging.Logger or logging.LoggerAdapter, optional
        Where to log. By default: the ``log`` attribute of the first argument when it
        is a logger (so ``self.log`` for a method, as in IPython), else the logger named
        after ``f``'s module.

    Examples
    --------
    >>> class Handler:
    ...     log = logging.getLogger("demo")
    ...     @log_errors
    ...     def on_recv(self, frames):
    ...         raise ValueError("bad frames")
    >>> Handler().on_recv([]) is None  # logged at ERROR level with the traceback
    True

    .. versionadded:: 0.1
    """
    if f is None:
        return functools.partial(_wrap, logger=logger)
    return _wrap(f, logger=logger)


def _wrap(f: Callable[..., Any], *, logger: _Logger | None) -> Callable[..., Any]:
    where = getattr(f, "__qualname__", repr(f))

    def pick_logger(args: tuple[Any, ...]) -> _Logger:
        if logger is not None:
            return logger
        if args:
            log = getattr(args[0], "log", None)
            if isinstance(log, logging.Logger | logging.LoggerAdapter):
                return log
        return logging.getLogger(getattr(f, "__module__", None) or __name__)

    if inspect.iscoroutinefunction(f):

        @functools.wraps(f)
        async def async_logs_errors(*args: Any, **kwargs: Any) -> Any:
            try:
                return await f(*args, **kwargs)
            except Exception:
                pick_logger(args).exception("Uncaught exception in %s", where)
                return None

        return async_logs_errors

    @functools.wraps(f)
    def logs_errors(*args: Any, **kwargs: Any) -> Any:
        try:
            result = f(*args, **kwargs)
        except Exception:
            pick_logger(args).exception("Uncaught exception in %s", where)
            return None
        if _is_future(result):
            result.add_done_callback(functools.partial(_log_future, pick_logger(args), where))
        elif inspect.isawaitable(result):
            return _log_awaitable(result, pick_logger(args), where)
        return result

    return logs_errors


def _is_future(obj: object) -> bool:
    """``asyncio.isfuture(obj)``, without importing asyncio (~50 ms at every start)."""
    return getattr(obj, "_asyncio_future_blocking", None) is not None and hasattr(
        type(obj), "_asyncio_future_blocking"
    )


def _log_future(log: _Logger, where: str, future: asyncio.Future[Any]) -> None:
    # Reading exception() also keeps asyncio from warning "never retrieved".
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("Uncaught exception in %s", where, exc_info=exc)


async def _log_awaitable(awaitable: Awaitable[_R], log: _Logger, where: str) -> _R | None:
    try:
        return await awaitable
    except Exception:
        log.exception("Uncaught exception in %s", where)
        return None


def interactive(f: _F) -> _F:
    """Make a function behave as if it was typed at the engine's prompt.

    The function's globals become ``__main__``'s namespace, and its ``__module__``
    becomes ``"__main__"``. Serialized (dill) and run on an engine, it then resolves
    global names in the engine's user namespace, where ``push`` puts them, instead of
    importing the module it was defined in (which the engine may not have).

    Defaults, keyword-only defaults, closure cells, the name, docstring, annotations
    and attributes are kept. A class gets its ``__module__`` changed only.

    Parameters
    ----------
    f : function or class

    Returns
    -------
    function or class
        For a function, a new function object; ``f`` itself is unchanged.

    Raises
    ------
    TypeError
        When ``f`` is neither a Python function nor a class (a builtin, a
        ``functools.partial``, ...).

    Examples
    --------
    >>> @interactive
    ... def scale():
    ...     return a * factor  # a and factor come from the engine's namespace
    >>> scale.__module__
    '__main__'

    .. versionadded:: 0.1
    """
    if isinstance(f, FunctionType):
        main = sys.modules["__main__"]
        g = FunctionType(f.__code__, main.__dict__, f.__name__, f.__defaults__, f.__closure__)
        g.__kwdefaults__ = f.__kwdefaults__
        g.__qualname__ = f.__qualname__
        g.__doc__ = f.__doc__
        g.__annotations__ = dict(f.__annotations__)
        g.__dict__.update(f.__dict__)
        g.__module__ = "__main__"
        return cast(_F, g)
    if isinstance(f, type):
        f.__module__ = "__main__"
        return f
    # Builtins accept a new __module__ too, but that would change them process-wide.
    raise TypeError(
        f"interactive() needs a Python function or a class, got {type(f).__name__}: {f!r}"
    )
