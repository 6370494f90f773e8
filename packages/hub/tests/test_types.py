"""What the public API says comes back, as a type checker sees it from user code.

One mypy run over a snippet of user code; each ``reveal_type`` line ends with the type
mypy must reveal (``# -> list[int]``), each line that must not type check with the error
code it must get (``# error: call-arg``). Module paths are dropped from revealed types
(``shoal.hub._client.views.DirectView[int]`` reads ``DirectView[int]``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SNIPPET = textwrap.dedent(
    """\
    from __future__ import annotations

    from collections.abc import Callable

    from shoal.hub import AsyncResult, Client, DirectView, Executor, LoadBalancedView, Pool
    from shoal.hub import Remote, apply, call_all, call_async, gather, scatter, vectorize


    def f() -> int:
        return 1


    def g(x: int) -> str:
        return str(x)


    def views(rc: Client) -> None:
        one = DirectView(rc, 0)
        many = DirectView(rc, [0, 1])
        lb = LoadBalancedView(rc)
        reveal_type(one)  # -> DirectView[int]
        reveal_type(many)  # -> DirectView[list[int]]
        reveal_type(one.apply_sync(f))  # -> int
        reveal_type(many.apply_sync(f))  # -> list[int]
        reveal_type(lb.apply_sync(f))  # -> int
        reveal_type(many.apply_async(f))  # -> AsyncResult[list[int]]
        reveal_type(lb.apply_async(f).get())  # -> int
        reveal_type(many.apply(f))  # -> list[int] | AsyncResult[list[int]]
        reveal_type(lb.apply(f))  # -> int | AsyncResult[int]
        many.apply(f, block=False)  # error: call-arg
        many.apply_sync(g)  # error: call-arg
        reveal_type(many.map_sync(g, range(3)))  # -> list[str]
        reveal_type(lb.map(g, range(3), block=True))  # -> list[str]
        reveal_type(lb.map(g, range(3), block=False))  # -> AsyncMapResult[str]
        reveal_type(lb.map(g, range(3)))  # -> list[str] | AsyncMapResult[str]
        reveal_type(lb.map_async(g, range(3)).get())  # -> list[str]
        reveal_type(next(iter(lb.map_async(g, range(3)))))  # -> str
        reveal_type(lb.imap(g, range(3)))  # -> Iterator[str]
        reveal_type(one.pull("a", block=True))  # -> object
        reveal_type(many.pull("a", block=True))  # -> list[object]
        reveal_type(many.pull("a", block=False))  # -> AsyncResult[list[object]]
        reveal_type(one["a"])  # -> object
        reveal_type(many["a"])  # -> list[object]
        reveal_type(many.execute("a = 1", block=True))  # -> list[object]
        reveal_type(many.push({"a": 1}, block=True))  # -> list[None]
        reveal_type(one.clear(block=False))  # -> AsyncResult[None]
        reveal_type(many.scatter("a", [1, 2], block=True))  # -> None
        reveal_type(many.gather("a", block=False))  # -> AsyncResult[object]
        reveal_type(one.status())  # -> dict[str, object]
        reveal_type(many.status())  # -> list[dict[str, object]]

        @many.remote(block=True)
        def h(x: int) -> float:
            return float(x)

        reveal_type(h)  # -> def (x: int) -> list[float]

        @many.parallel(block=False)
        def p(xs: list[int]) -> int:
            return len(xs)

        reveal_type(p([1, 2]))  # -> AsyncResult[object]
        reveal_type(p.map([1, 2]))  # -> AsyncMapResult[int]
        result: AsyncResult[int] = lb.apply_async(f)
        reveal_type(result.result())  # -> int


    def pool(pool: Pool, executor: Executor) -> None:
        reveal_type(pool.apply(f))  # -> int
        reveal_type(pool.apply_async(g, (1,)).get())  # -> str
        reveal_type(pool.map(g, range(3)))  # -> list[str]
        reveal_type(pool.map_async(g, range(3)).get())  # -> list[str]
        reveal_type(pool.starmap(g, [(1,), (2,)]))  # -> list[str]
        reveal_type(next(pool.imap_unordered(g, range(3))))  # -> str
        reveal_type(executor.submit(g, 1))  # -> AsyncResult[str]
        executor.submit(g, "1")  # error: arg-type
        reveal_type(executor.map(g, range(3)))  # -> Iterator[str]


    class Box:
        def __shoal_gather__(self) -> Callable[[], int]:
            return lambda: 1


    def remote(proxy: Remote, proxies: list[Remote]) -> None:
        reveal_type(scatter([1, 2]))  # -> list[Remote]
        reveal_type(scatter({"a": 1}, split=False))  # -> Remote
        reveal_type(scatter({"a": 1}))  # -> Remote | list[Remote] | tuple[Remote, ...]
        reveal_type(gather(proxy))  # -> object
        reveal_type(gather(Box()))  # -> int
        reveal_type(apply(g, proxy))  # -> str
        reveal_type(apply(g, proxies))  # -> list[str]
        reveal_type(vectorize(g)(proxies))  # -> list[str]
        reveal_type(call_all(proxies, "append", 1))  # -> list[object]
        reveal_type(call_async(proxy, "pop").result())  # -> object


    def client(rc: Client) -> None:
        reveal_type(rc[0])  # -> DirectView[int]
        reveal_type(rc[:])  # -> DirectView[list[int]]
        reveal_type(rc[0].apply_sync(f))  # -> int
        reveal_type(rc[:].apply_sync(f))  # -> list[int]
        reveal_type(rc[[0, 2]].apply_async(f))  # -> AsyncResult[list[int]]
        reveal_type(rc[:].map_sync(g, range(3)))  # -> list[str]
        reveal_type(rc.load_balanced_view().apply_sync(f))  # -> int
    """
)

_MODULE_PATH = re.compile(r"\b(?:[a-z_][a-z0-9_]*\.)+(?=[A-Za-z_])")
_OUTPUT = re.compile(r"^snippet\.py:(\d+): (note|error): (.*?)(?:  \[([a-z-]+)\])?$")


def _expectations() -> tuple[dict[int, str], dict[int, str]]:
    reveals, errors = {}, {}
    for number, line in enumerate(SNIPPET.splitlines(), start=1):
        if "# -> " in line:
            reveals[number] = line.split("# -> ", 1)[1].strip()
        elif "# error: " in line:
            errors[number] = line.split("# error: ", 1)[1].strip()
    return reveals, errors


@pytest.mark.timeout(120)
def test_reveal_types(tmp_path: Path) -> None:
    """mypy reveals the documented return types of the client, views, results, pool and
    remote objects in user code."""
    pytest.importorskip("mypy", reason="mypy is in the lint env; this env lacks it")
    (tmp_path / "snippet.py").write_text(SNIPPET)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",  # the library's own errors are lint's business
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(tmp_path / "cache"),  # one per run: xdist workers never share one
            "snippet.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    revealed: dict[int, str] = {}
    errors: dict[int, str] = {}
    for line in run.stdout.splitlines():
        match = _OUTPUT.match(line)
        assert match, f"unexpected mypy output: {line}\n{run.stdout}{run.stderr}"
        number, kind, text, code = int(match[1]), match[2], match[3], match[4]
        if kind == "note" and text.startswith("Revealed type is "):
            revealed[number] = _MODULE_PATH.sub("", text.removeprefix("Revealed type is ")[1:-1])
        elif kind == "error":
            errors[number] = code or text
    want_reveals, want_errors = _expectations()
    assert revealed == want_reveals
    assert errors == want_errors
