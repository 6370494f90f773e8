"""A task's exception reaches the caller as its own type, which is also a RemoteError,
through every way a result comes back; uncaught, it shows the remote traceback."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.engine import RemoteError, RemoteTraceback
from shoal.hub import Client, CompositeError, scatter


def parse_int(text: str) -> int:
    """A task that fails with a ValueError for text that is not a number."""
    return int(text)


class Lookup:
    """An object kept on an engine, whose method raises a KeyError."""

    def get(self, key: str) -> str:
        return {"a": "x"}[key]


class OnlyThere(Exception):
    """An exception that cannot be pickled: only its text can travel."""

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("this error does not pickle")


def unsendable() -> None:
    """Raises an exception that cannot travel."""
    raise OnlyThere("local type")


def _check(err: BaseException, kind: type[BaseException], client: Client) -> None:
    assert isinstance(err, kind)
    assert isinstance(err, RemoteError)
    assert err.engine_id in client.ids
    assert err.task_id
    assert "parse_int" in err.traceback or "Lookup" in err.traceback or "get" in err.traceback
    assert isinstance(err.__cause__, RemoteTraceback)


def test_results_raise_the_task_exception_type(client: Client) -> None:
    """AsyncResult.get, Executor futures, blocking views, Pool and proxies all raise the
    task's own exception type, also a RemoteError with engine, task id and traceback."""
    client.wait_for_engines(2, timeout=30)
    lb = client.load_balanced_view()
    with pytest.raises(ValueError, match="invalid literal") as err:
        lb.apply_async(parse_int, "x").get(30)
    _check(err.value, ValueError, client)
    with pytest.raises(ValueError, match="invalid literal") as err:
        client[0].apply_sync(parse_int, "x")
    _check(err.value, ValueError, client)
    assert err.value.engine_id == 0
    with client.executor() as executor:
        future = executor.submit(parse_int, "y")
        with pytest.raises(ValueError, match="'y'") as err:
            future.result(30)
        _check(err.value, ValueError, client)
        assert isinstance(future.exception(30), ValueError)
    with client.pool(2) as pool:
        with pytest.raises(ValueError, match="'z'") as err:
            pool.apply(parse_int, ("z",))
        _check(err.value, ValueError, client)
    proxy = scatter(Lookup(), client=client)
    with pytest.raises(KeyError) as err:
        proxy.get("b")
    _check(err.value, KeyError, client)


def test_a_type_that_cannot_travel_stays_a_remote_error(client: Client) -> None:
    """An exception whose type the client cannot have arrives as a plain RemoteError
    with the remote type's name and traceback."""
    with pytest.raises(RemoteError) as err:
        client[0].apply_sync(unsendable)
    assert type(err.value) is RemoteError
    assert err.value.ename == "OnlyThere"
    assert "local type" in str(err.value)
    assert "unsendable" in err.value.traceback


def test_a_map_error_names_the_inputs_that_failed(client: Client) -> None:
    """CompositeError from a map says which inputs failed, by index and value."""
    client.wait_for_engines(2, timeout=30)
    words = ["1", "2", "three", "4", "5", "six"]
    for view in (client[:], client.load_balanced_view()):
        with pytest.raises(CompositeError) as err:
            view.map_sync(parse_int, words)
        text = str(err.value)
        assert "map input 2: 'three'" in text, text
        assert "map input 5: 'six'" in text, text
        assert all(isinstance(e, ValueError) for e in err.value.elist)
    iterated = client.load_balanced_view().imap(parse_int, words, chunksize=4)
    with pytest.raises(ValueError, match="three") as one:
        list(iterated)
    assert "map input 2: 'three'" in (one.value.__notes__ or [])


def test_ipython_shows_the_remote_traceback(client: Client) -> None:
    """In IPython, an uncaught remote error shows the engine's traceback
    (``_render_traceback_``), with the task's line."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.user_ns.update(view=client[0], parse_int=parse_int)
        out = io.StringIO()
        real = sys.stdout
        sys.stdout = out
        try:
            shell.run_cell("view.apply_sync(parse_int, 'nope')")
        finally:
            sys.stdout = real
    finally:
        InteractiveShell.clear_instance()
    text = out.getvalue()
    assert "return int(text)" in text, text
    assert "invalid literal" in text


def test_an_uncaught_remote_error_prints_where_it_happened(client: Client, tmp_path: Path) -> None:
    """A script that dies of a remote error prints the remote traceback, then its own,
    and catches it by type when it tries."""
    script = (
        "import sys\n"
        "from shoal.hub import Client\n"
        "rc = Client(url_file=sys.argv[1])\n"
        "rc.wait_for_engines(1, timeout=30)\n"
        "def half(x):\n"
        "    return {'a': 1}[x] / 2\n"
        "try:\n"
        "    rc[0].apply_sync(half, 'b')\n"
        "except KeyError as e:\n"
        "    print('caught', repr(e), flush=True)\n"
        "rc[0].apply_sync(half, 'c')\n"
    )
    path = tmp_path / "script.py"
    path.write_text(script)
    done = subprocess.run(
        [sys.executable, str(path), client.url_file],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip() == "caught KeyError('b')"
    err = done.stderr
    assert "return {'a': 1}[x] / 2" in err, err
    assert err.index("RemoteTraceback") < err.index("direct cause") < err.rindex("KeyError: 'c'")


def test_pool_errors_name_the_input_that_failed(client: Client) -> None:
    """Pool.map and imap raise the failing input's own exception, noted with its index."""
    words = ["1", "2", "three", "4", "5", "six"]
    with client.pool(2) as pool:
        with pytest.raises(ValueError, match=r"three|six") as err:
            pool.map(parse_int, words, chunksize=2)
        assert any(n.startswith("map input ") for n in err.value.__notes__)
        with pytest.raises(ValueError, match="three") as err:
            list(pool.imap(parse_int, words, chunksize=2))
        assert "map input 2: 'three'" in err.value.__notes__
