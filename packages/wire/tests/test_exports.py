"""The public surface of shoal.wire: declared once, importable, named publicly."""

from __future__ import annotations

import importlib.metadata
import pickle

import shoal.wire
from shoal.wire import connection


def test_all_names_exist_and_are_public() -> None:
    """Every name in __all__ exists and reports shoal.wire as its module."""
    for name in shoal.wire.__all__:
        obj = getattr(shoal.wire, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type) or callable(obj):
            assert module in ("shoal.wire", "shoal.wire.connection", "typing", "types"), name


def test_no_private_leaks() -> None:
    """Only __all__ names (and dunders) are public attributes of the package."""
    public = {n for n in dir(shoal.wire) if not n.startswith("_")}
    assert public - set(shoal.wire.__all__) <= {"connection"}


def test_version_from_metadata() -> None:
    """__version__ is the installed distribution's version."""
    assert shoal.wire.__version__ == importlib.metadata.version("shoal-wire")


def test_errors_pickle_by_public_name() -> None:
    """Errors pickle through their public path and keep message and hint."""
    err = shoal.wire.ConnectionFileError("file.json has mode 0644", hint="run: chmod 600")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is shoal.wire.ConnectionFileError
    assert "mode 0644" in str(back)


def test_connection_module_api() -> None:
    """shoal.wire.connection offers the multiprocess.connection names."""
    for name in ("Listener", "Client", "Pipe", "wait", "Connection"):
        assert name in connection.__all__
        assert getattr(connection, name).__module__ == "shoal.wire.connection"
