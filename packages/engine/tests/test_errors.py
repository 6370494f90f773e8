"""The engine's errors: pure data that travels and prints the remote traceback."""

from __future__ import annotations

import pickle

import pytest

from shoal.engine import (
    EngineDiedError,
    EngineError,
    NoSuchObjectError,
    RemoteError,
    RemoteTraceback,
)


def test_remote_error_from_reply() -> None:
    """An error reply becomes a RemoteError with type, message, traceback and engine."""
    reply = {
        "status": "error",
        "ename": "ZeroDivisionError",
        "evalue": "division by zero",
        "traceback": 'Traceback (most recent call last):\n  File "<x>", line 1\n',
        "engine_id": 3,
    }
    err = RemoteError.from_reply(reply, task_id="t-1")
    assert (err.ename, err.evalue, err.engine_id) == ("ZeroDivisionError", "division by zero", 3)
    assert err.task_id == "t-1"
    assert isinstance(err, ZeroDivisionError)  # a builtin type is rebuilt by its name
    assert str(err) == "division by zero"
    assert err.render_traceback().startswith("Traceback")
    assert err.render_traceback().endswith("[engine 3] ZeroDivisionError: division by zero")
    assert err._render_traceback_() == err.render_traceback().splitlines()


class Unusual(Exception):
    """An exception with its own constructor and attributes."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(code, why)
        self.code = code


def _reply(exc: BaseException | None, ename: str = "") -> dict[str, object]:
    name = ename or type(exc).__name__
    text = f'Traceback (most recent call last):\n  File "<task>", line 2\n{name}: boom\n'
    return {"ename": name, "evalue": str(exc), "traceback": text, "engine_id": 1, "exception": exc}


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad"),
        KeyError("k"),
        FileNotFoundError(2, "no such file", "data.csv"),
        StopIteration(5),
        SyntaxError("invalid", ("f.py", 1, 2, "x y")),
        Unusual(7, "no"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_typed_remote_error_is_both(exc: Exception) -> None:
    """A travelled exception becomes an error of its own type that is also a RemoteError,
    with the original's args, attributes and str, and it pickles as itself."""
    err = RemoteError.from_reply(_reply(exc), task_id="t-2")
    assert isinstance(err, type(exc))
    assert isinstance(err, RemoteError)
    assert type(err).__name__ == type(exc).__name__
    assert err.args == exc.args
    assert str(err) == str(exc)
    assert repr(err) == repr(exc)
    assert (err.engine_id, err.task_id, err.ename) == (1, "t-2", type(exc).__name__)
    assert vars(exc).items() <= vars(err).items()
    for field in ("errno", "filename", "value", "lineno", "code"):
        assert getattr(err, field, None) == getattr(exc, field, None)
    assert isinstance(err.__cause__, RemoteTraceback)
    assert "<task>" in str(err.__cause__)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert (back.args, back.engine_id, back.task_id) == (err.args, 1, "t-2")
    assert RemoteError.from_reply(_reply(exc)).__class__ is type(err)  # one class per type


def test_interrupts_and_unknown_types_stay_plain() -> None:
    """KeyboardInterrupt and SystemExit must not stop the caller; a type that did not
    travel and is not a builtin stays a plain RemoteError."""
    for exc in (KeyboardInterrupt(), SystemExit(3)):
        err = RemoteError.from_reply(_reply(exc))
        assert type(err) is RemoteError
        assert not isinstance(err, type(exc))
    err = RemoteError.from_reply(_reply(None, ename="CustomError"))
    assert type(err) is RemoteError
    assert str(err) == "[engine 1] CustomError: None"


def test_uncaught_remote_error_prints_the_remote_traceback() -> None:
    """An uncaught typed error prints the remote traceback above the local one, as
    multiprocessing's pool does."""
    import traceback

    err = RemoteError.from_reply(_reply(ValueError("boom")))
    text = "".join(traceback.format_exception(err))
    assert (
        text.index('File "<task>"') < text.index("direct cause") < text.rindex("ValueError: boom")
    )


def test_remote_error_pickles() -> None:
    """A RemoteError survives pickling with all its fields."""
    err = RemoteError("KeyError", "'a'", "tb", None)
    back = pickle.loads(pickle.dumps(err))
    fields = (back.ename, back.evalue, back.traceback, back.engine_id)
    assert fields == ("KeyError", "'a'", "tb", None)
    assert str(back) == "KeyError: 'a'"


def test_base_is_abstract_and_builtins_are_kept() -> None:
    """EngineError cannot be raised itself; subclasses are what callers already catch."""
    with pytest.raises(TypeError, match="base class"):
        EngineError("x")
    assert issubclass(EngineDiedError, RuntimeError)
    assert issubclass(NoSuchObjectError, LookupError)
    message = "engine 0 was killed by SIGKILL"
    assert str(EngineDiedError(message)) == message


def test_protocol_page_names_every_message_type_and_no_other() -> None:
    """PROTOCOL.md documents exactly the message types of MsgType, and every request of
    the table has a reply type."""
    import re
    from pathlib import Path

    from shoal.engine import CONTROL_REQUESTS, HUB_REQUESTS, SHELL_REQUESTS, MsgType, reply_type

    page = (Path(__file__).parents[1] / "PROTOCOL.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([a-z_]+_(?:request|reply|report))`", page))
    named |= {t for t in re.findall(r"`([a-z_]+)`", page) if t in {m.value for m in MsgType}}
    types = {m.value for m in MsgType}
    requests = {t for t in types if t.endswith("_request")}
    assert requests <= named, f"PROTOCOL.md does not name {sorted(requests - named)}"
    assert named - types == set(), f"PROTOCOL.md names unknown {sorted(named - types)}"
    notices = {"stream", "engine_ready", "engine_registered", "engine_unregistered"}
    notices |= {"no_engines", "hub_shutdown", "history_report", "error_reply"}
    assert notices <= named
    for request in requests:
        assert reply_type(request) in types
        assert reply_type(request).endswith("_reply")
    assert reply_type("bogus_request") == "error_reply"
    # register_request: engine -> hub; input_request: engine -> client, in a running task
    others = {"register_request", "input_request"}
    assert SHELL_REQUESTS | CONTROL_REQUESTS | HUB_REQUESTS | others == requests
