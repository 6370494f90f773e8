"""The %px magics in a real IPython shell (in this process) on a real cluster."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("IPython")

from IPython.core.error import UsageError
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from traitlets.config import Config

from shoal.hub import AsyncResult, Client, CompositeError, RemoteError
from shoal.hub._cli.magics import ParallelMagics, parse_targets, split_options
from shoal.hub.testing import engine_pids, running_cluster, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: Client
) -> Iterator[InteractiveShell]:
    """An IPython shell with the magics loaded, on the shared cluster through ``client``
    (``rc`` in its namespace); its history in memory, its folder in tmp_path."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    try:
        shell.user_ns["rc"] = client
        _ok(shell, "%load_ext shoal.hub")
        _ok(shell, "%pxconfig --client rc")
        yield shell
    finally:
        InteractiveShell.clear_instance()
        client[:].clear(block=True)  # the next test's engines start empty


def _ok(ip: InteractiveShell, cell: str) -> ExecutionResult:
    """Run a cell that must succeed."""
    result = ip.run_cell(cell)
    result.raise_error()
    return result


def _values(out: str) -> dict[int, list[str]]:
    """The values shown per engine: ``Out[0]: 42`` or ``Out[0:3]: 42`` (the engine's
    execution count, where the engines send their results as rich output)."""
    values: dict[int, list[str]] = {}
    for engine, value in re.findall(r"^Out\[(\d+)(?::\d+)?\]: (.*)$", out, re.MULTILINE):
        values.setdefault(int(engine), []).append(value)
    return values


@contextlib.contextmanager
def _one_stream() -> Iterator[io.StringIO]:
    """stdout and stderr into one buffer, in the order they were written."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


# -- the line as written ------------------------------------------------------------------
def test_string_literals_reach_the_engines_as_written(
    ip: InteractiveShell, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """Quotes, doubled spaces, $ and {} in %px code arrive untouched (no shlex, no
    variable expansion)."""
    _ok(ip, "%px s = 'a  b'")
    assert client[:]["s"] == ["a  b", "a  b"]
    ip.user_ns["x"] = "local"
    _ok(ip, "%px x = 'remote'")
    _ok(ip, """%px print(s, "it's", f"{x}", '$x')""")
    out = capsys.readouterr().out
    assert "[stdout:0] a  b it's remote $x\n" in out
    assert "[stdout:1] a  b it's remote $x\n" in out
    _ok(ip, "%px --targets 1 t = '--targets 0'")
    assert client[1]["t"] == "--targets 0"
    _ok(ip, "%px -- -1")  # code that starts with a dash, after --
    assert _values(capsys.readouterr().out) == {0: ["-1"], 1: ["-1"]}


def test_cell_magic_runs_the_cell_and_shows_values(
    ip: InteractiveShell, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """%%px runs its cell on every engine and shows each engine's final value."""
    _ok(ip, "%%px\nimport os\nword = 'x y'\nos.getpid()")
    out = capsys.readouterr().out
    pids = engine_pids(client)
    assert _values(out) == {engine: [str(pid)] for engine, pid in pids.items()}  # once each
    assert client[:]["word"] == ["x y", "x y"]


def test_split_options_keeps_the_code_verbatim() -> None:
    """Leading known options are taken; the first other word starts the code."""
    assert split_options("--targets 0,1 --noblock print('a  b')") == (
        ["--targets", "0,1", "--noblock"],
        "print('a  b')",
    )
    assert split_options("--targets=::2 -x") == (["--targets=::2"], "-x")
    assert split_options("-- --noblock") == ([], "--noblock")
    with pytest.raises(UsageError, match="needs a value"):
        split_options("--targets")
    with pytest.raises(UsageError, match="no option --bogus"):
        split_options("--bogus 1")


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("all", None),
        ("1", 1),
        ("0,2", [0, 2]),
        ("[0, 2]", [0, 2]),
        ("0,", [0]),
        ("[1]", [1]),
        ("::2", slice(None, None, 2)),
        ("1:", slice(1, None)),
        ("-2:", slice(-2, None)),
    ],
)
def test_parse_targets(spec: str, key: object) -> None:
    """Each form of --targets becomes the matching client[...] key."""
    assert parse_targets(spec) == key


@pytest.mark.parametrize("spec", ["x", "0;1", "1:2:3:4", "", "0.5"])
def test_parse_targets_refuses_nonsense(spec: str) -> None:
    """A bad --targets is a UsageError that names the option."""
    with pytest.raises(UsageError, match="--targets"):
        parse_targets(spec)


