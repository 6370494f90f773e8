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
