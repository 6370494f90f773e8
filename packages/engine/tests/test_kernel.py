"""Kernel: the in-process shell request handler (PROTOCOL.md), without sockets."""

from __future__ import annotations

import io
import os
import signal
import sys
import types
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from shoal.engine._kernel import Kernel
from shoal.util import interactive
from shoal.wire import Serializer

# Where the Kernel lives: none of its frames may show in a traceback.
KERNEL_SRC = os.path.join("shoal", "engine", "_kernel.py")
ERROR_KEYS = {"status", "ename", "evalue", "traceback", "engine_id", "exception"}


@pytest.fixture
def kernel() -> Kernel:
    return Kernel(engine_id=3)


class Streams:
    """Collects what a Kernel streams, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, name: str, text: str) -> None:
        self.events.append((name, text))

    def text(self, name: str) -> str:
        return "".join(t for n, t in self.events if n == name)


def run(k: Kernel, code: str, **extra: Any) -> dict[str, Any]:
    return k.handle("execute_request", {"code": code, **extra})


def assert_error(reply: dict[str, Any], ename: str) -> None:
    assert set(reply) == ERROR_KEYS, reply
    assert reply["status"] == "error"
    assert reply["ename"] == ename, reply


# -- execute ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "result"),
    [
        ("x = 2\nx * 21", 42),
        ("x = 1", None),
        ("", None),
        ("1\n2\n3", 3),
        ("for i in range(3):\n    pass\ni", 2),
        ("if True:\n    y = 5\ny", 5),
    ],
)
def test_execute_returns_final_expression(kernel: Kernel, code: str, result: Any) -> None:
    """The value of a final expression statement is the result; otherwise None."""
    reply = run(kernel, code)
    assert reply == {"status": "ok", "execution_count": 1, "result": result}


def test_execute_runs_earlier_expressions_too(kernel: Kernel) -> None:
    """Expression statements before the last one run (only the last gives the result)."""
    reply = run(kernel, "log = []\nlog.append(1)\nlog.append(2)\nlog")
    assert reply["result"] == [1, 2]


def test_execution_count(kernel: Kernel) -> None:
    """Each execute counts once, errors included; silent ones do not count."""
    assert run(kernel, "1")["execution_count"] == 1
    assert run(kernel, "2")["execution_count"] == 2
    assert run(kernel, "3", silent=True)["execution_count"] == 2
    assert_error(run(kernel, "1 / 0"), "ZeroDivisionError")
    assert run(kernel, "4")["execution_count"] == 4
    assert kernel.execution_count == 4


def test_execute_user_future_flags_are_not_inherited(kernel: Kernel) -> None:
    """The Kernel's own `from __future__ import annotations` does not leak into user code."""
    reply = run(kernel, "def f(x: int) -> None: pass\nf.__annotations__['x']")
    assert reply["result"] is int


def test_execute_syntax_error(kernel: Kernel) -> None:
    """A syntax error is an error reply showing the bad line, with no Kernel frames."""
    reply = run(kernel, "x = = 1")
    assert_error(reply, "SyntaxError")
    assert "x = = 1" in reply["traceback"]
    assert KERNEL_SRC not in reply["traceback"]


# -- apply, push, pull, clear ----------------------------------------------------------


def test_apply_calls_function_with_args_and_kwargs(kernel: Kernel) -> None:
    """apply_request calls f(*args, **kwargs) and returns its value."""
    reply = kernel.handle(
        "apply_request", {"f": lambda a, b, *, c: (a, b, c), "args": (1, 2), "kwargs": {"c": 3}}
    )
    assert reply == {"status": "ok", "result": (1, 2, 3)}


def test_apply_args_and_kwargs_default_to_empty(kernel: Kernel) -> None:
    """Without args and kwargs, f is called with none."""
    assert kernel.handle("apply_request", {"f": lambda: "called"})["result"] == "called"


