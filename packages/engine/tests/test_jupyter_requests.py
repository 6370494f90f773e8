"""Jupyter's shell requests, rich output and stdin, answered by a Kernel in process: with
IPython, with plain Python, and (in a subprocess) where IPython cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.engine import Kernel, MsgType, reply_type

Events = list[tuple[str, Any]]


@pytest.fixture(params=[False, True], ids=["plain", "ipython"])
def ipython(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Both ways of running code; the IPython shell is let go after the test."""
    if request.param:
        pytest.importorskip("IPython")
    yield bool(request.param)
    if request.param:
        from IPython.core.interactiveshell import InteractiveShell

        InteractiveShell.clear_instance()


def _kernel(ipython: bool, events: Events, answer: str | None = None) -> Kernel:
    def on_input(prompt: str, password: bool) -> str:
        events.append(("input", (prompt, password)))
        if answer is None:
            raise AssertionError("input() asked when no answer was expected")
        return answer

    return Kernel(
        ipython=ipython,
        on_stream=lambda name, text: events.append((name, text)),
        on_display=lambda kind, content: events.append((kind, content)),
        on_input=on_input,
    )


def test_new_requests_have_reply_types() -> None:
    """Every Jupyter shell request has its reply type in the protocol's table."""
    for request in (
        "kernel_info_request",
        "complete_request",
        "inspect_request",
        "is_complete_request",
        "history_request",
        "comm_info_request",
    ):
        assert reply_type(request) == request.replace("_request", "_reply")
    assert MsgType.INPUT_REQUEST == "input_request"
    assert reply_type("input_request") == "input_reply"


def test_kernel_info_says_whether_ipython_runs_the_code(ipython: bool) -> None:
    """kernel_info_reply has Jupyter's fields, and says which interpreter runs code."""
    reply = _kernel(ipython, []).handle("kernel_info_request", {})
    assert reply["status"] == "ok"
    assert reply["protocol_version"] == "5.3"
    assert reply["implementation"] == "shoal"
    assert isinstance(reply["implementation_version"], str)
    info = reply["language_info"]
    assert info["name"] == "python"
    assert info["version"] == ".".join(map(str, sys.version_info[:3]))
    assert info["file_extension"] == ".py"
    assert reply["ipython"] is ipython
    assert ("IPython" in reply["banner"]) is ipython
    assert isinstance(reply["help_links"], list)


def test_execute_counts_as_jupyter_does(ipython: bool) -> None:
    """execution_count counts stored cells: not silent ones, nor store_history=False."""
    k = _kernel(ipython, [])
    assert k.handle("execute_request", {"code": "a = 1"})["execution_count"] == 1
    assert k.handle("execute_request", {"code": "a += 1", "silent": True})["execution_count"] == 1
    reply = k.handle("execute_request", {"code": "a += 1", "store_history": False})
    assert reply["execution_count"] == 1
    reply = k.handle("execute_request", {"code": "a * 10"})
    assert (reply["execution_count"], reply["result"]) == (2, 30)
    reply = k.handle(
        "execute_request", {"code": "b = 2", "user_expressions": {"twice": "b * 2", "bad": "1/0"}}
    )
    expressions = reply["user_expressions"]
    assert expressions["twice"]["status"] == "ok"
    assert expressions["twice"]["data"]["text/plain"] == "4"
    assert expressions["bad"]["status"] == "error"
    assert expressions["bad"]["ename"] == "ZeroDivisionError"


def test_execute_result_is_sent_as_rich_output(ipython: bool) -> None:
    """A final expression's value is the reply's result and an execute_result notice."""
    events: Events = []
    reply = _kernel(ipython, events).handle("execute_request", {"code": "6 * 7"})
    assert reply["result"] == 42
    results = [c for kind, c in events if kind == "execute_result"]
    assert results == [{"execution_count": 1, "data": {"text/plain": "42"}, "metadata": {}}]


def test_errors_keep_the_error_reply_shape(ipython: bool) -> None:
    """A failing cell answers ename/evalue/traceback/exception, the user's frame first."""
    k = _kernel(ipython, [])
    reply = k.handle("execute_request", {"code": "def f():\n    return 1 / 0\nf()"})
    assert reply["status"] == "error"
    assert reply["ename"] == "ZeroDivisionError"
    assert isinstance(reply["exception"], ZeroDivisionError)
    first_frame = reply["traceback"].splitlines()[1]
    assert "-input-" in first_frame, reply["traceback"]  # <shoal-input-1>, <ipython-input-1-..>
    assert "return 1 / 0" in reply["traceback"]
    reply = k.handle("execute_request", {"code": "1 +"})
    assert reply["ename"] == "SyntaxError"
    assert "interactiveshell" not in reply["traceback"]


