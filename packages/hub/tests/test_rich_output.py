"""Engines as kernels, seen from a Client on a real cluster: rich output (display(),
results) kept per task and shown by display_outputs, view.complete / view.inspect,
input() answered by the client or refused clearly, and IPython's magics on engines."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout

import pytest

from shoal.hub import Client, RemoteError
from shoal.hub.testing import RunningCluster, wait_until

pytestmark = pytest.mark.timeout(120)

pytest.importorskip("IPython")  # the engines of the test env run code through IPython


def _show_html() -> str:
    """Runs on an engine: display HTML from an applied function (not a cell)."""
    from IPython.display import HTML, display

    display(HTML("<p>from apply</p>"))
    return "shown"


@pytest.fixture
def asking(cluster: RunningCluster) -> Iterator[tuple[Client, list[tuple[str, bool]]]]:
    """A Client that allows stdin and answers every input() itself, noting the prompts."""
    asked: list[tuple[str, bool]] = []

    def answer(prompt: str, password: bool) -> str:
        asked.append((prompt, password))
        return "secret" if password else f"answer to {prompt.strip()}"

    client = Client(url_file=cluster.url_file, allow_stdin=True, input_handler=answer)
    try:
        yield client, asked
    finally:
        client.close()


def test_display_html_arrives_as_text_html(client: Client) -> None:
    """display(HTML) in a cell reaches AsyncResult.outputs as a text/html mime bundle,
    per engine, with the cell's result as execute_result."""
    code = "from IPython.display import HTML, display\ndisplay(HTML('<b>hi</b>'))\n6 * 7"
    ar = client[:].execute(code, block=False)
    assert ar.get(30) == [42, 42]
    outputs = ar.outputs
    assert len(outputs) == 2
    for engine_outputs in outputs:
        assert isinstance(engine_outputs, list)
        kinds = [o["msg_type"] for o in engine_outputs]
        assert kinds == ["display_data", "execute_result"]
        assert engine_outputs[0]["data"]["text/html"] == "<b>hi</b>"
        assert engine_outputs[1]["data"]["text/plain"] == "42"


def test_display_from_an_applied_function(client: Client) -> None:
    """display() in an applied function is rich output of that task too."""
    ar = client[0].apply_async(_show_html)
    assert ar.get(30) == "shown"
    outputs = ar.outputs
    assert [o["msg_type"] for o in outputs] == ["display_data"]  # type: ignore[index]
    assert outputs[0]["data"]["text/html"] == "<p>from apply</p>"  # type: ignore[call-overload]


def test_update_and_clear_output_are_kept_in_order(client: Client) -> None:
    """update_display and clear_output arrive as their own outputs, the display id kept."""
    code = textwrap.dedent(
        """\
        from IPython.display import clear_output, display
        handle = display('first', display_id=True)
        handle.update('second')
        clear_output(wait=True)
        """
    )
    ar = client[1].execute(code, block=False)
    ar.get(30)
    outputs = ar.outputs
    kinds = [o["msg_type"] for o in outputs]  # type: ignore[index]
    assert kinds == ["display_data", "update_display_data", "clear_output"]
    first, second, cleared = outputs
    assert first["transient"]["display_id"] == second["transient"]["display_id"]  # type: ignore[index]
    assert second["data"]["text/plain"] == "'second'"  # type: ignore[index]
    assert cleared["wait"] is True  # type: ignore[index]


def test_display_outputs_groups_rich_output_by_engine(client: Client) -> None:
    """Outside IPython, display_outputs prints each engine's streams then its rich
    output as text, engine after engine."""
    code = (
        "print('printed')\nfrom IPython.display import HTML, display\ndisplay(HTML('<b>x</b>'))\n1"
    )
    ar = client[:].execute(code, block=False)
    ar.get(30)
    out = io.StringIO()
    with redirect_stdout(out):
        ar.display_outputs()
    # The execution count depends on what ran on the shared cluster before: not checked.
    lines = [re.sub(r"^Out\[(\d+):\d+\]", r"Out[\1:n]", x) for x in out.getvalue().splitlines()]
    assert lines == [
        "[stdout:0] printed",
        "[output:0] <IPython.core.display.HTML object>",
        "Out[0:n]: 1",
        "[stdout:1] printed",
        "[output:1] <IPython.core.display.HTML object>",
        "Out[1:n]: 1",
    ]
    with redirect_stdout(out := io.StringIO()):
        ar.display_outputs(groupby="type")
    lines = [re.sub(r"^Out\[(\d+):\d+\]", r"Out[\1:n]", x) for x in out.getvalue().splitlines()]
    assert [line.split("]")[0] for line in lines] == [
        "[stdout:0",
        "[stdout:1",
        "[output:0",
        "Out[0:n",
        "[output:1",
        "Out[1:n",
    ]


_IN_IPYTHON = textwrap.dedent(
    """\
    import sys
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.core.displaypub import DisplayPublisher
    shown = []

    class Recorder(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kw):
            shown.append((sorted(data), update))

    shell = InteractiveShell.instance()
    shell.display_pub = Recorder(shell=shell)
    from shoal.hub import Client
    client = Client(url_file=sys.argv[1])
    ar = client[:].execute(
        "from IPython.display import HTML, display\\ndisplay(HTML('<b>x</b>'))", block=False
    )
    ar.get(30)
    ar.display_outputs()
    client.close()
    print(shown)
    """
)