# -- errors fail the cell -----------------------------------------------------------------
def test_an_error_on_the_engines_fails_the_cell(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    """A raising %px/%%px sets error_in_exec (so Run All stops) and shows each engine's
    traceback."""
    result = ip.run_cell("%px print('before'); 1 / 0")
    assert isinstance(result.error_in_exec, CompositeError)
    assert all(isinstance(e, ZeroDivisionError) for e in result.error_in_exec.elist)
    out = capsys.readouterr().out
    assert "[stdout:0] before" in out
    assert "[engine 0] ZeroDivisionError" in out
    assert "[engine 1] ZeroDivisionError" in out
    with pytest.raises(CompositeError):
        result.raise_error()
    result = ip.run_cell("%%px --targets 1\nraise KeyError('k')")
    assert isinstance(result.error_in_exec, KeyError)
    assert isinstance(result.error_in_exec, RemoteError)
    assert result.error_in_exec.engine_id == 1
    assert "KeyError" in capsys.readouterr().out
    assert not ip.run_cell("%px import no_such_module_here").success


def test_a_bad_option_fails_the_cell(ip: InteractiveShell) -> None:
    """Unknown options, bad values and missing code are UsageErrors."""
    for cell in [
        "%px --bogus 1",
        "%px --group-outputs=nowhere 1",
        "%px --targets 9 1",
        "%px",
        "%%px --targets\n1",
        "%%px\n",
        "%px --save-name 'no good' 1",
        "%pxconfig --targets",
        "%pxconfig --client nothing_by_that_name",
        "%pxconfig --client ip_not_a_client",
        "%autopx now",
    ]:
        ip.user_ns["ip_not_a_client"] = 1
        result = ip.run_cell(cell)
        assert isinstance(result.error_in_exec, UsageError), cell


# -- options ------------------------------------------------------------------------------
def test_targets(ip: InteractiveShell, client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    """--targets/-t picks engines by id, list, slice or all, for the line and the cell."""
    _ok(ip, "%px --targets 1 print('one')")
    out = capsys.readouterr().out
    assert "[stdout:1] one" in out
    assert "[stdout:0]" not in out
    _ok(ip, "%px -t ::2 print('even')")
    out = capsys.readouterr().out
    assert "[stdout:0] even" in out
    assert "[stdout:1]" not in out
    _ok(ip, "%%px --targets=[0,1]\nprint('both')")
    out = capsys.readouterr().out
    assert "[stdout:0] both" in out
    assert "[stdout:1] both" in out
    _ok(ip, "%px --targets all where = 'all'")
    assert client[:]["where"] == ["all", "all"]


def test_noblock_returns_the_result_and_pxresult_shows_it(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    """--noblock returns an AsyncResult at once; %pxresult waits, shows, and raises."""
    result = _ok(ip, "%px --noblock import os; print('late'); os.getpid()")
    assert isinstance(result.result, AsyncResult)
    result.result.wait(30)
    capsys.readouterr()
    _ok(ip, "%pxresult")
    out = capsys.readouterr().out
    assert "[stdout:0] late" in out
    assert set(_values(out)) == {0, 1}
    _ok(ip, "%%px --noblock\n1 / 0")  # submitting does not fail
    failed = ip.run_cell("%pxresult")
    assert isinstance(failed.error_in_exec, CompositeError)
    failed = ip.run_cell("%pxresult --out saved")  # stores it, and still fails
    assert isinstance(failed.error_in_exec, CompositeError)
    assert isinstance(ip.user_ns["saved"], AsyncResult)


def test_pxresult_before_any_px_is_a_usage_error(ip: InteractiveShell, client: Client) -> None:
    """%pxresult with nothing to show says so."""
    magics = ParallelMagics(ip, client[:], suffix="_fresh")
    ip.register_magics(magics)
    assert isinstance(ip.run_cell("%pxresult_fresh").error_in_exec, UsageError)


def test_group_outputs(ip: InteractiveShell) -> None:
    """--group-outputs=engine keeps each engine's streams together; type puts every
    stdout before every stderr."""
    code = "import sys; print('out', flush=True); print('err', file=sys.stderr, flush=True)"
    with _one_stream() as both:
        _ok(ip, f"%px --group-outputs=engine {code}")
    assert [line for line in both.getvalue().splitlines() if line.startswith("[")] == [
        "[stdout:0] out",
        "[stderr:0] err",
        "[stdout:1] out",
        "[stderr:1] err",
    ]
    with _one_stream() as both:
        _ok(ip, f"%%px --group-outputs type\n{code}")
    assert [line for line in both.getvalue().splitlines() if line.startswith("[")] == [
        "[stdout:0] out",
        "[stdout:1] out",
        "[stderr:0] err",
        "[stderr:1] err",
    ]


def test_stream_prints_output_while_the_code_runs(ip: InteractiveShell, tmp_path: Path) -> None:
    """--stream shows a line as soon as it arrives: the code waits for a file that the
    test writes only once the line was shown."""
    flag = tmp_path / "shown"
    cell = textwrap.dedent(
        f"""\
        %%px --targets 1 --stream
        import os, time
        print('first', flush=True)
        deadline = time.monotonic() + 30
        while not os.path.exists({str(flag)!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
        print('second' if os.path.exists({str(flag)!r}) else 'not streamed')
        print('', 'third', sep='\\n', end='')
        """
    )
    buffer = io.StringIO()

    def release() -> None:
        wait_until(lambda: "[stdout:1] first" in buffer.getvalue(), timeout=30)
        flag.touch()

    helper = threading.Thread(target=release, daemon=True)
    helper.start()
    with contextlib.redirect_stdout(buffer):
        _ok(ip, cell)
    helper.join(30)
    assert "[stdout:1] second\n[stdout:1] \n[stdout:1] third\n" in buffer.getvalue()
    assert buffer.getvalue().count("[stdout:1] first") == 1  # not shown again at the end


def test_ctrl_c_stops_the_engines_and_shows_what_they_printed(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C while %px waits fails the cell, shows the output so far, and frees the
    engine."""
    main = threading.get_ident()

    def started() -> bool:
        running = ip.user_ns.get("running")
        return isinstance(running, AsyncResult) and "started" in str(running.stdout)

    def interrupt() -> None:
        wait_until(started, timeout=30)
        signal.pthread_kill(main, signal.SIGINT)  # what Ctrl-C does

    helper = threading.Thread(target=interrupt, daemon=True)
    helper.start()
    began = time.monotonic()
    result = ip.run_cell(
        "%px -t 0 -o running import time; print('started', flush=True); time.sleep(60)"
    )
    helper.join(30)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert "[stdout:0] started" in capsys.readouterr().out
    _ok(ip, "%px -t 0 print('free')")
    assert "[stdout:0] free" in capsys.readouterr().out
    assert time.monotonic() - began < 50  # neither waited for the 60 s sleep


def test_stream_still_shows_rich_output_and_values_once(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the streamed lines, --stream shows the rich output and each value once."""
    _ok(
        ip,
        "%%px --stream\nfrom IPython.display import HTML, display\n"
        "display(HTML('<b>x</b>'))\nprint('line')\n6 * 7",
    )
    out = capsys.readouterr().out
    assert "[stdout:0] line\n" in out
    assert "[stdout:1] line\n" in out
    assert out.count("<IPython.core.display.HTML object>") == 2  # its text/plain, here
    assert _values(out) == {0: ["42"], 1: ["42"]}


def test_verbose(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    """--verbose says where the code runs; --no-verbose does not."""
    _ok(ip, "%px --verbose --targets 1 pass")
    assert "Parallel execution on engine(s): 1" in capsys.readouterr().out
    _ok(ip, "%px --no-verbose pass")
    assert "execution on engine" not in capsys.readouterr().out


def test_local_runs_the_cell_here_too(
    ip: InteractiveShell, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """%%px --local runs the cell here and on the engines; failing here fails it."""
    _ok(ip, "%%px --local\nboth = 'x' * 2\nprint('ran', both)")
    assert ip.user_ns["both"] == "xx"
    assert client[:]["both"] == ["xx", "xx"]
    out = capsys.readouterr().out
    assert "ran xx" in out.replace("[stdout:0] ran xx", "").replace("[stdout:1] ran xx", "")
    client[:]["only_there"] = 1
    failed = ip.run_cell("%%px --local\nonly_there + 1")  # fine there, NameError here
    assert isinstance(failed.error_in_exec, UsageError)
    assert "failed here" in str(failed.error_in_exec)
    assert "NameError" in capsys.readouterr().out


def test_save_name_stores_the_result(ip: InteractiveShell) -> None:
    """--save-name/-o/--out stores the AsyncResult in the user's namespace."""
    _ok(ip, "%px --save-name first 6 * 7")
    assert ip.user_ns["first"].get(10) == [42, 42]
    _ok(ip, "%%px -o second --noblock\n7")
    assert ip.user_ns["second"].get(10) == [7, 7]


def test_pxconfig_sets_the_defaults(
    ip: InteractiveShell, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """%pxconfig sets targets, block, verbose and grouping for the next %px; alone, it
    prints them."""
    _ok(ip, "%pxconfig --targets 1 --noblock --verbose --group-outputs type")
    result = _ok(ip, "%px print('config')")
    assert isinstance(result.result, AsyncResult)
    assert result.result.get(10) is None  # one engine: its own value, not a list
    assert "Async parallel execution on engine(s): 1" in capsys.readouterr().out
    _ok(ip, "%pxconfig")
    settings = capsys.readouterr().out
    assert "targets 1" in settings
    assert "block False" in settings
    assert "group-outputs type" in settings
    assert client.url_file in settings
    _ok(ip, "%pxconfig --targets all --block --no-verbose")
    _ok(ip, "%px print('all again')")
    out = capsys.readouterr().out
    assert "[stdout:0] all again" in out
    assert "[stdout:1] all again" in out
    ip.user_ns["first_only"] = client[[0]]
    _ok(ip, "%pxconfig --client first_only")
    _ok(ip, "%px print('first only')")
    out = capsys.readouterr().out
    assert "[stdout:0] first only" in out
    assert "[stdout:1]" not in out


def test_pxconfig_picks_the_cluster(
    ip: InteractiveShell,
    client: Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """%pxconfig --url-file and --profile connect to that cluster (closing the client
    the magics opened before); a missing one is a UsageError naming the option."""
    magics = ip.magics_manager.registry["ParallelMagics"]
    _ok(ip, f"%pxconfig --url-file {client.url_file}")
    opened = magics.client
    assert opened is not client
    _ok(ip, "%px print('by url file')")
    assert "[stdout:1] by url file" in capsys.readouterr().out
    monkeypatch.setenv("SHOAL_DIR", str(tmp_path))
    missing = ip.run_cell("%pxconfig --profile elsewhere")
    assert isinstance(missing.error_in_exec, UsageError)
    assert "--profile" in str(missing.error_in_exec)
    assert magics.client is opened  # unchanged by the failure
    (tmp_path / "profile_shared").mkdir()
    shutil.copy(client.url_file, tmp_path / "profile_shared" / "hub-client.json")
    _ok(ip, "%pxconfig --profile shared")
    try:
        assert opened._closed
        _ok(ip, "%px print('by profile')")
        assert "[stdout:0] by profile" in capsys.readouterr().out
        both = ip.run_cell("%pxconfig --client rc --profile shared")
        assert isinstance(both.error_in_exec, UsageError)
    finally:
        magics.client.close()


def test_a_suffix_gives_a_second_set_of_magics(
    ip: InteractiveShell, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """view.activate(suffix) adds %px_one etc. on that view only."""
    client[1].activate("_one")
    _ok(ip, "%px_one print('from one')")
    _ok(ip, "%%px_one\nprint('cell one')")
    out = capsys.readouterr().out
    assert "[stdout:1] from one" in out
    assert "[stdout:1] cell one" in out
    assert "[stdout:0]" not in out
    with pytest.raises(ValueError, match="suffix"):
        client[1].activate("bad suffix")
    client[0].activate()  # the plain %px now runs on engine 0 only
    _ok(ip, "%px print('zero')")
    out = capsys.readouterr().out
    assert "[stdout:0] zero" in out
    assert "[stdout:1]" not in out


def test_activate_outside_ipython_says_so(client: Client) -> None:
    """view.activate() with no IPython session is a RuntimeError (in a fresh process:
    this one may hold a shell of another test)."""
    code = textwrap.dedent(
        f"""\
        from shoal.hub import Client
        with Client(url_file={client.url_file!r}) as rc:
            try:
                rc[:].activate()
            except RuntimeError as err:
                print("refused:", err)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "refused: activate() needs IPython" in done.stdout


# -- %autopx ------------------------------------------------------------------------------
def test_autopx_runs_cells_on_the_engines_until_toggled(
    ip: InteractiveShell, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """After %autopx each cell runs on the engines as typed, errors fail it, and a
    second %autopx brings cells back here."""
    transformers = (len(ip.input_transformers_cleanup), len(ip.input_transformers_post))
    _ok(ip, "%autopx")
    assert "%autopx enabled" in capsys.readouterr().out
    _ok(ip, "b = 'x  y'\nfor i in range(2):\n    print('loop', i)")
    assert client[:]["b"] == ["x  y", "x  y"]
    assert "b" not in ip.user_ns
    assert "[stdout:1] loop 0\nloop 1\n" in capsys.readouterr().out
    failed = ip.run_cell("1 / 0")
    assert isinstance(failed.error_in_exec, CompositeError)
    _ok(ip, "%%px --targets 1\nprint('cell magic')")  # the magics still run here
    out = capsys.readouterr().out
    assert "[stdout:1] cell magic" in out
    assert "[stdout:0]" not in out
    _ok(ip, "%autopx")
    assert "%autopx disabled" in capsys.readouterr().out
    _ok(ip, "b = 'here'")
    assert ip.user_ns["b"] == "here"
    assert client[:]["b"] == ["x  y", "x  y"]
    # The shell is as it was.
    assert (len(ip.input_transformers_cleanup), len(ip.input_transformers_post)) == transformers


# -- %load_ext finds the cluster ----------------------------------------------------------
_SESSION = """
import sys
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
config = Config()
config.HistoryManager.hist_file = ":memory:"
ip = InteractiveShell.instance(config=config)
ip.run_cell("%load_ext shoal.hub").raise_error()
result = ip.run_cell("%px import os; os.getpid()")
sys.exit(0 if result.success else 3)
"""


def _ipython_session(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run _SESSION in a fresh process (no Client of this process's tests to find) whose
    default profile lives in tmp_path."""
    env = {**os.environ, "SHOAL_DIR": str(tmp_path), "IPYTHONDIR": str(tmp_path / "ipython")}
    return subprocess.run(
        [sys.executable, "-c", _SESSION],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_load_ext_finds_the_running_default_cluster(tmp_path: Path) -> None:
    """%load_ext shoal.hub connects to the default profile's cluster by itself, and says
    clearly when none runs."""
    none = _ipython_session(tmp_path)
    assert none.returncode == 3, none.stderr
    assert "no cluster to run on" in none.stderr
    assert "shoal cluster start" in none.stderr
    with running_cluster(tmp_path / "profile_default", 1) as (_, rc):
        found = _ipython_session(tmp_path)
        assert found.returncode == 0, found.stdout + found.stderr
        assert "runs on 1 engine(s)" in found.stdout
        assert _values(found.stdout) == {0: [str(engine_pids(rc)[0])]}


def test_in_a_jupyter_kernel_output_is_rich_and_a_failing_cell_an_error(tmp_path: Path) -> None:
    """In an ipykernel (what a notebook runs), %load_ext finds the cluster, %px output
    arrives as stream and rich display messages, and a %px that raised on the engines
    answers status "error" with every engine's traceback: what stops "Run All"."""
    manager = pytest.importorskip("jupyter_client.manager")
    env = {
        **os.environ,
        "SHOAL_DIR": str(tmp_path),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",  # jupyter_core's current folders, without its warning
    }
    with running_cluster(tmp_path / "profile_default", 2):
        km, kc = manager.start_new_kernel(kernel_name="python3", env=env, startup_timeout=60)
        try:

            def run(code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
                messages: list[dict[str, Any]] = []
                reply = kc.execute_interactive(code, timeout=60, output_hook=messages.append)
                return reply["content"], messages

            content, _ = run("%load_ext shoal.hub")
            assert content["status"] == "ok"
            content, messages = run("%px print('hi', 'a  b')")
            assert content["status"] == "ok"
            streams = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
            assert "[stdout:0] hi a  b\n[stdout:1] hi a  b\n" in streams
            content, messages = run(
                "%px from IPython.display import HTML, display; display(HTML('<b>rich</b>'))"
            )
            assert content["status"] == "ok"
            html = [
                m["content"]["data"].get("text/html")
                for m in messages
                if m["msg_type"] == "display_data"
            ]
            assert html == ["<b>rich</b>", "<b>rich</b>"]  # one per engine, as HTML
            content, messages = run("%px 6 * 7")
            shown = [
                m["content"].get("text") or m["content"]["data"]["text/plain"]
                for m in messages
                if m["msg_type"] in ("stream", "display_data", "execute_result")
            ]
            assert sorted(_values("\n".join(shown))) == [0, 1]
            assert all(v == ["42"] for v in _values("\n".join(shown)).values())  # once each
            content, messages = run("%px 1 / 0")
            assert content["status"] == "error"
            assert content["ename"] == "CompositeError"
            (error,) = [m["content"] for m in messages if m["msg_type"] == "error"]
            assert "[engine 0] ZeroDivisionError: division by zero" in error["traceback"]
            assert "[engine 1] ZeroDivisionError: division by zero" in error["traceback"]
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