def test_complete(ipython: bool) -> None:
    """complete_request completes attributes and names at the cursor."""
    k = _kernel(ipython, [])
    k.handle("execute_request", {"code": "import os\nlonger_name = 1"})
    reply = k.handle("complete_request", {"code": "x = os.pa", "cursor_pos": 9})
    assert reply["status"] == "ok"
    assert set(reply) >= {"matches", "cursor_start", "cursor_end", "metadata"}
    replaced = [
        "x = os.pa"[: reply["cursor_start"]] + m + "x = os.pa"[reply["cursor_end"] :]
        for m in reply["matches"]
    ]
    assert "x = os.path" in replaced
    reply = k.handle("complete_request", {"code": "longer_n"})  # cursor: the end
    assert "longer_name" in reply["matches"]
    assert reply["cursor_end"] == 8
    bad = k.handle("complete_request", {"code": "os", "cursor_pos": 7})
    assert bad["status"] == "error"
    assert "cursor_pos" in bad["evalue"]


def test_inspect(ipython: bool) -> None:
    """inspect_request finds a name's documentation, in a call too; unknown: not found."""
    k = _kernel(ipython, [])
    k.handle("execute_request", {"code": "def twice(x):\n    'Double x.'\n    return 2 * x"})
    reply = k.handle("inspect_request", {"code": "twice(3", "cursor_pos": 7})
    assert reply["status"] == "ok"
    assert reply["found"] is True
    assert "Double x." in reply["data"]["text/plain"]
    detailed = k.handle("inspect_request", {"code": "twice", "detail_level": 1})
    assert "return 2 * x" in detailed["data"]["text/plain"]
    missing = k.handle("inspect_request", {"code": "no_such_name"})
    assert (missing["status"], missing["found"], missing["data"]) == ("ok", False, {})
    bad = k.handle("inspect_request", {"code": "twice", "detail_level": 5})
    assert bad["status"] == "error"
    assert "detail_level" in bad["evalue"]


def test_is_complete(ipython: bool) -> None:
    """is_complete_request says complete, incomplete (with the indent) or invalid."""
    k = _kernel(ipython, [])
    assert k.handle("is_complete_request", {"code": "x = 1"})["status"] == "complete"
    reply = k.handle("is_complete_request", {"code": "for i in range(3):"})
    assert reply == {"status": "incomplete", "indent": "    "}
    assert k.handle("is_complete_request", {"code": "x = (1,"})["status"] == "incomplete"
    assert k.handle("is_complete_request", {"code": "1 +* 2"})["status"] == "invalid"


def test_history(ipython: bool) -> None:
    """history_request: tail, range and search over the cells stored in history."""
    k = _kernel(ipython, [])
    for code in ("a = 1", "b = 2", "a + b", "a = 5"):
        k.handle("execute_request", {"code": code})
    k.handle("execute_request", {"code": "secret = 1", "store_history": False})
    tail = k.handle("history_request", {"hist_access_type": "tail", "n": 2})["history"]
    assert tail == [(1, 3, "a + b"), (1, 4, "a = 5")]
    ranged = k.handle(
        "history_request", {"hist_access_type": "range", "session": 0, "start": 2, "stop": 4}
    )["history"]
    assert ranged == [(1, 2, "b = 2"), (1, 3, "a + b")]
    found = k.handle(
        "history_request", {"hist_access_type": "search", "pattern": "a*", "output": True}
    )["history"]
    assert found == [(1, 1, ("a = 1", None)), (1, 3, ("a + b", "3")), (1, 4, ("a = 5", None))]
    bad = k.handle("history_request", {"hist_access_type": "everything"})
    assert bad["status"] == "error"
    assert "hist_access_type" in bad["evalue"]


def test_comm_info(ipython: bool) -> None:
    """comm_info_request answers that the engine has no comms."""
    reply = _kernel(ipython, []).handle("comm_info_request", {"target_name": "x"})
    assert reply == {"status": "ok", "comms": {}}


def test_input_asks_on_input_only_when_allowed(ipython: bool) -> None:
    """input() and getpass() ask on_input while stdin is allowed, and fail clearly not."""
    events: Events = []
    k = _kernel(ipython, events, answer="forty-two")
    refused = k.handle("execute_request", {"code": "input('name? ')"})
    assert refused["ename"] == "EOFError"
    assert "no front end" in refused["evalue"]
    assert "allow" in refused["evalue"]
    assert not [e for e in events if e[0] == "input"]
    k.allow_stdin = True
    assert k.handle("execute_request", {"code": "input('name? ')"})["result"] == "forty-two"
    reply = k.handle("execute_request", {"code": "import getpass; getpass.getpass('pw: ')"})
    assert reply["result"] == "forty-two"
    assert [e[1] for e in events if e[0] == "input"] == [("name? ", False), ("pw: ", True)]
    said_no = k.handle("execute_request", {"code": "input()", "allow_stdin": False})
    assert said_no["ename"] == "EOFError"
    import builtins

    assert builtins.input.__module__ == "builtins"  # put back after the request


