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
"""

from __future__ import annotations

import ast
import builtins
import io
import linecache
import sys
import time
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO, cast

from shoal.wire import Serializer

from ._current import current_engine
from ._replies import error_reply

if TYPE_CHECKING:
    from ._objects import ObjectStore

__all__ = ["Kernel"]

_Handler = Callable[[Mapping[str, Any]], dict[str, object]]

#: Request types the Kernel answers itself.
SHELL_REQUESTS = (
    "execute_request",
    "apply_request",
    "push_request",
    "pull_request",
    "clear_request",
    "relay_request",
)
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

    Attributes
    ----------
    namespace : dict
        The user namespace.
    execution_count : int
        How many non-silent ``execute_request`` have run.

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
    """

    def __init__(
        self,
        namespace: dict[str, object] | None = None,
        *,
        engine_id: int | None = None,
        on_stream: Callable[[str, str], None] | None = None,
        objects: ObjectStore | None = None,
    ) -> None:
        if namespace is None:
            namespace = {"__name__": "__main__", "__builtins__": builtins}
        self.namespace = namespace
        self.engine_id = engine_id
        self.on_stream = on_stream
        self.objects = objects
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
        try:
            handler = self._handler(msg_type)
            if not isinstance(content, Mapping):
                raise TypeError(
                    f"{msg_type} needs its content as a dict, got {type(content).__name__}"
                )
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
        except BaseException as exc:  # every failure becomes a reply
            return error_reply(exc, engine_id=self.engine_id, serializer=self._serializer)

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
        if not silent:
            self.execution_count += 1
        self._cells += 1
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
        result = None
        if last is not None:
            expr = compile(last, filename, "eval", dont_inherit=True)
            result = eval(expr, self.namespace)  # noqa: S307 -- running user code is the job
        return {"status": "ok", "execution_count": self.execution_count, "result": result}

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


def _kind(value: object) -> str:
    return type(value).__name__
