"""The in-process request handler: runs the user's code and keeps the user namespace.

Theory of operation
-------------------
A :class:`Kernel` is an engine without its sockets: it owns the user namespace and turns
one shell request (its ``msg_type`` and ``content``, see PROTOCOL.md) into one reply
content. It opens no socket and starts no thread. The engine process calls
:meth:`Kernel.handle` on its main thread, one request at a time, and sends back what it
returns. Its rules:

* ``handle`` never raises. An unknown request type, missing or ill-typed content and
  failing user code all become an error reply (PROTOCOL.md, "Error replies"). That
  includes ``KeyboardInterrupt`` (the engine interrupts running code with SIGINT) and
  ``SystemExit`` (``sys.exit()`` in user code must not end the engine).
* Tracebacks start at the user's code: the leading frames that belong to
  ``shoal.engine``'s own modules are cut off. The source of every executed cell is put in
  :mod:`linecache` under ``<shoal-input-N>``, so its lines show in tracebacks.
* The exception object travels in the reply only when it survives a round trip through
  :class:`shoal.wire.Serializer`; otherwise the reply carries ``None`` and the text.
* While a request runs, ``sys.stdout`` and ``sys.stderr`` are writers that pass every
  write at once to ``on_stream(name, text)``; the original streams are back when
  ``handle`` returns, whatever happened. Without ``on_stream`` nothing is redirected.
* Object-store requests are forwarded to ``objects.handle(msg_type, content)`` under the
  same output capture and the same error net.
* Jupyter's shell requests (``kernel_info``, ``complete``, ``inspect``, ``is_complete``,
  ``history``, ``comm_info``) are answered with the content of the Jupyter messaging
  protocol 5.3, plus ``status``. With ``ipython`` (``None``: when IPython is importable)
  code runs through an in-process IPython shell (:mod:`._ipython`), made by
  :meth:`Kernel.prepare` (an engine calls it as it starts) or else on the first request
  that needs it, whose user namespace is this Kernel's: magics, ``!cmd``,
  ``x?`` and rich display work, and every other request sees the same names.
* Rich output (``display()``, an execute's result) goes to ``on_display(msg_type,
  content)`` as Jupyter's ``display_data``, ``update_display_data``, ``execute_result``
  and ``clear_output`` contents.
* While a request runs with ``on_input`` set, ``input()`` and ``getpass.getpass()`` call
  ``on_input(prompt, password)`` when stdin is allowed (``allow_stdin``, set per request
  by the engine, or an ``execute_request``'s own ``allow_stdin``), and raise a clear
  ``EOFError`` when it is not: no front end can answer, and nothing may hang.
"""

from __future__ import annotations

import ast
import builtins
import fnmatch
import getpass
import importlib.util
import io
import linecache
import logging
import platform
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO, cast

from shoal.wire import Serializer

from . import _introspect
from ._current import current_engine
from ._replies import error_reply

if TYPE_CHECKING:
    from ._ipython import ShoalShell
    from ._objects import ObjectStore

__all__ = ["Kernel"]

log = logging.getLogger("shoal.engine.kernel")

_Handler = Callable[[Mapping[str, Any]], dict[str, object]]

#: Request types the Kernel answers itself.
SHELL_REQUESTS = (
    "execute_request",
    "apply_request",
    "push_request",
    "pull_request",
    "clear_request",
    "relay_request",
    "kernel_info_request",
    "complete_request",
    "inspect_request",
    "is_complete_request",
    "history_request",
    "comm_info_request",
)
#: The Jupyter messaging protocol version whose shell requests a Kernel answers.
PROTOCOL_VERSION = "5.3"
#: Request types forwarded to the object store.
OBJECT_REQUESTS = (
    "store_request",
    "call_method_request",
    "getattr_request",
    "setattr_request",
    "incref_request",
    "decref_request",
    "describe_request",
    "refs_request",
    "release_request",
    "list_request",
    "fetch_request",
)
#: Names that ``clear_request`` keeps in the user namespace.
_KEEP_ON_CLEAR = ("__name__", "__builtins__")
#: Frames of code in this folder are shoal.engine's own, cut from the front of tracebacks.
_MISSING = object()