def test_ipython_display_magics_shell_and_help() -> None:
    """With IPython: display(HTML) is text/html, updates and clears are notices, and
    %timeit, !cmd and x? run; push, pull and apply see the shell's namespace."""
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    events: Events = []
    k = _kernel(True, events)
    try:
        code = textwrap.dedent(
            """\
            from IPython.display import HTML, display, clear_output
            handle = display(HTML('<b>bold</b>'), display_id=True)
            handle.update(HTML('<i>new</i>'))
            clear_output(wait=True)
            %timeit -n1 -r1 pass
            !echo from-the-shell
            len?
            defined_here = 7
            """
        )
        reply = k.handle("execute_request", {"code": code})
        assert reply["status"] == "ok", reply
        kinds = [kind for kind, _ in events if kind not in ("stdout", "stderr")]
        assert kinds[:3] == ["display_data", "update_display_data", "clear_output"]
        shown = events[[kind for kind, _ in events].index("display_data")][1]
        assert shown["data"]["text/html"] == "<b>bold</b>"
        display_id = shown["transient"]["display_id"]
        updated = next(c for kind, c in events if kind == "update_display_data")
        assert updated["transient"]["display_id"] == display_id
        stdout = "".join(text for kind, text in events if kind == "stdout")
        assert "per loop" in stdout
        assert "from-the-shell" in stdout
        helps = [c for kind, c in events[3:] if kind == "display_data"]
        assert any("Return the number of items" in c["data"]["text/plain"] for c in helps)
        assert k.handle("pull_request", {"names": "defined_here"})["result"] == 7
        k.handle("push_request", {"namespace": {"pushed": 6}})
        assert k.handle("execute_request", {"code": "pushed * defined_here"})["result"] == 42
        applied = k.handle("apply_request", {"f": len, "args": (k.namespace["In"],), "kwargs": {}})
        assert applied["result"] >= 3  # the shell's own In list lives in the namespace
    finally:
        InteractiveShell.clear_instance()


def test_kernel_rejects_a_bad_ipython_argument() -> None:
    """Kernel(ipython=...) takes True, False or None only."""
    with pytest.raises(TypeError, match="ipython"):
        Kernel(ipython="yes")  # type: ignore[arg-type]


_WITHOUT_IPYTHON = textwrap.dedent(
    """\
    import json, sys
    sys.modules["IPython"] = None  # import IPython fails: as where it is not installed
    from shoal.engine import Kernel
    out = []
    k = Kernel(ipython=None, on_display=lambda kind, content: out.append(kind))
    answers = {
        "info": k.handle("kernel_info_request", {}),
        "run": k.handle("execute_request", {"code": "import os\\nx = 41\\nx + 1"}),
        "magic": k.handle("execute_request", {"code": "%timeit pass"}),
        "complete": k.handle("complete_request", {"code": "os.pa"}),
        "inspect": k.handle("inspect_request", {"code": "os.path.join"}),
        "is_complete": k.handle("is_complete_request", {"code": "if x:"}),
        "history": k.handle("history_request", {"hist_access_type": "tail", "n": 5}),
    }
    answers["display"] = out
    json.dump(answers, sys.stdout, default=repr)
    """
)


def test_without_ipython_plain_python_answers_everything() -> None:
    """Where IPython cannot be imported, the Kernel runs plain Python, says so in
    kernel_info, and still answers complete, inspect, is_complete and history."""
    ran = subprocess.run(
        [sys.executable, "-c", _WITHOUT_IPYTHON],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    answers = json.loads(ran.stdout)
    assert answers["info"]["ipython"] is False
    assert answers["info"]["ipython_version"] is None
    assert "plain Python" in answers["info"]["banner"]
    assert answers["run"]["result"] == 42
    assert answers["magic"]["ename"] == "SyntaxError"  # magics need IPython
    assert "os.path" in answers["complete"]["matches"]
    assert answers["inspect"]["found"] is True
    assert answers["is_complete"]["status"] == "incomplete"
    assert [h[2] for h in answers["history"]["history"]] == ["import os\nx = 41\nx + 1"]
    assert answers["display"] == ["execute_result"]