def test_display_outputs_publishes_rich_output_in_ipython(cluster: RunningCluster) -> None:
    """In an IPython session, display_outputs publishes the engines' mime bundles (a
    notebook renders the HTML), one per engine."""
    ran = subprocess.run(
        [sys.executable, "-c", _IN_IPYTHON, cluster.url_file],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    shown = ran.stdout.strip().splitlines()[-1]
    bundle = "(['text/html', 'text/plain'], False)"
    assert shown == f"[{bundle}, {bundle}]"


def test_complete_and_inspect_from_a_view(client: Client) -> None:
    """view.complete and view.inspect answer with the engines' complete/inspect reply
    content: a dict for one engine, a list for several."""
    client[:].execute("import os\ndef twice(x):\n    'Double it.'\n    return 2 * x", block=True)
    reply = client[0].complete("os.pa")
    assert isinstance(reply, dict)
    assert reply["status"] == "ok"
    start, end = reply["cursor_start"], reply["cursor_end"]
    assert isinstance(start, int)
    assert isinstance(end, int)
    matches = reply["matches"]
    assert isinstance(matches, list)
    assert "os.path" in ["os.pa"[:start] + m + "os.pa"[end:] for m in matches]
    replies = client[:].inspect("twice(1", 6)
    assert isinstance(replies, list)
    assert len(replies) == 2
    for one in replies:
        assert one["found"] is True
        data = one["data"]
        assert isinstance(data, dict)
        assert "Double it." in data["text/plain"]
    missing = client[1].inspect("no_such_thing")
    assert isinstance(missing, dict)
    assert missing["found"] is False
    with pytest.raises(ValueError, match="cursor_pos"):
        client[0].complete("os", 5)
    with pytest.raises(ValueError, match="detail_level"):
        client[0].inspect("os", detail_level=3)


def test_input_is_answered_by_the_client(
    asking: tuple[Client, list[tuple[str, bool]]],
) -> None:
    """input() and getpass() in tasks ask the client's input_handler, through every
    route: a cell, an applied function, a load-balanced task."""
    client, asked = asking
    assert client.allow_stdin is True
    assert client[0].execute("input('name? ')", block=True) == "answer to name?"
    pw = client[1].apply_sync(lambda: __import__("getpass").getpass("pw: "))
    assert pw == "secret"
    lb = client.load_balanced_view().apply_sync(lambda: input("lb? "))
    assert lb == "answer to lb?"
    assert [a for a in asked if a[0] == "name? "] == [("name? ", False)]
    assert ("pw: ", True) in asked


def test_input_is_refused_clearly_without_a_front_end(cluster: RunningCluster) -> None:
    """A client that does not allow stdin gets an EOFError naming why, at once."""
    client = Client(url_file=cluster.url_file, allow_stdin=False)
    try:
        with pytest.raises(RemoteError) as info:
            client[0].execute("input('anyone? ')", block=False).get(30)
        assert info.value.ename == "EOFError"
        assert "no front end" in info.value.evalue
        assert "allow_stdin" in info.value.evalue
    finally:
        client.close()


def test_a_failing_input_handler_fails_the_task_s_input(cluster: RunningCluster) -> None:
    """What the input_handler raises reaches the task's input() as an EOFError."""

    def cannot(prompt: str, password: bool) -> str:
        raise OSError("no terminal here")

    client = Client(url_file=cluster.url_file, allow_stdin=True, input_handler=cannot)
    try:
        with pytest.raises(RemoteError) as info:
            client[0].execute("input('? ')", block=False).get(30)
        assert info.value.ename == "EOFError"
        assert "no terminal here" in info.value.evalue
    finally:
        client.close()


def test_interrupt_while_input_waits(cluster: RunningCluster) -> None:
    """A task waiting for input() is interrupted like any other, and the engine serves."""
    asked = threading.Event()
    release = threading.Event()

    def slow(prompt: str, password: bool) -> str:
        asked.set()
        release.wait(60)
        return "too late"

    client = Client(url_file=cluster.url_file, allow_stdin=True, input_handler=slow)
    try:
        ar = client[0].execute("input('wait? ')", block=False)
        wait_until(asked.is_set, timeout=30)
        client[0].interrupt()
        with pytest.raises(RemoteError) as info:
            ar.get(30)
        assert info.value.ename == "KeyboardInterrupt"
        release.set()  # its late answer must not reach the next input()
        assert client[0].apply_sync(int, "7") == 7
    finally:
        release.set()
        client.close()


@pytest.mark.parametrize(
    ("code", "check"),
    [
        ("%timeit -n1 -r1 pass", lambda out: "per loop" in out),
        ("!echo from-a-shell", lambda out: "from-a-shell" in out),
    ],
    ids=["timeit", "shell"],
)
def test_ipython_syntax_runs_on_engines(
    client: Client, code: str, check: Callable[[str], bool]
) -> None:
    """Magics and !commands are IPython's, not syntax errors."""
    ar = client[0].execute(code, block=False)
    ar.get(30)
    assert check(str(ar.stdout)), ar.stdout


def test_help_syntax_shows_help_as_output(client: Client) -> None:
    """x? shows the help as display output."""
    ar = client[0].execute("len?", block=False)
    ar.get(30)
    texts = [o["data"]["text/plain"] for o in ar.outputs]  # type: ignore[index]
    assert any("Return the number of items" in t for t in texts), texts