def test_push_then_pull(kernel: Kernel) -> None:
    """Pushed names land in the namespace, and pull returns one value or a list."""
    assert kernel.handle("push_request", {"namespace": {"a": 1, "b": [2]}}) == {"status": "ok"}
    assert kernel.namespace["a"] == 1
    assert kernel.handle("pull_request", {"names": "b"}) == {"status": "ok", "result": [2]}
    assert kernel.handle("pull_request", {"names": ["a", "b"]})["result"] == [1, [2]]
    assert kernel.handle("pull_request", {"names": []})["result"] == []


def test_push_is_seen_by_execute(kernel: Kernel) -> None:
    """Code sees pushed names, and pull sees names code assigned."""
    kernel.handle("push_request", {"namespace": {"n": 20}})
    run(kernel, "m = n + 1")
    assert kernel.handle("pull_request", {"names": "m"})["result"] == 21


def test_pull_expression(kernel: Kernel) -> None:
    """A pulled name may be an expression evaluated in the namespace."""
    kernel.handle("push_request", {"namespace": {"d": {"k": [1, 2, 3]}}})
    reply = kernel.handle("pull_request", {"names": ["d['k'][1] * 10", "len(d)"]})
    assert reply["result"] == [20, 1]


def test_pull_missing_name(kernel: Kernel) -> None:
    """Pulling a missing name is a NameError reply that names it."""
    reply = kernel.handle("pull_request", {"names": ["missing_thing"]})
    assert_error(reply, "NameError")
    assert "missing_thing" in reply["evalue"]
    assert KERNEL_SRC not in reply["traceback"]


def test_clear_empties_namespace_but_keeps_builtins(kernel: Kernel) -> None:
    """clear_request drops user names, keeps __name__ and __builtins__; code still runs."""
    kernel.handle("push_request", {"namespace": {"a": 1}})
    run(kernel, "def f(): pass")
    assert kernel.handle("clear_request", {}) == {"status": "ok"}
    assert set(kernel.namespace) == {"__name__", "__builtins__"}
    assert kernel.namespace["__name__"] == "__main__"
    assert_error(kernel.handle("pull_request", {"names": "a"}), "NameError")
    assert run(kernel, "len('abc')")["result"] == 3


def test_given_namespace_is_used(kernel: Kernel) -> None:
    """A namespace passed in is the one code runs in, not a copy."""
    ns: dict[str, Any] = {"__name__": "__main__", "seed": 7}
    k = Kernel(ns)
    run(k, "out = seed * 6")
    assert ns["out"] == 42
    assert k.namespace is ns


# -- output streaming ------------------------------------------------------------------


def test_streams_in_order() -> None:
    """stdout and stderr writes reach on_stream as written, interleaved in order."""
    streams = Streams()
    k = Kernel(on_stream=streams)
    code = "import sys\nprint('a')\nsys.stderr.write('b')\nprint('c', end='')\n"
    assert run(k, code)["status"] == "ok"
    assert streams.events == [("stdout", "a"), ("stdout", "\n"), ("stderr", "b"), ("stdout", "c")]


def test_output_before_exception_is_streamed() -> None:
    """Output written before user code raises is streamed; the error still replies."""
    streams = Streams()
    k = Kernel(on_stream=streams)
    assert_error(run(k, "print('before')\n1 / 0\nprint('after')"), "ZeroDivisionError")
    assert streams.text("stdout") == "before\n"


def test_streams_are_restored() -> None:
    """sys.stdout/sys.stderr are the originals again after success and after failure."""
    before = sys.stdout, sys.stderr
    k = Kernel(on_stream=Streams())
    run(k, "print(1)")
    assert (sys.stdout, sys.stderr) == before
    run(k, "raise KeyboardInterrupt")
    assert (sys.stdout, sys.stderr) == before
    k.handle("apply_request", {"f": sys.exit, "args": (1,)})
    assert (sys.stdout, sys.stderr) == before


