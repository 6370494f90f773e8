"""log_errors and interactive."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import subprocess
import sys
from collections.abc import Awaitable
from typing import Any

import dill
import pytest

from shoal.util import interactive, log_errors

# --- log_errors --------------------------------------------------------------------


def test_log_errors_logs_and_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    """A raised exception is logged with its traceback and the call returns None."""

    @log_errors
    def boom(x: int) -> int:
        raise ValueError(f"bad {x}")

    with caplog.at_level(logging.ERROR):
        assert boom(3) is None
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "boom" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert record.name == __name__  # the function's module logger by default


def test_log_errors_passes_results_through(caplog: pytest.LogCaptureFixture) -> None:
    """Without an exception the result comes back and nothing is logged."""

    @log_errors
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(1, b=2) == 3
    assert add.__name__ == "add"
    assert caplog.records == []


def test_log_errors_uses_self_log(caplog: pytest.LogCaptureFixture) -> None:
    """On a method, the instance's ``log`` logger is used, as in IPython."""

    class Stream:
        log = logging.getLogger("shoal.test.stream")

        @log_errors
        def on_recv(self, frames: list[bytes]) -> None:
            raise RuntimeError(f"cannot handle {len(frames)} frames")

    with caplog.at_level(logging.ERROR):
        assert Stream().on_recv([b"x"]) is None
    [record] = caplog.records
    assert record.name == "shoal.test.stream"
    assert "Stream.on_recv" in record.getMessage()


def test_log_errors_explicit_logger(caplog: pytest.LogCaptureFixture) -> None:
    """log_errors(logger=...) logs to that logger."""
    log = logging.getLogger("shoal.test.explicit")

    @log_errors(logger=log)
    def boom() -> None:
        raise KeyError("k")

    with caplog.at_level(logging.ERROR):
        boom()
    assert [r.name for r in caplog.records] == ["shoal.test.explicit"]


def test_log_errors_async_function(caplog: pytest.LogCaptureFixture) -> None:
    """An async def stays a coroutine function; its exception is logged when awaited."""

    @log_errors
    async def boom() -> int:
        await asyncio.sleep(0)
        raise ValueError("async failure")

    @log_errors
    async def fine() -> int:
        await asyncio.sleep(0)
        return 42

    assert inspect.iscoroutinefunction(boom)
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(boom()) is None
        assert asyncio.run(fine()) == 42
    [record] = caplog.records
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "async failure"


def test_log_errors_future_result(caplog: pytest.LogCaptureFixture) -> None:
    """A returned future that fails is logged when it resolves, and still carries the error."""

    async def main() -> None:
        loop = asyncio.get_running_loop()

        @log_errors
        def start() -> asyncio.Future[int]:
            return loop.create_future()

        fut = start()
        assert isinstance(fut, asyncio.Future)
        fut.set_exception(OSError("late failure"))
        await asyncio.sleep(0)  # let the done-callback run
        with pytest.raises(OSError, match="late failure"):
            await fut

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    [record] = caplog.records
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], OSError)


def test_log_errors_awaitable_result(caplog: pytest.LogCaptureFixture) -> None:
    """A plain function returning a coroutine gives an awaitable that logs."""

    async def failing() -> int:
        raise ValueError("from coroutine")

    @log_errors
    def start() -> Awaitable[int]:
        return failing()

    async def main() -> object:
        return await start()

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(main()) is None
    assert len(caplog.records) == 1


def test_log_errors_lets_base_exceptions_through() -> None:
    """KeyboardInterrupt and other BaseExceptions are not swallowed."""

    @log_errors
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()


# --- interactive -------------------------------------------------------------------

_MODULE_GLOBAL = "module value"


def test_interactive_moves_function_to_main() -> None:
    """The decorated function's module is __main__ and its globals are __main__'s."""

    def f() -> str:
        return _MODULE_GLOBAL

    g = interactive(f)
    assert g.__module__ == "__main__"
    assert g.__globals__ is sys.modules["__main__"].__dict__
    assert f.__module__ == __name__  # the original is left alone
    assert f() == "module value"
    with pytest.raises(NameError, match="_MODULE_GLOBAL"):
        g()  # resolved in __main__, where the name does not exist


def test_interactive_keeps_function_details() -> None:
    """Defaults, keyword-only defaults, closures, name, doc and attributes are kept."""
    captured = 10

    def f(a: int, b: int = 2, *, c: int = 3) -> int:
        """Doc."""
        return a + b + c + captured

    f.tag = "kept"  # type: ignore[attr-defined]
    g = interactive(f)
    assert g(1) == 16
    assert g(1, 0, c=0) == 11
    assert g.__name__ == "f"
    assert g.__qualname__ == f.__qualname__
    assert g.__doc__ == "Doc."
    assert g.tag == "kept"  # type: ignore[attr-defined]


def test_interactive_class() -> None:
    """A class gets __module__ == '__main__'."""

    @interactive
    class Task:
        pass

    assert Task.__module__ == "__main__"


@pytest.mark.parametrize("obj", [len, functools.partial(print, "x")], ids=["builtin", "partial"])
def test_interactive_refuses_other_callables(obj: Any) -> None:
    """A builtin or partial raises TypeError and is left unchanged."""
    before = getattr(obj, "__module__", None)
    with pytest.raises(TypeError, match="Python function or a class"):
        interactive(obj)
    assert getattr(obj, "__module__", None) == before


def test_interactive_resolves_names_in_another_process_main() -> None:
    """Shipped with dill, the function reads globals from the receiving process's __main__."""

    @interactive
    def scale(x: int) -> int:
        return x * factor  # type: ignore[name-defined]  # noqa: F821 - lives in the engine

    script = "import sys, dill\nfactor = 7\nf = dill.loads(sys.stdin.buffer.read())\nprint(f(6))\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=dill.dumps(scale),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "42"
