"""The engine's errors: pure data that travels and prints the remote traceback."""

from __future__ import annotations

import pickle

import pytest

from shoal.engine import EngineDiedError, EngineError, NoSuchObjectError, RemoteError


def test_remote_error_from_reply() -> None:
    """An error reply becomes a RemoteError with type, message, traceback and engine."""
    reply = {
        "status": "error",
        "ename": "ZeroDivisionError",
        "evalue": "division by zero",
        "traceback": 'Traceback (most recent call last):\n  File "<x>", line 1\n',
        "engine_id": 3,
    }
    err = RemoteError.from_reply(reply)
    assert (err.ename, err.evalue, err.engine_id) == ("ZeroDivisionError", "division by zero", 3)
    assert str(err) == "[engine 3] ZeroDivisionError: division by zero"
    assert err.render_traceback().startswith("Traceback")
    assert err.render_traceback().endswith("division by zero")


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
    assert SHELL_REQUESTS | CONTROL_REQUESTS | HUB_REQUESTS | {"register_request"} == requests