class _StreamWriter(io.TextIOBase):
    """A text stream that hands every write to ``on_stream(name, text)``."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, name: str, on_stream: Callable[[str, str], None]) -> None:
        super().__init__()
        self._stream_name = name
        self._on_stream = on_stream

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if s:
            self._on_stream(self._stream_name, s)
        return len(s)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Nothing to do: every write was passed on at once."""

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation(
            f"shoal's {self._stream_name} sends output to the client and has no file descriptor"
        )


def _ipython_importable() -> bool:
    """Whether ``import IPython`` would work here, without importing it."""
    if "IPython" in sys.modules:
        return sys.modules["IPython"] is not None
    try:
        return importlib.util.find_spec("IPython") is not None
    except (ImportError, ValueError):  # blocked by a finder, or a broken install
        return False


class Kernel:
    """Answers the code and namespace requests of the engine protocol, in process.

    ``handle`` answers ``execute_request``, ``apply_request``, ``push_request``,
    ``pull_request`` and ``clear_request`` itself, forwards the object-store requests to
    ``objects``, and turns every failure into an error reply instead of raising.

    Parameters
    ----------
    namespace : dict, optional
        The user namespace that code runs in. Default: a fresh dict holding
        ``__name__ = "__main__"`` and ``__builtins__``. An engine process passes
        ``sys.modules["__main__"].__dict__``, where functions made with
        :func:`shoal.util.interactive` look up their globals.
    engine_id : int, optional
        Put in every error reply; ``None`` for an engine outside a cluster.
    on_stream : callable, optional
        ``on_stream(name, text)`` is called for each write to ``sys.stdout``
        (``name="stdout"``) or ``sys.stderr`` (``"stderr"``) while a request runs.
        Default: output goes to the process's own streams.
    objects : ObjectStore, optional
        Answers the object-store requests through its ``handle(msg_type, content)``.
        Without it those requests get an error reply.
    on_display : callable, optional
        ``on_display(msg_type, content)`` is called for rich output: ``display_data``,
        ``update_display_data``, ``execute_result`` and ``clear_output`` with Jupyter's
        content (``data`` mime bundle, ``metadata``, ``transient``). Default: results
        are only in the reply, and ``display()`` prints plain text.
    on_input : callable, optional
        ``on_input(prompt, password) -> str`` answers ``input()`` and
        ``getpass.getpass()`` in user code while stdin is allowed (``allow_stdin``);
        while it is not, they raise ``EOFError`` saying why. Default: user code reads
        the process's own stdin.
    ipython : bool or None
        Run code through an in-process IPython shell (magics, ``!cmd``, ``x?``, rich
        display). ``None``: when IPython is importable (what an engine does); ``True``
        without IPython fails the first request that needs it. Default ``False``.

    Attributes
    ----------
    namespace : dict
        The user namespace.
    execution_count : int
        How many ``execute_request`` stored in history have run (Jupyter's
        ``execution_count``: not the silent ones, nor ``store_history=False``).
    allow_stdin : bool
        Whether ``input()`` in the next requests may ask ``on_input``; an engine sets it
        from each request's metadata.

    Examples
    --------
    >>> out = []
    >>> k = Kernel(on_stream=lambda name, text: out.append((name, text)))
    >>> k.handle("execute_request", {"code": "x = 6; print('hi'); x * 7"})["result"]
    42
    >>> out
    [('stdout', 'hi'), ('stdout', '\\n')]
    >>> k.handle("pull_request", {"names": ["x", "x + 1"]})["result"]
    [6, 7]
    >>> reply = k.handle("execute_request", {"code": "1 / 0"})
    >>> reply["status"], reply["ename"], reply["evalue"]
    ('error', 'ZeroDivisionError', 'division by zero')

    .. versionadded:: 0.1
    .. versionchanged:: 0.7
       Jupyter's shell requests, IPython, ``on_display``, ``on_input``.
    """

    def __init__(
        self,
        namespace: dict[str, object] | None = None,
        *,
        engine_id: int | None = None,
        on_stream: Callable[[str, str], None] | None = None,
        objects: ObjectStore | None = None,
        on_display: Callable[[str, dict[str, object]], None] | None = None,
        on_input: Callable[[str, bool], str] | None = None,
        ipython: bool | None = False,
    ) -> None:
        if ipython not in (True, False, None):
            raise TypeError(f"Kernel(ipython=...) takes True, False or None, got {ipython!r}")
        if namespace is None:
            namespace = {"__name__": "__main__", "__builtins__": builtins}
        self.namespace = namespace
        self.engine_id = engine_id
        self.on_stream = on_stream
        self.objects = objects
        self.on_display = on_display
        self.on_input = on_input
        self.allow_stdin = False
        self._stdin_allowed = False  # for the request running now
        #: Whether code runs through IPython (resolved now; the shell is made on first use).
        self.ipython = _ipython_importable() if ipython is None else ipython
        self._shell: ShoalShell | None = None
        self._history: list[tuple[int, str, object]] = []  # (execution_count, code, result)
        self._kernel_info: dict[str, Any] | None = None
        self.execution_count = 0
        self._cells = 0  # numbers the cell file names, silent cells included
        self._serializer = Serializer()
        self._writers: tuple[TextIO, TextIO, Callable[[str, str], None]] | None = None
        self._handlers: dict[str, _Handler] = {
            "execute_request": self._execute,
            "apply_request": self._apply,
            "push_request": self._push,
            "pull_request": self._pull,
            "clear_request": self._clear,
            "relay_request": self._relay,
            "kernel_info_request": self._kernel_info_request,
            "complete_request": self._complete,
            "inspect_request": self._inspect,
            "is_complete_request": self._is_complete,
            "history_request": self._history_request,
            "comm_info_request": self._comm_info,
        }
        # Pushes this engine relays to others of its host: token -> [names, readers left]
        self._relays: dict[str, list[Any]] = {}

    def handle(self, msg_type: str, content: object) -> dict[str, object]:
        """Run one request and return its reply content; never raises.

        Parameters
        ----------
        msg_type : str
            One of the shell request types of PROTOCOL.md, e.g. ``"execute_request"``.
        content : mapping
            The request's content (anything else gets an error reply).

        Returns
        -------
        dict
            ``{"status": "ok", ...}`` with the fields PROTOCOL.md lists for the request,
            or an error reply: ``status``, ``ename``, ``evalue``, ``traceback``,
            ``engine_id`` and ``exception``.
        """
        if (
            self.ipython
            and self._shell is None
            and (msg_type == "execute_request" or "IPython" in sys.modules)
        ):
            # Made by the first code cell, or the first request once IPython is imported
            # (an applied function that uses IPython.display imports it as it loads), not
            # at start: importing IPython takes ~0.3 s of CPU, which 100 engines on a few
            # cores cannot spare all at once.
            try:
                self.prepare()
            except Exception:
                log.exception("the IPython shell could not be made: running plain Python")
        try:
            handler = self._handler(msg_type)
            if not isinstance(content, Mapping):
                raise TypeError(
                    f"{msg_type} needs its content as a dict, got {type(content).__name__}"
                )
            self._stdin_allowed = self.allow_stdin
            if self.on_input is not None:
                saved_input = builtins.input, getpass.getpass
                builtins.input, getpass.getpass = self._input, self._getpass
            try:
                if self.on_stream is None:
                    return handler(content)
                if self._writers is None or self._writers[2] is not self.on_stream:
                    self._writers = (
                        cast(TextIO, _StreamWriter("stdout", self.on_stream)),
                        cast(TextIO, _StreamWriter("stderr", self.on_stream)),
                        self.on_stream,
                    )
                saved = sys.stdout, sys.stderr
                sys.stdout, sys.stderr = self._writers[0], self._writers[1]
                try:
                    return handler(content)
                finally:
                    sys.stdout, sys.stderr = saved
            finally:
                if self.on_input is not None:
                    builtins.input, getpass.getpass = saved_input
        except BaseException as exc:  # every failure becomes a reply
            return error_reply(exc, engine_id=self.engine_id, serializer=self._serializer)

    def prepare(self) -> None:
        """Make the IPython shell now, when code runs through IPython (``handle`` makes it
        at the first request otherwise), so that ``display()`` in any request (an applied
        function too) finds it. A shell that cannot be made leaves the Kernel on plain Python,
        and the error propagates for the caller to report.

        .. versionadded:: 0.7
        """
        if not self.ipython or self._shell is not None:
            return
        try:
            self._ipython_shell()
        except BaseException:
            self.ipython = False  # plain Python, rather than failing every execute
            raise

    # -- dispatch ---------------------------------------------------------------------

    def _handler(self, msg_type: object) -> _Handler:
        if not isinstance(msg_type, str):
            raise TypeError(f"msg_type must be a str, got {type(msg_type).__name__}")
        handler = self._handlers.get(msg_type)
        if handler is not None:
            return handler
        if msg_type in OBJECT_REQUESTS:
            objects = self.objects
            if objects is None:
                raise ValueError(
                    f"{msg_type} is an object-store request, and this Kernel has no object "
                    "store: create it with Kernel(objects=ObjectStore())"
                )
            return lambda content: objects.handle(msg_type, content)
        known = ", ".join(SHELL_REQUESTS + OBJECT_REQUESTS)
        raise ValueError(f"unknown msg_type {msg_type!r}; known types: {known}")

    # -- requests ---------------------------------------------------------------------

    def _execute(self, content: Mapping[str, Any]) -> dict[str, Any]:
        code = _field(content, "execute_request", "code", str, "str")
        silent = _field(content, "execute_request", "silent", bool, "bool", default=False)
        store = _field(
            content, "execute_request", "store_history", bool, "bool", default=not silent
        )
        store = store and not silent  # Jupyter: silent forces store_history off
        expressions = _field(
            content, "execute_request", "user_expressions", Mapping, "dict", default={}
        )
        stdin = _field(content, "execute_request", "allow_stdin", bool, "bool", default=None)
        if stdin is not None:  # a Jupyter front end says it itself
            self._stdin_allowed = stdin and self.on_input is not None
        if store:
            self.execution_count += 1
        self._cells += 1
        if self.ipython:
            result = self._run_ipython(code, silent=silent, store=store)
        else:
            result = self._run_plain(code)
            if result is not None and not silent and self.on_display is not None:
                self._publish_result(result)
        if store:
            self._history.append((self.execution_count, code, result))
        reply: dict[str, Any] = {
            "status": "ok",
            "execution_count": self.execution_count,
            "result": result,
        }
        if expressions:
            reply["user_expressions"] = self._user_expressions(expressions)
        return reply

    def _run_plain(self, code: str) -> object:
        """Run ``code`` as plain Python; the value of its final expression statement."""
        filename = f"<shoal-input-{self._cells}>"
        # mtime None: linecache.checkcache() never drops the entry.
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        # compile() rather than ast.parse(), so a SyntaxError has no ast.py frame;
        # dont_inherit: this module's __future__ imports must not apply to user code.
        tree = cast(
            ast.Module, compile(code, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
        )
        final = tree.body[-1] if tree.body else None
        last: ast.Expression | None = None
        if isinstance(final, ast.Expr):  # IPython's rule: a final expression gives the result
            tree.body.pop()
            last = ast.Expression(final.value)
        exec(compile(tree, filename, "exec", dont_inherit=True), self.namespace)  # noqa: S102
        if last is None:
            return None
        expr = compile(last, filename, "eval", dont_inherit=True)
        return eval(expr, self.namespace)  # noqa: S307 -- running user code is the job

    def _run_ipython(self, code: str, *, silent: bool, store: bool) -> object:
        """Run ``code`` through the IPython shell; its result, or raise its error."""
        shell: Any = self._ipython_shell()  # first: it imports IPython, shielded
        from ._ipython import trim_ipython_frames  # noqa: PLC0415 - IPython on demand

        if store:
            shell.execution_count = self.execution_count  # In[n] / Out[n] / the hook's n
        ran = shell.run_cell(code, store_history=store, silent=silent)
        error = ran.error_before_exec or ran.error_in_exec
        if error is not None:
            trim_ipython_frames(error)
            raise error
        return ran.result

    def _ipython_shell(self) -> ShoalShell:
        if not self.ipython:
            raise RuntimeError("this Kernel runs plain Python: Kernel(ipython=None or True)")
        if self._shell is None:
            # An interrupt must not leave IPython's singleton half made: it waits until
            # the shell is whole, then interrupts the request as usual.
            defer = hasattr(signal, "pthread_sigmask") and (
                threading.current_thread() is threading.main_thread()
            )
            if defer:
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                from ._ipython import make_shell  # noqa: PLC0415 - IPython on demand

                self._shell = make_shell(self.namespace, self._display)
            finally:
                if defer:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return self._shell

    def _display(self, msg_type: str, content: dict[str, Any]) -> None:
        """Rich output from the IPython shell, to ``on_display`` when there is one."""
        if self.on_display is not None:
            self.on_display(msg_type, content)

    def _publish_result(self, result: object) -> None:
        """An execute's result as ``execute_result`` (plain Python: its repr)."""
        assert self.on_display is not None  # noqa: S101 - checked by the caller
        try:
            text = repr(result)
        except Exception:  # a broken __repr__ must not fail a cell that ran
            return
        data = {"text/plain": text}
        content = {"execution_count": self.execution_count, "data": data, "metadata": {}}
        self.on_display("execute_result", content)

    def _user_expressions(self, expressions: Mapping[str, Any]) -> dict[str, Any]:
        """Jupyter's ``user_expressions``: each one's mime bundle, or its error."""
        out: dict[str, Any] = {}
        for name, expression in expressions.items():
            if not isinstance(expression, str):
                raise TypeError(
                    f"execute_request needs content['user_expressions'] as a dict of str,"
                    f" got {_kind(expression)} for {name!r}"
                )
            try:
                value = self._evaluate(expression)
                formatter: Any = None if self._shell is None else self._shell.display_formatter
                if formatter is not None:
                    data, metadata = formatter.format(value)
                else:
                    data, metadata = {"text/plain": repr(value)}, {}
                out[str(name)] = {"status": "ok", "data": data, "metadata": metadata}
            except Exception as exc:  # each expression answers on its own
                error = error_reply(exc, engine_id=self.engine_id, serializer=None)
                error.pop("exception")
                out[str(name)] = error
        return out

    # -- Jupyter's shell requests -------------------------------------------------------

    def _kernel_info_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        if self._kernel_info is None:
            from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

            try:
                mine = version("shoal-engine")
            except PackageNotFoundError:  # run from a source tree
                mine = "unknown"
            ipython_version = None
            if self.ipython:
                self._ipython_shell()  # it imports IPython, shielded from interrupts
                import IPython  # noqa: PLC0415 - imported by now

                ipython_version = IPython.__version__
            python = platform.python_version()
            lexer = "ipython3" if self.ipython else "python3"
            engine = "IPython " + ipython_version if ipython_version else "plain Python"
            self._kernel_info = {
                "status": "ok",
                "protocol_version": PROTOCOL_VERSION,
                "implementation": "shoal",
                "implementation_version": mine,
                "language_info": {
                    "name": "python",
                    "version": python,
                    "mimetype": "text/x-python",
                    "codemirror_mode": {
                        "name": "ipython" if self.ipython else "python",
                        "version": sys.version_info[0],
                    },
                    "pygments_lexer": lexer,
                    "nbconvert_exporter": "python",
                    "file_extension": ".py",
                },
                "banner": f"shoal engine {mine}: Python {python}, running code through {engine}",
                "help_links": [
                    {"text": "Python", "url": "https://docs.python.org/3/"},
                    {"text": "shoal", "url": "https://pypi.org/project/shoal/"},
                ],
                "debugger": False,
                "ipython": bool(self.ipython),
                "ipython_version": ipython_version,
                "engine_id": self.engine_id,
            }
        return {**self._kernel_info, "engine_id": self.engine_id}

    def _cursor(self, content: Mapping[str, Any], request: str) -> tuple[str, int]:
        code = _field(content, request, "code", str, "str")
        cursor = _field(content, request, "cursor_pos", int, "int", default=len(code))
        if cursor is None:
            cursor = len(code)
        if isinstance(cursor, bool) or not 0 <= cursor <= len(code):
            raise ValueError(
                f"{request} needs content['cursor_pos'] between 0 and len(code) = {len(code)},"
                f" got {cursor!r}"
            )
        return code, cursor

    def _complete(self, content: Mapping[str, Any]) -> dict[str, Any]:
        code, cursor = self._cursor(content, "complete_request")
        if not self.ipython:
            return _introspect.complete(self.namespace, code, cursor)
        shell = self._ipython_shell()  # first: it imports IPython, shielded
        from ._ipython import complete  # noqa: PLC0415 - IPython on demand

        return complete(shell, code, cursor)

    def _inspect(self, content: Mapping[str, Any]) -> dict[str, Any]:
        code, cursor = self._cursor(content, "inspect_request")
        level = _field(content, "inspect_request", "detail_level", int, "0 or 1", default=0)
        if level not in (0, 1):
            raise ValueError(f"inspect_request needs content['detail_level'] 0 or 1, got {level!r}")
        if not self.ipython:
            return _introspect.inspect_name(self.namespace, code, cursor, level)
        shell: Any = self._ipython_shell()  # first: it imports IPython, shielded
        from IPython.utils.tokenutil import token_at_cursor  # noqa: PLC0415

        name = token_at_cursor(code, cursor)
        try:
            data = shell.object_inspect_mime(name, detail_level=level)
        except KeyError:  # IPython's word for "no such object"
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        if not shell.enable_html_pager:
            data.pop("text/html", None)
        return {"status": "ok", "found": True, "data": data, "metadata": {}}

    def _is_complete(self, content: Mapping[str, Any]) -> dict[str, Any]:
        code = _field(content, "is_complete_request", "code", str, "str")
        if not self.ipython:
            return _introspect.is_complete(code)
        shell = self._ipython_shell()
        status, indent = shell.input_transformer_manager.check_complete(code)
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply

    def _history_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        """This Kernel's executed cells (one session, number 1; 0 means the current)."""
        request = "history_request"
        output = _field(content, request, "output", bool, "bool", default=False)
        access = _field(content, request, "hist_access_type", str, "str", default="tail")
        entries = self._history
        if access == "tail":
            n = _field(content, request, "n", int, "int", default=10)
            entries = entries[-n:] if n > 0 else []
        elif access == "range":
            session = _field(content, request, "session", int, "int", default=0)
            start = _field(content, request, "start", int, "int", default=1)
            stop = _field(content, request, "stop", (int, type(None)), "int or None", default=None)
            if session not in (0, 1):
                entries = []  # an engine has one session: no other has lines
            else:
                entries = [e for e in entries if e[0] >= start and (stop is None or e[0] < stop)]
        elif access == "search":
            pattern = _field(content, request, "pattern", str, "str", default="*")
            unique = _field(content, request, "unique", bool, "bool", default=False)
            entries = [e for e in entries if fnmatch.fnmatchcase(e[1], pattern)]
            if unique:
                seen: dict[str, tuple[int, str, object]] = {}
                for e in entries:
                    seen.pop(e[1], None)
                    seen[e[1]] = e  # the latest of each
                entries = list(seen.values())
            n = content.get("n")
            if isinstance(n, int) and n > 0:
                entries = entries[-n:]
        else:
            raise ValueError(
                f"history_request needs content['hist_access_type'] as 'tail', 'range' or"
                f" 'search', got {access!r}"
            )
        history: list[tuple[Any, ...]] = []
        for count, code, result in entries:
            if output:
                shown = None if result is None else _safe_repr(result)
                history.append((1, count, (code, shown)))
            else:
                history.append((1, count, code))
        return {"status": "ok", "history": history}

    def _comm_info(self, content: Mapping[str, Any]) -> dict[str, Any]:
        _field(content, "comm_info_request", "target_name", (str, type(None)), "str", default=None)
        return {"status": "ok", "comms": {}}  # engines open no comms

    # -- stdin ------------------------------------------------------------------------

    def _input(self, prompt: object = "") -> str:
        return self._ask(str(prompt), password=False)

    def _getpass(self, prompt: str = "Password: ", stream: object = None) -> str:
        return self._ask(str(prompt), password=True)

    def _ask(self, prompt: str, *, password: bool) -> str:
        what = "getpass()" if password else "input()"
        if not self._stdin_allowed or self.on_input is None:
            raise EOFError(
                f"{what} has no front end to answer it: the client that sent this request "
                "did not allow stdin (create it with Client(allow_stdin=True) to be asked, "
                "or give the input as an argument)"
            )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        return self.on_input(prompt, password)

    def _apply(self, content: Mapping[str, Any]) -> dict[str, Any]:
        f = _field(content, "apply_request", "f", object, "a callable")
        if not callable(f):
            raise TypeError(f"apply_request needs content['f'] as a callable, got {_kind(f)}")
        args = _field(content, "apply_request", "args", (tuple, list), "tuple", default=())
        kwargs = _str_keys(
            _field(content, "apply_request", "kwargs", Mapping, "dict", default={}),
            "apply_request",
            "kwargs",
        )
        if type(f) is types.FunctionType and f.__module__ in ("__main__", "__mp_main__"):
            f = self._in_namespace(f)
        return {"status": "ok", "result": f(*args, **kwargs)}

    def _in_namespace(self, f: types.FunctionType) -> types.FunctionType:
        """A function defined interactively on the client, made to look up its globals in
        this engine's namespace (ipyparallel's rule: ``apply(lambda: x)`` sees a pushed
        ``x``). The globals it came with fill in the names the namespace lacks."""
        namespace = self.namespace
        if f.__globals__ is namespace:
            return f
        for name, value in f.__globals__.items():
            if not name.startswith("__"):
                namespace.setdefault(name, value)
        g = types.FunctionType(f.__code__, namespace, f.__name__, f.__defaults__, f.__closure__)
        g.__kwdefaults__ = f.__kwdefaults__
        g.__qualname__ = f.__qualname__
        g.__dict__.update(f.__dict__)
        return g

    def _push(self, content: Mapping[str, Any]) -> dict[str, Any]:
        source = content.get("namespace_from")
        relay = content.get("relay")
        try:
            if isinstance(source, Mapping):  # a broadcast's copy, from an engine here
                names = _fetch_relayed(source)
            else:
                names = _field(content, "push_request", "namespace", Mapping, "dict")
            names = _str_keys(names, "push_request", "namespace")
        except Exception as exc:
            if isinstance(relay, Mapping):  # the others must not wait for it
                self._relays[str(relay["token"])] = [exc, int(relay["readers"])]
            raise
        if isinstance(relay, Mapping):  # the others of this host fetch it from here
            self._relays[str(relay["token"])] = [names, int(relay["readers"])]
        self.namespace.update(names)
        return {"status": "ok"}

    def _relay(self, content: Mapping[str, Any]) -> dict[str, Any]:
        """A relayed push's names, for an engine of this host (``ready`` False: the push
        has not run here yet)."""
        token = _field(content, "relay_request", "token", str, "str")
        entry = self._relays.get(token)
        if entry is None:
            return {"status": "ok", "ready": False}
        entry[1] -= 1
        if entry[1] <= 0:
            del self._relays[token]
        if isinstance(entry[0], Exception):  # the push failed here: say why there too
            raise entry[0]
        return {"status": "ok", "ready": True, "namespace": entry[0]}

    def _pull(self, content: Mapping[str, Any]) -> dict[str, Any]:
        names = _field(content, "pull_request", "names", (str, list, tuple), "str or list[str]")
        if isinstance(names, str):
            return {"status": "ok", "result": self._evaluate(names)}
        for name in names:
            if not isinstance(name, str):
                raise TypeError(
                    f"pull_request needs content['names'] as str or list[str], "
                    f"got a list holding {_kind(name)}"
                )
        return {"status": "ok", "result": [self._evaluate(name) for name in names]}

    def _clear(self, content: Mapping[str, Any]) -> dict[str, Any]:
        keep = {name: self.namespace[name] for name in _KEEP_ON_CLEAR if name in self.namespace}
        self.namespace.clear()
        self.namespace.update(keep)
        if self._shell is not None:  # In, Out, get_ipython, exit: the shell's own names
            cast(Any, self._shell).init_user_ns()
        return {"status": "ok"}

    def _evaluate(self, expression: str) -> Any:
        """The value of a name or expression in the user namespace."""
        code = compile(expression, "<shoal-pull>", "eval", dont_inherit=True)
        linecache.cache["<shoal-pull>"] = (len(expression), None, [expression], "<shoal-pull>")
        return eval(code, self.namespace)  # noqa: S307 -- pull names expressions on purpose


def _field(
    content: Mapping[str, Any],
    request: str,
    key: str,
    kind: type | tuple[type, ...],
    expected: str,
    *,
    default: Any = _MISSING,
) -> Any:
    """``content[key]`` checked to be of ``kind``; a clear TypeError when it is not."""
    value = content.get(key, _MISSING)
    if value is _MISSING:
        if default is not _MISSING:
            return default
        raise TypeError(f"{request} needs content[{key!r}] as {expected}, got nothing")
    if not isinstance(value, kind):
        raise TypeError(f"{request} needs content[{key!r}] as {expected}, got {_kind(value)}")
    return value


def _fetch_relayed(source: Mapping[str, Any]) -> Any:
    """The names of a push relayed by another engine of this host: asked for until that
    engine has run the push (it may be busy; it answers between requests)."""
    engine = current_engine()
    if engine is None:
        raise RuntimeError("a relayed push reaches engines only")
    url, token = str(source["url"]), str(source["token"])
    while True:
        reply = engine.peer_request(url, "relay_request", {"token": token})
        if reply.get("status") != "ok":
            raise RuntimeError(
                f"the engine relaying this push failed: {reply.get('ename')}: {reply.get('evalue')}"
            )
        if reply.get("ready"):
            return reply["namespace"]
        time.sleep(0.005)


def _str_keys(mapping: Mapping[Any, Any], request: str, key: str) -> dict[str, Any]:
    for name in mapping:
        if not isinstance(name, str):
            raise TypeError(
                f"{request} needs content[{key!r}] with str keys, got the key {name!r} "
                f"({type(name).__name__})"
            )
    return dict(mapping)


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # a broken __repr__
        return f"<{type(value).__name__} object>"


def _kind(value: object) -> str:
    return type(value).__name__
