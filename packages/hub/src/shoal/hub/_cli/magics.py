"""IPython magics: ``%px``, ``%%px``, ``%pxresult``, ``%pxconfig``, ``%autopx``.

``%load_ext shoal.hub`` registers them and connects to the running default cluster (the
one ``Client()`` finds), or says that none runs.

Theory of operation
-------------------
- **Code is Python as written.** ``%px`` takes options only at the start of its line,
  and only the options it knows (``--targets 0,1``, ``--targets=0,1``, ``-t 0``,
  ``--noblock``, ...); the first word that is not one of them starts the code, which
  goes to the engines character for character (no shell-style quote removal, no
  ``$var``/``{var}`` expansion). ``--`` ends the options for code that itself starts
  with a dash (``%px -- -x``). ``%%px`` takes options on its first line; the cell is
  the code. Options are parsed by IPython's ``magic_arguments`` (argparse), so a bad
  one is a ``UsageError`` that names it.
- **Which engines.** The magics run on a client and a targets spec: the client is
  the one ``%pxconfig --client``/``--profile``/``--url-file`` chose, else the most
  recently connected :class:`Client`, else ``Client()`` (the default profile's
  cluster). The targets spec (``all``, ``0``, ``0,2``, ``[0, 2]``, ``::2``) is
  resolved against the client's engines at each run, so ``all`` and slices see
  engines that joined since.
- **Failure fails the cell.** A blocking ``%px`` shows the engines' output (stdout
  and stderr, prefixed ``[stdout:ENGINE]``), then the values of final expressions
  (``Out[ENGINE:COUNT]: ...`` when the engines send them as rich output, else
  ``Out[ENGINE]: ...``), then raises the error: a :class:`CompositeError` for a
  view of several engines, the task's own exception type (also a
  :class:`shoal.engine.RemoteError`) for one engine. Both render the remote
  tracebacks in IPython, and ``run_cell(...).error_in_exec`` is set, so "Run All"
  stops there. A non-blocking ``%px`` returns its :class:`AsyncResult`; ``%pxresult``
  shows it (and raises its error) later.
- **%autopx** adds a pair of input transformers: one sees each cell's raw text
  (after IPython's prompt clean-up, before its magic and ``!`` translation) and
  keeps it; the other replaces the translated cell with one call of ``%%px`` on that
  raw text. So the engines get what the user typed (magics included, which an engine
  running IPython understands). A cell starting with one of these magics runs here:
  ``%autopx`` turns the mode off, ``%pxconfig`` and the others do what they say.
  Nothing of IPython is patched: removing the two transformers restores the shell.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.getipython import get_ipython
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, no_var_expand

from .._client.asyncresult import AsyncResult, _ipython_publisher, _show_output
from .._client.client import Client, current_client
from .._client.views import DirectView

__all__ = ["ParallelMagics", "activate", "load_ipython_extension", "parse_targets"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: What a targets spec resolves to: every engine, one, a slice of the ids, or a list.
Targets = None | int | slice | list[int]

GROUPINGS = ("engine", "type", "order")

#: How often a streaming %px looks for new output while it waits, in seconds.
_STREAM_EVERY = 0.05


# -- options ------------------------------------------------------------------------------
# (flags, argparse keyword arguments): one table builds the parser and tells %px's line
# which words are its options (and which of them take a value).
_EXEC_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("-t", "--targets"),
        {
            "dest": "targets",
            "help": "the engines: all, 0, 0,2, [0, 2] or a slice of the ids such as ::2",
        },
    ),
    (
        ("-b", "--block"),
        {"dest": "block", "action": "store_const", "const": True, "help": "wait (default)"},
    ),
    (
        ("-a", "--noblock"),
        {
            "dest": "block",
            "action": "store_const",
            "const": False,
            "help": "return an AsyncResult at once; %%pxresult shows it",
        },
    ),
    (
        ("--stream",),
        {
            "dest": "stream",
            "action": "store_const",
            "const": True,
            "help": "print the engines' output as it comes (when blocking)",
        },
    ),
    (
        ("--no-stream",),
        {
            "dest": "stream",
            "action": "store_const",
            "const": False,
            "help": "print the output when every engine is done (default)",
        },
    ),
    (
        ("--verbose",),
        {
            "dest": "verbose",
            "action": "store_const",
            "const": True,
            "help": "say where the code runs",
        },
    ),
    (
        ("--no-verbose",),
        {"dest": "verbose", "action": "store_const", "const": False, "help": "say nothing"},
    ),
]
_OUTPUT_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("--group-outputs",),
        {
            "dest": "groupby",
            "choices": GROUPINGS,
            "help": "engine: each engine's output together; type: all stdout, then all"
            " stderr, then rich output; order: as type, the rich output taken in turn"
            " from each engine",
        },
    ),
    (
        ("-e",),
        {
            "dest": "groupby",
            "action": "store_const",
            "const": "engine",
            "help": "same as --group-outputs=engine",
        },
    ),
    (
        ("-r",),
        {
            "dest": "groupby",
            "action": "store_const",
            "const": "order",
            "help": "same as --group-outputs=order",
        },
    ),
    (
        ("-o", "--out", "--save-name"),
        {
            "dest": "save_name",
            "help": "also store the AsyncResult in this variable of the user's namespace",
        },
    ),
]
_LOCAL_OPTION: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("--local",),
        {
            "dest": "local",
            "action": "store_true",
            "help": "also run the code here, after sending it to the engines",
        },
    ),
]
_CLIENT_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("--client",),
        {
            "dest": "client",
            "help": "the name of a Client or DirectView in the user's namespace to run on"
            " (a DirectView also sets the targets)",
        },
    ),
    (
        ("--profile",),
        {"dest": "profile", "help": "connect to this profile's cluster and run on it"},
    ),
    (
        ("--url-file",),
        {"dest": "url_file", "help": "connect to the cluster of this connection file"},
    ),
]


def _options(
    name: str, *tables: list[tuple[tuple[str, ...], dict[str, Any]]]
) -> Callable[[_F], _F]:
    """Decorate the magic ``name`` with the options of ``tables`` (its parser, and the
    help that ``%name?`` shows)."""

    def decorate(f: _F) -> _F:
        for table in reversed(tables):
            for flags, kwargs in reversed(table):
                f = magic_arguments.argument(*flags, **kwargs)(f)
        return magic_arguments.magic_arguments(name)(f)  # type: ignore[no-any-return]

    return decorate


def _valued_flags(*tables: list[tuple[tuple[str, ...], dict[str, Any]]]) -> dict[str, bool]:
    """Each flag of ``tables`` -> whether it takes a value."""
    return {
        flag: kwargs.get("action", "store") == "store"
        for table in tables
        for flags, kwargs in table
        for flag in flags
    }


_PX_FLAGS = _valued_flags(_EXEC_OPTIONS, _OUTPUT_OPTIONS, _LOCAL_OPTION)
_WORD = re.compile(r"\S+")


def split_options(line: str, flags: dict[str, bool] = _PX_FLAGS) -> tuple[list[str], str]:
    """The leading options of a ``%px`` line and the code after them, verbatim.

    Only words in ``flags`` (``--flag`` or ``--flag=value``) count as options; the
    first other word starts the code, and ``--`` ends the options.
    """
    argv: list[str] = []
    pos = 0
    expect_value = False
    while match := _WORD.match(line, _skip_spaces(line, pos)):
        word = match.group(0)
        if expect_value:
            argv.append(word)
            expect_value = False
        elif word == "--":
            pos = match.end()
            break
        elif word in flags:
            argv.append(word)
            expect_value = flags[word]
        elif "=" in word and flags.get(word.split("=", 1)[0]) is True:
            argv.append(word)
        elif re.match(r"--[A-Za-z]", word):  # a mistyped option, rarely Python (--x)
            raise UsageError(
                f"%px has no option {word.split('=', 1)[0]}; its options: {', '.join(flags)}"
                f" (code that starts with --: %px -- {word} ...)"
            )
        else:
            break
        pos = match.end()
    if expect_value:
        raise UsageError(f"%px option {argv[-1]} needs a value, e.g. {argv[-1]} 0,1")
    return argv, line[pos:].strip()


def _skip_spaces(line: str, pos: int) -> int:
    while pos < len(line) and line[pos].isspace():
        pos += 1
    return pos


_INT = re.compile(r"\s*-?\d+\s*")


def parse_targets(spec: str) -> Targets:
    """A ``--targets`` spec as a key of ``client[...]``: None for ``all``, an int, a
    slice (``::2``, ``1:``), or a list (``0,2``, ``[0, 2]``, ``0,``).

    Raises
    ------
    UsageError
        When ``spec`` is none of these; the message names ``--targets``.
    """
    text = spec.strip()
    if text == "all":
        return None
    bracketed = text[:1] + text[-1:] in ("[]", "()")
    inner = text[1:-1] if bracketed else text
    if ":" in inner and "," not in inner:
        parts = inner.split(":")
        if len(parts) <= 3 and all(p.strip() == "" or _INT.fullmatch(p) for p in parts):
            numbers = [int(p) if p.strip() else None for p in parts]
            return slice(*numbers) if len(numbers) == 3 else slice(numbers[0], numbers[1])
    else:
        items = inner.split(",")
        if items and items[-1].strip() == "" and len(items) > 1:
            items.pop()  # "0," is the list [0]
        if items and all(_INT.fullmatch(item) for item in items):
            ids = [int(item) for item in items]
            return ids if bracketed or "," in inner else ids[0]
    raise UsageError(
        f"--targets takes 'all', an engine id (0), ids (0,2 or [0, 2]) or a slice of the"
        f" ids (::2, 1:), got {spec!r}"
    )


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _stop(result: AsyncResult[Any]) -> None:
    """Stop ``result``'s requests after a Ctrl-C: ``abort()`` drops those not started and
    interrupts the running ones on their engines (only requests of these ids, never
    another client's), waiting a little for their replies."""
    with contextlib.suppress(Exception):  # a lost hub: nothing more to stop or wait for
        result.abort()


def _rich_outputs(result: AsyncResult[Any]) -> list[list[dict[str, Any]]]:
    """Each request's rich outputs (``display()``, an execute's result), in order."""
    outputs = result.outputs
    return cast("list[list[dict[str, Any]]]", outputs if _many(result) else [outputs])


def _many(result: AsyncResult[Any]) -> bool:
    return isinstance(result.engine_id, list)


def _results_shown(result: AsyncResult[Any]) -> list[bool]:
    """Per request, whether its value was shown as rich output (an ``execute_result``,
    from engines that send them)."""
    return [
        any(o.get("msg_type") == "execute_result" for o in outs) for outs in _rich_outputs(result)
    ]


def _show_rich(result: AsyncResult[Any], engines: list[int]) -> None:
    """Show the rich outputs of a streamed ``%px`` (its streams are shown already), as
    ``display_outputs`` shows them."""
    publish = _ipython_publisher()
    for i, outs in enumerate(_rich_outputs(result)):
        for output in outs:
            _show_output(engines[i] if i < len(engines) else "?", output, publish)


# -- the magics ---------------------------------------------------------------------------
class ParallelMagics(Magics):
    """The ``%px`` family, bound to one IPython shell.

    Parameters
    ----------
    shell : InteractiveShell
        The shell the magics are registered in.
    view : DirectView, optional
        Run on this view's client and targets (default: the current client, every
        engine).
    suffix : str
        Appended to each magic's name: ``suffix="_odd"`` makes ``%px_odd``,
        ``%%px_odd``, ``%pxresult_odd``, ``%pxconfig_odd``, ``%autopx_odd``, so that
        several sets of magics, each on its own view, live in one shell.

    Attributes
    ----------
    targets : None, int, slice or list of int
        The default targets (None: every engine).
    block, stream, verbose : bool
        The defaults of ``--block``, ``--stream``, ``--verbose``.
    group_outputs : str
        The default of ``--group-outputs``.
    last_result : AsyncResult or None
        The last ``%px``'s result, for ``%pxresult``.

    .. versionadded:: 0.6.0
       Options, errors that fail the cell, ``--stream``, ``--local``, ``--save-name``,
       suffixes.
    """

    registered = True  # the magics table is made per instance: names carry the suffix

    def __init__(
        self,
        shell: InteractiveShell | None,
        view: DirectView[Any] | None = None,
        suffix: str = "",
    ) -> None:
        if suffix and not re.fullmatch(r"\w+", suffix):
            raise ValueError(f"suffix must be letters, digits or _, got {suffix!r}")
        self.suffix = suffix
        self.magics = {
            "line": {
                "px" + suffix: self.px,
                "pxresult" + suffix: self.pxresult,
                "pxconfig" + suffix: self.pxconfig,
                "autopx" + suffix: self.autopx,
            },
            "cell": {"px" + suffix: self.cell_px},
        }
        super().__init__(shell)
        self._client: Client | None = view.client if view is not None else None
        self._owned: Client | None = None  # a client the magics opened: theirs to close
        self.targets: Targets = None
        if view is not None:
            targets = view.targets
            self.targets = targets if isinstance(targets, int) else list(targets)
        self.block = True
        self.stream = False
        self.verbose = False
        self.group_outputs = "engine"
        self.last_result: AsyncResult[Any] | None = None
        self._engines: dict[int, list[int]] = {}  # id(last_result) -> its engines
        self._autopx = False
        self._raw_cell = ""
        self._running_here = False  # --local runs a cell here: autopx must let it be

    # -- where code runs ------------------------------------------------------------------
    @property
    def client(self) -> Client:
        """The client the magics run on: the one chosen, else the most recent one, else
        a new ``Client()`` on the default profile's cluster."""
        if self._client is not None and not self._client._closed:
            return self._client
        try:
            return current_client()
        except RuntimeError:
            pass
        try:
            client = Client()
        except OSError as err:  # no connection file, or no hub answering it
            raise UsageError(
                f"%px has no cluster to run on: {err}. Start one (`shoal cluster start -n 4"
                " --daemonize`), or point the magics at one with %pxconfig --profile NAME,"
                " --url-file PATH or --client VARIABLE"
            ) from None
        self._use(client, owned=True)
        return client

    def _use(self, client: Client, *, owned: bool) -> None:
        """Run on ``client`` from now on; close the client the magics opened before."""
        if self._owned is not None and self._owned is not client:
            self._owned.close()
        self._client = client
        self._owned = client if owned else None

    def _view(self, targets: str | None) -> DirectView[Any]:
        key = self.targets if targets is None else parse_targets(targets)
        client = self.client
        try:
            return client[:] if key is None else client[key]
        except IndexError as err:
            raise UsageError(f"--targets: {err}") from None

    # -- %px and %%px ---------------------------------------------------------------------
    @no_var_expand
    @_options("px", _EXEC_OPTIONS, _OUTPUT_OPTIONS, _LOCAL_OPTION)
    def px(self, line: str = "") -> AsyncResult[Any] | None:
        """Run one line of code on the engines: ``%px [options] CODE``.

        The options come first; the rest of the line is Python as written, e.g.
        ``%px --targets ::2 s = 'a b'``. ``--`` ends the options.
        """
        argv, code = split_options(line)
        parser: argparse.ArgumentParser = self.px.parser  # type: ignore[attr-defined]
        args = parser.parse_args(argv)
        if not code:
            raise UsageError("%px needs code to run, e.g. %px import numpy as np")
        return self._run(code, args)

    @no_var_expand
    @_options("px", _EXEC_OPTIONS, _OUTPUT_OPTIONS, _LOCAL_OPTION)
    def cell_px(self, line: str = "", cell: str | None = None) -> AsyncResult[Any] | None:
        """Run the cell on the engines: ``%%px [options]`` on the first line."""
        args = magic_arguments.parse_argstring(self.cell_px, line)
        if cell is None or not cell.strip():
            raise UsageError("%%px needs code in the cell below it")
        return self._run(cell, args)

    def _run(self, code: str, args: argparse.Namespace) -> AsyncResult[Any] | None:
        block = self.block if args.block is None else args.block
        stream = self.stream if args.stream is None else args.stream
        verbose = self.verbose if args.verbose is None else args.verbose
        groupby = args.groupby or self.group_outputs
        if args.save_name is not None and not args.save_name.isidentifier():
            raise UsageError(f"--save-name takes a variable name, got {args.save_name!r}")
        view = self._view(args.targets)
        if verbose:
            how = "Parallel" if block else "Async parallel"
            print(f"{how} execution on engine(s): {view.targets}")
        result = view.execute(code, block=False)
        self.last_result = result
        self._engines = {id(result): _as_list(view.targets)}  # the last result's only
        if args.save_name is not None:
            self._user_ns()[args.save_name] = result
        local_error = self._run_here(code) if args.local else None
        if not block:
            if local_error is not None:
                raise local_error
            return result
        self._wait_and_show(result, groupby, stream=stream)
        if local_error is not None:
            raise local_error
        return None

    def _run_here(self, code: str) -> UsageError | None:
        """Run ``code`` in this shell too (``--local``); an error for the cell if it
        failed here (its traceback is shown already)."""
        shell = self._shell()
        self._running_here = True
        try:
            outcome = shell.run_cell(code, store_history=False)
        finally:
            self._running_here = False
        if outcome.success:
            return None
        return UsageError("--local: the code failed here (its traceback is above)")

    def _wait_and_show(
        self,
        result: AsyncResult[Any],
        groupby: str,
        *,
        stream: bool = False,
    ) -> None:
        """Wait for ``result`` (streaming its output), show its output and values, and
        raise its error. A Ctrl-C stops the requests on their engines."""
        engines = self._engines.get(id(result), [])
        try:
            if stream:
                self._stream_until_done(result, engines)
            else:
                result.wait()
        except KeyboardInterrupt:
            _stop(result)
            if not stream:  # what it printed before it was stopped
                result.display_outputs(groupby)
            raise
        if stream:
            _show_rich(result, engines)
        else:
            result.display_outputs(groupby)
        shown = _results_shown(result)
        value = result.get()  # the engines' error, if any, fails the cell here
        engines = _as_list(result.engine_id)
        for engine, v, seen in zip(engines, _as_list(value), shown, strict=False):
            if v is not None and not seen:
                print(f"Out[{engine}]: {v!r}")

    @staticmethod
    def _stream_until_done(result: AsyncResult[Any], engines: list[int]) -> None:
        """Print each engine's output, line by line, as it arrives, until the result is
        in (then the rest). ``engines``: the engine of each request, in order."""
        shown: dict[tuple[int, str], int] = {}
        pending: dict[tuple[int, str], str] = {}

        def flush(final: bool) -> None:
            outs = {"stdout": _as_list(result.stdout), "stderr": _as_list(result.stderr)}
            for name, texts in outs.items():
                for i, text in enumerate(texts):
                    key = (i, name)
                    new = text[shown.get(key, 0) :]
                    shown[key] = len(text)
                    buffered = pending.get(key, "") + new
                    lines = buffered.split("\n")
                    rest = lines.pop()  # after the last newline: wait for its end
                    if final and rest:
                        lines.append(rest)
                    pending[key] = "" if final else rest
                    file = sys.stderr if name == "stderr" else sys.stdout
                    for text_line in lines:
                        engine = engines[i] if i < len(engines) else "?"
                        print(f"[{name}:{engine}] {text_line}", file=file, flush=True)

        while not result.wait(_STREAM_EVERY):
            flush(final=False)
        flush(final=True)

    # -- %pxresult ------------------------------------------------------------------------
    @_options("pxresult", _OUTPUT_OPTIONS)
    def pxresult(self, line: str = "") -> None:
        """Show the last ``%px``'s output and values, waiting for it; raise its error.

        Mostly for ``%px --noblock``: ``%pxresult`` shows what it printed once it is done.
        """
        args = magic_arguments.parse_argstring(self.pxresult, line)
        if self.last_result is None:
            raise UsageError("no %px result yet: run %px --noblock CODE first")
        if args.save_name is not None:
            if not args.save_name.isidentifier():
                raise UsageError(f"--save-name takes a variable name, got {args.save_name!r}")
            self._user_ns()[args.save_name] = self.last_result
        self._wait_and_show(self.last_result, args.groupby or self.group_outputs)

    # -- %pxconfig ------------------------------------------------------------------------
    @_options("pxconfig", _EXEC_OPTIONS, _OUTPUT_OPTIONS[:1], _CLIENT_OPTIONS)
    def pxconfig(self, line: str = "") -> None:
        """Set the magics' defaults, e.g. ``%pxconfig --targets ::2 --noblock``.

        Alone, it prints them. ``--client rc2`` (a Client or DirectView variable),
        ``--profile NAME`` or ``--url-file PATH`` pick the cluster.
        """
        args = magic_arguments.parse_argstring(self.pxconfig, line)
        chosen = [o for o in ("client", "profile", "url_file") if getattr(args, o) is not None]
        if len(chosen) > 1:
            raise UsageError("%pxconfig takes one of --client, --profile and --url-file")
        if args.client is not None:
            self._choose_variable(args.client)
        elif args.profile is not None or args.url_file is not None:
            try:
                client = Client(url_file=args.url_file, profile=args.profile or "default")
            except (OSError, ValueError) as err:
                option = "--profile" if args.profile is not None else "--url-file"
                raise UsageError(f"%pxconfig {option}: {err}") from None
            self._use(client, owned=True)
            self.targets = None
        if args.targets is not None:
            self.targets = parse_targets(args.targets)
        for option in ("block", "stream", "verbose"):
            if getattr(args, option) is not None:
                setattr(self, option, getattr(args, option))
        if args.groupby is not None:
            self.group_outputs = args.groupby
        if not line.strip():
            print(self._settings())

    def _choose_variable(self, name: str) -> None:
        ns = self._user_ns()
        if name not in ns:
            raise UsageError(f"%pxconfig --client: no variable {name!r} here")
        obj = ns[name]
        if isinstance(obj, Client):
            self._use(obj, owned=False)
            self.targets = None
        elif isinstance(obj, DirectView):
            self._use(obj.client, owned=False)
            targets = obj.targets
            self.targets = targets if isinstance(targets, int) else list(targets)
        else:
            raise UsageError(
                f"%pxconfig --client takes a Client or DirectView variable; {name} is a"
                f" {type(obj).__name__}"
            )

    def _settings(self) -> str:
        try:
            where = self.client.url_file
        except UsageError:
            where = "none running"
        targets = "all" if self.targets is None else self.targets
        return (
            f"%px{self.suffix}: client {where}; targets {targets}; block {self.block};"
            f" stream {self.stream}; verbose {self.verbose}; group-outputs"
            f" {self.group_outputs}"
        )

    # -- %autopx --------------------------------------------------------------------------
    def autopx(self, line: str = "") -> None:
        """Toggle: every following cell runs on the engines (as ``%%px``), until a cell
        that starts with ``%autopx``."""
        if line.strip():
            raise UsageError(f"%autopx takes no arguments, got {line.strip()!r}")
        shell = self._shell()
        if self._autopx:
            shell.input_transformers_cleanup.remove(self._keep_raw)
            shell.input_transformers_post.remove(self._to_px)
            self._autopx = False
            print("%autopx disabled")
        else:
            shell.input_transformers_cleanup.append(self._keep_raw)
            shell.input_transformers_post.append(self._to_px)
            self._autopx = True
            print(f"%autopx enabled: cells run on the engines; %autopx{self.suffix} to stop")

    def _keep_raw(self, lines: list[str]) -> list[str]:
        self._raw_cell = "".join(lines)
        return lines

    def _to_px(self, lines: list[str]) -> list[str]:
        raw = self._raw_cell
        if self._running_here or not raw.strip():
            return lines
        own = rf"\s*%%?(?:autopx|px|pxresult|pxconfig){re.escape(self.suffix)}\b"
        if re.match(own, raw):  # the magics themselves run here, not on the engines
            return lines
        return [f"get_ipython().run_cell_magic({'px' + self.suffix!r}, '', {raw!r})\n"]

    # -- helpers --------------------------------------------------------------------------
    def _shell(self) -> InteractiveShell:
        if self.shell is None:
            raise UsageError("the %px magics need an IPython shell")
        return self.shell

    def _user_ns(self) -> dict[str, Any]:
        ns: dict[str, Any] = self._shell().user_ns
        return ns


def load_ipython_extension(ip: object) -> None:
    """``%load_ext shoal.hub``: register the magics and connect to the running cluster,
    or say that none runs (the magics connect when one does)."""
    if not isinstance(ip, InteractiveShell):
        raise TypeError(f"load_ipython_extension needs an IPython shell, got {ip!r}")
    magics = ParallelMagics(ip)
    ip.register_magics(magics)
    try:
        client = magics.client
    except UsageError as err:
        print(f"shoal.hub: {err}", file=sys.stderr)
        return
    print(f"shoal.hub: %px runs on {len(client.ids)} engine(s) of {client.url_file}")


def activate(view: DirectView[Any], suffix: str = "") -> None:
    """Register magics on ``view`` in the running IPython (``DirectView.activate``)."""
    shell = get_ipython()
    if shell is None:
        raise RuntimeError("activate() needs IPython: call it inside an IPython session")
    shell.register_magics(ParallelMagics(shell, view, suffix))