def test_apply_output_is_streamed() -> None:
    """Output of an applied function is streamed too."""
    streams = Streams()
    k = Kernel(on_stream=streams)
    k.handle("apply_request", {"f": print, "args": ("hi",), "kwargs": {"file": None}})
    assert streams.text("stdout") == "hi\n"


def test_without_on_stream_output_goes_to_process_streams(
    kernel: Kernel, capsys: pytest.CaptureFixture[str]
) -> None:
    """With on_stream None nothing is redirected."""
    run(kernel, "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert capsys.readouterr() == ("out\n", "err\n")


def test_stream_writer_is_file_like() -> None:
    """The writers have write/flush/isatty/encoding and a fileno that refuses."""
    k = Kernel(on_stream=Streams())
    code = (
        "import sys\n"
        "w = sys.stdout\n"
        "fileno_error = None\n"
        "try:\n"
        "    w.fileno()\n"
        "except Exception as e:\n"
        "    fileno_error = e\n"
        "w.flush()\n"
        "(w.isatty(), w.encoding, w.writable(), w.write('xyz'), fileno_error)"
    )
    isatty, encoding, writable, written, fileno_error = run(k, code)["result"]
    assert (isatty, encoding, writable, written) == (False, "utf-8", True, 3)
    assert isinstance(fileno_error, io.UnsupportedOperation)


def test_stream_writer_rejects_bytes() -> None:
    """Writing bytes fails like on a real text stream, as a TypeError reply."""
    reply = run(Kernel(on_stream=Streams()), "import sys\nsys.stdout.write(b'x')")
    assert_error(reply, "TypeError")
    assert "bytes" in reply["evalue"]


# -- errors from user code -------------------------------------------------------------


def test_error_reply_for_user_exception(kernel: Kernel) -> None:
    """A failing cell gives ename, evalue, traceback with the user's line, and the exception."""
    reply = run(kernel, "a = 1\nb = a / 0")
    assert_error(reply, "ZeroDivisionError")
    assert reply["evalue"] == "division by zero"
    assert reply["engine_id"] == 3
    assert isinstance(reply["exception"], ZeroDivisionError)
    tb = reply["traceback"]
    assert tb.startswith('Traceback (most recent call last):\n  File "<shoal-input-1>", line 2')
    assert "b = a / 0" in tb
    assert KERNEL_SRC not in tb
    assert "handle" not in tb


def test_traceback_shows_lines_of_earlier_cells(kernel: Kernel) -> None:
    """A function defined in one cell and failing in a later one shows both cells' lines."""
    run(kernel, "def boom(x):\n    return {}[x]")
    reply = run(kernel, "boom('key')")
    assert_error(reply, "KeyError")
    tb = reply["traceback"]
    assert "boom('key')" in tb
    assert "return {}[x]" in tb
    assert tb.index("<shoal-input-2>") < tb.index("<shoal-input-1>")


def test_apply_error_traceback_starts_at_user_function(kernel: Kernel) -> None:
    """An applied function's error traceback starts at that function, not in the Kernel."""

    def fails() -> None:
        raise RuntimeError("from user")

    reply = kernel.handle("apply_request", {"f": fails})
    assert_error(reply, "RuntimeError")
    frames = reply["traceback"].splitlines()
    assert frames[1].startswith(f'  File "{__file__}"')
    assert "in fails" in frames[1]
    assert KERNEL_SRC not in reply["traceback"]


class HoldsGenerator(Exception):
    """An exception that neither pickle nor dill can serialize."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.gen = (i for i in range(3))


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt: __init__ takes two arguments, args holds one."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}-{b}")


def raise_(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("exc", "ename", "evalue"),
    [
        (HoldsGenerator("gen inside"), "HoldsGenerator", "gen inside"),
        (NeedsTwoArgs("x", "y"), "NeedsTwoArgs", "x-y"),
    ],
)
def test_unserializable_exception_travels_as_text(
    kernel: Kernel, exc: BaseException, ename: str, evalue: str
) -> None:
    """An exception that does not survive serialization gives exception None, text intact."""
    reply = kernel.handle("apply_request", {"f": raise_, "args": (exc,)})
    assert_error(reply, ename)
    assert reply["exception"] is None
    assert reply["evalue"] == evalue
    assert f"{ename}: {evalue}" in reply["traceback"]


def test_serializable_exception_object_round_trips(kernel: Kernel) -> None:
    """The exception in an error reply can be serialized by shoal.wire."""
    reply = run(kernel, "raise ValueError('bad value', 7)")
    s = Serializer()
    back = s.loads(s.dumps(reply))
    assert isinstance(back["exception"], ValueError)
    assert back["exception"].args == ("bad value", 7)


def test_broken_str_does_not_break_reply(kernel: Kernel) -> None:
    """An exception whose __str__ raises still gives an error reply."""
    code = "class Bad(Exception):\n    def __str__(self):\n        raise RuntimeError\nraise Bad()"
    reply = run(kernel, code)
    assert_error(reply, "Bad")
    assert "Bad" in reply["evalue"]


@pytest.mark.parametrize(
    ("code", "ename"),
    [
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
        ("import sys\nsys.exit(3)", "SystemExit"),
        ("raise SystemExit", "SystemExit"),
        ("raise GeneratorExit", "GeneratorExit"),
    ],
)
def test_base_exceptions_become_replies(kernel: Kernel, code: str, ename: str) -> None:
    """KeyboardInterrupt, SystemExit and other BaseExceptions reply; the Kernel still works."""
    assert_error(run(kernel, code), ename)
    assert run(kernel, "40 + 2")["result"] == 42


def test_system_exit_code_in_evalue(kernel: Kernel) -> None:
    """sys.exit(3) replies SystemExit with evalue '3'."""
    assert run(kernel, "import sys\nsys.exit(3)")["evalue"] == "3"


@pytest.fixture
def default_sigint() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("default_sigint")
def test_real_sigint_interrupts_user_code(kernel: Kernel) -> None:
    """A SIGINT delivered while user code runs gives a KeyboardInterrupt reply."""
    code = "import signal\nsignal.raise_signal(signal.SIGINT)\nnot_reached = True"
    reply = run(kernel, code)
    assert_error(reply, "KeyboardInterrupt")
    assert "not_reached" not in kernel.namespace
    assert run(kernel, "'alive'")["result"] == "alive"


# -- bad requests ----------------------------------------------------------------------


def test_unknown_msg_type(kernel: Kernel) -> None:
    """An unknown msg_type is a ValueError reply naming it and the known types."""
    reply = kernel.handle("frobnicate_request", {})
    assert_error(reply, "ValueError")
    assert "'frobnicate_request'" in reply["evalue"]
    assert "execute_request" in reply["evalue"]
    assert "describe_request" in reply["evalue"]
    assert reply["traceback"] == f"ValueError: {reply['evalue']}\n"


@pytest.mark.parametrize(
    ("msg_type", "content", "message"),
    [
        ("execute_request", {"code": 1}, "execute_request needs content['code'] as str, got int"),
        ("execute_request", {}, "execute_request needs content['code'] as str, got nothing"),
        ("execute_request", {"code": "1", "silent": "yes"}, "content['silent'] as bool, got str"),
        ("apply_request", {"f": 5}, "apply_request needs content['f'] as a callable, got int"),
        ("apply_request", {}, "apply_request needs content['f'] as a callable, got nothing"),
        ("apply_request", {"f": print, "args": 1}, "content['args'] as tuple, got int"),
        ("apply_request", {"f": print, "kwargs": {1: 2}}, "content['kwargs'] with str keys"),
        ("push_request", {"namespace": [1]}, "content['namespace'] as dict, got list"),
        ("push_request", {"namespace": {2: 1}}, "got the key 2 (int)"),
        ("pull_request", {"names": 3}, "content['names'] as str or list[str], got int"),
        ("pull_request", {"names": ["a", 3]}, "got a list holding int"),
        ("execute_request", ["code"], "execute_request needs its content as a dict, got list"),
    ],
)
def test_bad_content(
    kernel: Kernel, msg_type: str, content: Mapping[str, Any], message: str
) -> None:
    """Missing or ill-typed content fields give a TypeError reply naming the field."""
    reply = kernel.handle(msg_type, content)
    assert_error(reply, "TypeError")
    assert message in reply["evalue"]
    assert KERNEL_SRC not in reply["traceback"]


def test_bad_msg_type_type(kernel: Kernel) -> None:
    """A msg_type that is not a str is an error reply, not an exception."""
    assert_error(kernel.handle(None, {}), "TypeError")  # type: ignore[arg-type]


# -- object store delegation -----------------------------------------------------------


class FakeStore:
    """Stands in for ObjectStore: records requests, prints, and fails on demand."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Mapping[str, Any]]] = []

    def handle(self, msg_type: str, content: Mapping[str, Any]) -> dict[str, Any]:
        self.seen.append((msg_type, content))
        print("store says hi")
        if content.get("fail"):
            raise LookupError("no such thing")
        return {"status": "ok", "ref": {"id": 1, "type": "builtins.int"}}


@pytest.mark.parametrize(
    "msg_type",
    [
        "store_request",
        "call_method_request",
        "getattr_request",
        "setattr_request",
        "incref_request",
        "decref_request",
        "describe_request",
    ],
)
def test_object_requests_are_delegated(msg_type: str) -> None:
    """Object-store requests go to objects.handle, with their output streamed."""
    store, streams = FakeStore(), Streams()
    k = Kernel(objects=store, on_stream=streams)
    content = {"obj": 5}
    assert k.handle(msg_type, content) == {"status": "ok", "ref": {"id": 1, "type": "builtins.int"}}
    assert store.seen == [(msg_type, content)]
    assert streams.text("stdout") == "store says hi\n"


def test_object_store_exception_becomes_reply() -> None:
    """If objects.handle raises, the Kernel replies with the error."""
    reply = Kernel(objects=FakeStore(), engine_id=1).handle("getattr_request", {"fail": True})
    assert_error(reply, "LookupError")
    assert reply["engine_id"] == 1


def test_object_requests_without_store(kernel: Kernel) -> None:
    """Without objects, object-store requests are an error reply saying so."""
    reply = kernel.handle("store_request", {"obj": 1})
    assert_error(reply, "ValueError")
    assert "store_request" in reply["evalue"]
    assert "no object store" in reply["evalue"]


# -- interactive functions -------------------------------------------------------------


@pytest.fixture
def fake_main(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A fresh __main__ module, as in an engine process."""
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    return main


@pytest.mark.parametrize("serialize", [False, True])
def test_interactive_function_sees_pushed_names(
    fake_main: types.ModuleType, serialize: bool
) -> None:
    """An @interactive function applied on a Kernel over __main__ sees pushed names."""

    @interactive
    def scale() -> Any:
        return a * factor  # type: ignore[name-defined]  # noqa: F821

    k = Kernel(fake_main.__dict__)
    k.handle("push_request", {"namespace": {"a": 3, "factor": 7}})
    f = scale
    if serialize:
        s = Serializer()
        f = s.loads(s.dumps(scale))
    assert k.handle("apply_request", {"f": f}) == {"status": "ok", "result": 21}


def test_function_defined_in_kernel_sees_pushed_names(kernel: Kernel) -> None:
    """A function made by execute and applied later resolves globals in the namespace."""
    run(kernel, "def total():\n    return sum(values)")
    f = kernel.handle("pull_request", {"names": "total"})["result"]
    kernel.handle("push_request", {"namespace": {"values": [1, 2, 3]}})
    assert kernel.handle("apply_request", {"f": f})["result"] == 6
