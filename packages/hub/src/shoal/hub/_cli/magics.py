"""IPython magics: ``%px``, ``%%px``, ``%autopx``, ``%pxresult``, ``%pxconfig``.

``%load_ext shoal.hub`` registers them. They run code on a DirectView: by default every
engine of the most recently connected :class:`Client`, blocking; ``%pxconfig`` or the
magics' own options change that.
"""

from __future__ import annotations

import argparse
import re
import shlex
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from .._client.asyncresult import AsyncResult
from .._client.client import current_client
from .._client.errors import CompositeError

if TYPE_CHECKING:
    from .._client.views import DirectView

__all__ = ["ParallelMagics", "load_ipython_extension"]


# An option of %px at the start of a line: the code follows it.
_LEADING_OPTION = re.compile(
    r"\s*(?:(?:--targets|-t|--group-outputs)(?:\s+|=)\S+|--block|--noblock)(?=\s|$)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="%px", add_help=False, exit_on_error=False)
    parser.add_argument("--targets", "-t", default=None, help="e.g. 0,2 or all")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--block", dest="block", action="store_true", default=None)
    group.add_argument("--noblock", dest="block", action="store_false")
    parser.add_argument(
        "--group-outputs",
        choices=["engine", "order", "type"],
        default=None,
        help="print output per engine, in engine order, or stdout then stderr",
    )
    return parser


@magics_class
class ParallelMagics(Magics):
    """The ``%px`` family, bound to one IPython shell."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.targets: str | None = None  # None: all engines
        self.block = True
        self.group_outputs = "engine"
        self.last_result: AsyncResult[Any] | None = None
        self._autopx = False

    def _view(self, targets: str | None) -> DirectView[list[int]]:
        client = current_client()
        spec = targets if targets is not None else self.targets
        if spec in (None, "all"):
            return client[:]
        ids = [int(t) for t in str(spec).replace(" ", "").split(",") if t]
        return client[ids]

    def _parse(self, line: str) -> tuple[argparse.Namespace, str]:
        """The options at the start of ``line``, and the code after them, verbatim (its
        quotes are Python's, not the shell's)."""
        argv, pos = [], 0
        while match := _LEADING_OPTION.match(line, pos):
            argv.extend(shlex.split(match.group(0)))
            pos = match.end()
        return _parser().parse_args(argv), line[pos:].strip()

    @line_cell_magic
    def px(self, line: str, cell: str | None = None) -> AsyncResult[list[object]] | None:
        """Run code on the engines: ``%px a = 1`` or a ``%%px [--targets 0,1] [--noblock]``
        cell."""
        args, code = self._parse(line)
        if cell is not None:
            code = cell
        if not code.strip():
            raise ValueError("%px needs code to run, e.g. %px import numpy as np")
        view = self._view(args.targets)
        block = self.block if args.block is None else args.block
        result = view.execute(code, block=False)
        self.last_result = result
        if not block:
            return result
        self._show(result, args.group_outputs or self.group_outputs)
        return None

    def _show(self, result: AsyncResult[Any], grouping: str) -> None:
        try:
            value = result.get()
        except CompositeError as err:
            self._print_outputs(result, grouping)
            print(err.render_traceback())
            return
        except Exception as err:
            self._print_outputs(result, grouping)
            render = getattr(err, "render_traceback", None)
            print(render() if render else f"{type(err).__name__}: {err}")
            return
        self._print_outputs(result, grouping)
        values = value if isinstance(value, list) else [value]
        engines = result.engine_id if isinstance(result.engine_id, list) else [result.engine_id]
        for engine, v in zip(engines, values, strict=False):
            if v is not None:
                print(f"Out[{engine}]: {v!r}")

    @staticmethod
    def _print_outputs(result: AsyncResult[Any], grouping: str) -> None:
        outs = result.stdout if isinstance(result.stdout, list) else [result.stdout]
        errs = result.stderr if isinstance(result.stderr, list) else [result.stderr]
        engines = result.engine_id if isinstance(result.engine_id, list) else [result.engine_id]
        rows = list(zip(engines, outs, errs, strict=False))
        if grouping == "type":
            for name, index in (("stdout", 1), ("stderr", 2)):
                for row in rows:
                    if row[index]:
                        print(f"[{name}:{row[0]}] {row[index]}", end="")
            return
        for engine, out, err in rows:
            if out:
                print(f"[stdout:{engine}] {out}", end="" if out.endswith("\n") else "\n")
            if err:
                print(f"[stderr:{engine}] {err}", end="" if err.endswith("\n") else "\n")

    @line_magic
    def pxresult(self, line: str = "") -> None:
        """Wait for the last ``%px --noblock`` and show its outputs and results."""
        if self.last_result is None:
            raise ValueError("no %px result yet: run %px --noblock first")
        self._show(self.last_result, self.group_outputs)

    @line_magic
    def pxconfig(self, line: str) -> None:
        """Defaults for the magics: ``%pxconfig --targets 0,1 --noblock``."""
        args, rest = self._parse(line)
        if rest:
            raise ValueError(f"%pxconfig does not understand {rest!r}")
        if args.targets is not None:
            self.targets = args.targets
        if args.block is not None:
            self.block = args.block
        if args.group_outputs is not None:
            self.group_outputs = args.group_outputs

    @line_magic
    def autopx(self, line: str = "") -> None:
        """Toggle: every following cell runs on the engines, until ``%autopx`` again."""
        if self.shell is None:
            raise RuntimeError("%autopx needs an IPython shell")
        transformers = self.shell.input_transformers_post
        if self._autopx:
            transformers.remove(self._to_px)
            self._autopx = False
            print("%autopx disabled")
        else:
            transformers.append(self._to_px)
            self._autopx = True
            print("%autopx enabled: cells run on the engines; %autopx to stop")

    def _to_px(self, lines: list[str]) -> list[str]:
        cell = "".join(lines)
        if cell.lstrip().startswith(("%autopx", "get_ipython().run_line_magic('autopx'")):
            return lines
        return [f"get_ipython().run_cell_magic('px', '', {cell!r})\n"]


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext shoal.hub``: register the magics."""
    ip.register_magics(ParallelMagics(ip))
