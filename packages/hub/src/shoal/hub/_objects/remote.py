"""Remote objects: Python objects kept on the engines, used through proxies (distob's idea).

Theory of operation
-------------------
* **Where objects live.** An object scattered to an engine is kept in that engine's
  object store (:class:`shoal.engine.ObjectStore`) under an id; ``(engine, id)`` is a
  :class:`Ref`, unique in the cluster (engine ids and object ids are never reused).
* **Proxies.** A :class:`Remote` stands for one stored object. Its class is built from
  the type: by :func:`proxy_methods` for types the user registers, else at run time from
  the engine's ``describe`` reply (methods, attributes, special methods), cached per type
  name. A call on a proxy is one object-store request to the engine holding the object;
  the result comes back by value unless it cannot be serialized, its type is registered to
  come back as a proxy, or the caller asks for a proxy (``.options(prefer_local=False)``).
  A method that returns the object itself (``list.__iadd__``) gives back the same proxy.
* **Proxy arguments** of a call are sent as refs and resolved on the engine: the object
  itself when it lives there, else fetched by value straight from the engine holding it
  (engine to engine, never through the client).
* **Proxies travel.** A pickled proxy (a task argument, a pushed value, a proxy sent to
  another client) still points at the same object. Unpickled on the engine holding the
  object, it *is* the object; anywhere else it is a proxy again, which on an engine talks
  to the owning engine directly.
* **Lifetimes.** Each reference a proxy holds is booked in the engine's store to its
  client's *owner* token. A dropped proxy queues a -1 (``__del__`` never blocks and
  never sends); the client's reader sends the queued changes every 50 ms, one
  ``refs_request`` per engine, summed per object. Pickling a proxy adds a +1 for the
  copy, so an object reached only through a message in flight stays alive. When a
  client dies, the hub ends its lease and the engines free what it held.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    Protocol,
    SupportsInt,
    TypeVar,
    cast,
    overload,
)

from shoal.engine import MsgType, current_engine

from .._client.asyncresult import AsyncResult
from .._client.client import current_client
from .._client.errors import error_from_reply
from .._client.references import ReferenceBook

if TYPE_CHECKING:
    from .._client.client import Client

__all__ = [
    "Gatherable",
    "ObjectHub",
    "Ref",
    "Remote",
    "apply",
    "call_all",
    "call_async",
    "gather",
    "proxy_methods",
    "scatter",
    "vectorize",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
_O = TypeVar("_O")
_F = TypeVar("_F")
#: A reply's content, as the engine sent it (unpickled: its values are untyped).
_Reply = dict[str, Any]

#: Special methods a proxy forwards when the remote type has them. Python looks these
#: up on the type, not the instance, so a proxy class must define each one it supports.
SPECIALS = frozenset(
    [
        "__len__",
        "__iter__",
        "__next__",
        "__reversed__",
        "__contains__",
        "__getitem__",
        "__setitem__",
        "__delitem__",
        "__call__",
        "__enter__",
        "__exit__",
        "__bool__",
        "__lt__",
        "__le__",
        "__eq__",
        "__ne__",
        "__gt__",
        "__ge__",
        "__hash__",
        "__int__",
        "__float__",
        "__complex__",
        "__index__",
        "__round__",
        "__abs__",
        "__neg__",
        "__pos__",
        "__invert__",
        "__add__",
        "__sub__",
        "__mul__",
        "__matmul__",
        "__truediv__",
        "__floordiv__",
        "__mod__",
        "__divmod__",
        "__pow__",
        "__lshift__",
        "__rshift__",
        "__and__",
        "__xor__",
        "__or__",
        "__radd__",
        "__rsub__",
        "__rmul__",
        "__rmatmul__",
        "__rtruediv__",
        "__rfloordiv__",
        "__rmod__",
        "__rdivmod__",
        "__rpow__",
        "__rlshift__",
        "__rrshift__",
        "__rand__",
        "__rxor__",
        "__ror__",
        "__iadd__",
        "__isub__",
        "__imul__",
        "__imatmul__",
        "__itruediv__",
        "__ifloordiv__",
        "__imod__",
        "__ipow__",
        "__ilshift__",
        "__irshift__",
        "__iand__",
        "__ixor__",
        "__ior__",
    ]
)
_OWN = frozenset({"_shoal_ref", "_shoal_type", "_shoal_url", "_shoal_owner", "_shoal_client"})


@dataclass(frozen=True, slots=True)
class Ref:
    """Where a remote object lives: its engine and its id in that engine's store.

    Unique in a cluster (ids are never reused), hashable and picklable; ``proxy.__ref__``.
    """

    engine: int
    id: int

    def __repr__(self) -> str:
        return f"Ref(engine={self.engine}, id={self.id})"


# -- proxy classes ----------------------------------------------------------------------

_classes: dict[str, type[Remote]] = {}  # remote type name -> proxy class
_registered: set[str] = set()  # type names registered to come back as proxies
_classes_lock = threading.Lock()


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class RemoteMethod:
    """A method of a remote object, bound to its proxy: calling it runs it there."""

    __slots__ = ("_block", "_name", "_prefer_local", "_proxy")

    def __init__(
        self, proxy: Remote, name: str, *, block: bool = True, prefer_local: bool = True
    ) -> None:
        self._proxy = proxy
        self._name = name
        self._block = block
        self._prefer_local = prefer_local

    def __call__(self, *args: object, **kwargs: object) -> object:
        result = _call(self._proxy, self._name, args, kwargs, self._prefer_local)
        return result.result() if self._block else result

    def call_async(self, *args: object, **kwargs: object) -> concurrent.futures.Future[object]:
        """Start the call; a Future of its result (``result()``, ``get()``, awaitable)."""
        return _call(self._proxy, self._name, args, kwargs, self._prefer_local)

    def options(self, *, block: bool = True, prefer_local: bool = True) -> RemoteMethod:
        """The same method called differently: ``block=False`` returns an AsyncResult,
        ``prefer_local=False`` returns the result as a proxy, left on the engine."""
        return RemoteMethod(self._proxy, self._name, block=block, prefer_local=prefer_local)

    def __repr__(self) -> str:
        return f"<remote method {self._name} of {self._proxy!r}>"


class _MethodSlot:
    """A class attribute of a proxy class: gives a :class:`RemoteMethod` per instance."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(
        self, proxy: Remote | None, owner: type | None = None
    ) -> _MethodSlot | RemoteMethod:
        if proxy is None:
            return self
        return RemoteMethod(proxy, self.name)


# Special methods whose result Python requires to be a plain value.
_VALUE_SPECIALS = frozenset(
    [
        "__len__",
        "__bool__",
        "__int__",
        "__float__",
        "__complex__",
        "__index__",
        "__hash__",
        "__str__",
        "__repr__",
    ]
)


def _special(name: str) -> Callable[..., object]:
    by_value = name in _VALUE_SPECIALS

    def forward(self: Remote, *args: object) -> object:
        return _call(self, name, args, {}, True, by_value=by_value).result()

    forward.__name__ = name
    return forward


def _exit(self: Remote, exc_type: object, exc: object, tb: object) -> object:
    # A traceback cannot travel: the remote __exit__ gets the type and the exception.
    return _call(self, "__exit__", (exc_type, exc, None), {}, True).result()


def _hash(self: Remote) -> int:
    value = _call(self, "__hash__", (), {}, True, by_value=True).result()
    return int(cast("SupportsInt", value))  # the remote __hash__'s value: an int


class Remote:
    """A proxy for a Python object kept on an engine.

    Method calls, attribute reads and writes, and the special methods the remote type has
    (``len``, iteration, indexing, comparisons, arithmetic, in-place operators, ``with``)
    run on the engine holding the object. ``isinstance(p, Remote)`` is true of every
    proxy; ``p.__engine_id__`` and ``p.__ref__`` say where the object is.

    Proxies come from :func:`scatter`, from calls whose results stay remote, and from
    :class:`ObjectHub`; they are not made directly.
    """

    _shoal_ref: Ref
    _shoal_type: str
    _shoal_url: str | None
    _shoal_owner: str
    _shoal_client: Client | None
    __shoal_methods__: frozenset[str] = frozenset()
    __shoal_specials__: frozenset[str] = frozenset()

    def __init__(
        self, ref: Ref, type_name: str, url: str | None, owner: str, client: Client | None
    ) -> None:
        object.__setattr__(self, "_shoal_ref", ref)
        object.__setattr__(self, "_shoal_type", type_name)
        object.__setattr__(self, "_shoal_url", url)
        object.__setattr__(self, "_shoal_owner", owner)
        object.__setattr__(self, "_shoal_client", client)

    @property
    def __ref__(self) -> Ref:
        return self._shoal_ref

    @property
    def __engine_id__(self) -> int:
        return self._shoal_ref.engine

    @property
    def __engine_url__(self) -> str | None:
        """The address of the object's engine's own socket (engines of one host reach
        each other there); None when the engine has none."""
        return self._shoal_url

    @property
    def __client__(self) -> Client | None:
        """The Client whose references this proxy holds; None on an engine."""
        return self._shoal_client

    def __getattr__(self, name: str) -> Any:
        # Special names are protocol probes (numpy, copy, IPython's display): the proxy
        # class says which it supports, and probing them must not cost a round trip.
        if name.startswith(("__", "_shoal", "_repr_", "_ipython_")):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return _getattr(self, name).result()

    def __setattr__(self, name: str, value: object) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
            return
        _request(self, MsgType.SETATTR_REQUEST, {"name": name, "value": _as_refs(value)}).result()

    def __delattr__(self, name: str) -> None:
        _call(self, "__delattr__", (name,), {}, True).result()

    def __repr__(self) -> str:
        try:
            text = _call(self, "__repr__", (), {}, True, by_value=True).result(10)
        except Exception as exc:
            text = f"<repr failed: {type(exc).__name__}: {exc}>"
        return f"<Remote {self._shoal_type} on engine {self.__engine_id__}: {text}>"

    def __str__(self) -> str:
        return str(_call(self, "__str__", (), {}, True, by_value=True).result())

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__shoal_methods__))

    def __reduce__(self) -> tuple[Any, ...]:
        client = self._shoal_client
        owner = self._shoal_owner
        if client is not None:  # the copy holds a reference of its own
            ref = self._shoal_ref
            # Booked to an owner of its own ("<owner>+<n>"): the engine that gets the copy
            # may give that reference back before this +1 reached the object's engine (by
            # another connection), and the object must not be freed meanwhile.
            owner = f"{owner.split('+')[0]}+{next(_copy_numbers)}"
            client.references.copy(ref.engine, ref.id, owner)
        cls = type(self)
        interface = {
            "methods": sorted(cls.__shoal_methods__),
            "specials": sorted(cls.__shoal_specials__),
        }
        return (
            _rebuild,
            (self._shoal_ref, self._shoal_type, self._shoal_url, owner, interface),
        )

    def __shoal_resolve__(self) -> Any:
        """What the engine's object store puts in place of this proxy in arguments: the
        object itself, fetched from the engine holding it when that is another one."""
        return _resolve(self._shoal_ref, self._shoal_url)

    def __del__(self) -> None:
        try:
            ref = self._shoal_ref
            client = self._shoal_client
        except AttributeError:  # __init__ never ran
            return
        if client is not None:
            client.references.add(ref.engine, ref.id, self._shoal_owner, -1)
        elif self._shoal_url is not None:
            _engine_references.add(self._shoal_url, ref.id, self._shoal_owner, -1)


def _send_to_peer(url: str, owner: str, deltas: list[list[int]]) -> None:
    """One batch of an engine's reference book: straight to the engine at ``url``."""
    engine = current_engine()
    if engine is None:
        return
    with contextlib.suppress(Exception):  # an engine that is gone freed them already
        engine.peer_request(url, MsgType.REFS_REQUEST, {"owner": owner, "deltas": deltas}, 10.0)


# The references that proxies held by an engine's tasks give back (sent after each request
# the engine serves, and before each request it makes to another engine).
_engine_references: ReferenceBook[str] = ReferenceBook(_send_to_peer)
_copy_numbers = itertools.count(1)


def _rebuild(
    ref: Ref, type_name: str, url: str | None, owner: str, interface: dict[str, Any]
) -> object:
    """Unpickle a proxy: the object itself on its own engine, else a proxy again."""
    engine = current_engine()
    if engine is not None and engine.engine_id == ref.engine and engine.kernel.objects:
        store = engine.kernel.objects
        obj = store.get(ref.id)
        with contextlib.suppress(ValueError):  # the copy's count: the object holds it now
            store.decref(ref.id, 1, owner)
        return obj
    client = None if engine is not None else _client_or_none()
    if engine is not None and _engine_references.flush not in engine.after_request:
        engine.after_request.append(_engine_references.flush)
    return _proxy_class(type_name, interface)(ref, type_name, url, owner, client)


def _client_or_none() -> Client | None:
    try:
        return current_client()
    except RuntimeError:
        return None


def _proxy_class(type_name: str, interface: dict[str, Any] | None) -> type[Remote]:
    """The proxy class for ``type_name``: registered, cached, or built from ``interface``
    (``{"methods": [...], "specials": [...]}``, as engines send it with every new ref);
    a plain :class:`Remote` when none is known."""
    cls = _classes.get(type_name)
    if cls is not None or interface is None:
        return cls or Remote
    methods = [m for m in interface.get("methods", ()) if isinstance(m, str)]
    specials = [s for s in interface.get("specials", ()) if s in SPECIALS]
    cls = _build(type_name, methods, specials)
    with _classes_lock:
        return _classes.setdefault(type_name, cls)


def _forwarder(name: str) -> Callable[..., object]:
    return _hash if name == "__hash__" else _exit if name == "__exit__" else _special(name)


def _build(
    type_name: str, methods: Iterable[str], specials: Iterable[str], base: type = Remote
) -> type[Remote]:
    namespace: dict[str, Any] = {name: _MethodSlot(name) for name in methods}
    for name in specials:
        namespace[name] = _forwarder(name)
    if "__hash__" not in namespace:
        namespace["__hash__"] = None if "__eq__" in namespace else object.__hash__
    namespace["__shoal_methods__"] = frozenset(methods)
    namespace["__shoal_specials__"] = frozenset(specials)
    short = type_name.rsplit(".", 1)[-1]
    cls = type(f"Remote{short[:1].upper()}{short[1:]}", (base,), namespace)
    cls.__module__ = __name__
    return cls


def proxy_methods(
    base: type,
    include_underscore: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
    *,
    instance_check: bool = False,
) -> Callable[[type[T]], type[T]]:
    """Class decorator: make a :class:`Remote` subclass the proxy class of ``base``.

    The class gets a remote method for every public method of ``base`` (and for the
    names in ``include_underscore``, e.g. ``"_private"``), minus ``exclude``, and forwards
    the special methods ``base`` has. Objects of ``base`` then come back from calls as
    proxies of this class rather than by value. With ``instance_check``,
    ``isinstance(proxy, base)`` is true as well.

    Examples
    --------
    >>> @proxy_methods(Counter)              # doctest: +SKIP
    ... class RemoteCounter(Remote):
    ...     pass
    """
    extra = _names(include_underscore)
    skip = _names(exclude)

    def decorate(decorated: type[T]) -> type[T]:
        cls: type[Remote] = decorated  # type: ignore[assignment]  # checked next
        if not (isinstance(cls, type) and issubclass(cls, Remote)):
            raise TypeError(f"@proxy_methods decorates a subclass of Remote, not {cls!r}")
        methods = [
            n
            for n in dir(base)
            if (not n.startswith("_") or n in extra)
            and n not in skip
            and callable(getattr(base, n, None))
            and n not in cls.__dict__
            and n not in vars(Remote)  # the proxy's own machinery stays
        ]
        specials = [n for n in dir(base) if n in SPECIALS and n not in skip]
        for name in methods:
            setattr(cls, name, _MethodSlot(name))
        for name in specials:
            if name not in cls.__dict__:
                setattr(cls, name, _forwarder(name))
        if "__hash__" not in specials and "__eq__" in specials:
            cls.__hash__ = None  # type: ignore[assignment]  # like the type it stands for
        cls.__shoal_methods__ = frozenset(methods)
        cls.__shoal_specials__ = frozenset(specials)
        if instance_check:  # isinstance() also asks obj.__class__, which can be a property
            namespace = {"__class__": property(lambda self: base), "__module__": cls.__module__}
            cls = type(cls.__name__, (cls,), namespace)
            cls.__qualname__ = cls.__bases__[0].__qualname__
        name = _type_name(base)
        with _classes_lock:
            _classes[name] = cls
            _registered.add(name)
        return cls  # type: ignore[return-value]  # the class given, or its subclass

    return decorate


def _names(names: Iterable[str] | str | None) -> set[str]:
    if names is None:
        return set()
    return {names} if isinstance(names, str) else set(names)


# -- requests ---------------------------------------------------------------------------


def _request(
    proxy: Remote, msg_type: str, content: dict[str, object]
) -> concurrent.futures.Future[_Reply]:
    """Send an object-store request about ``proxy``'s object; a Future of the reply."""
    ref = proxy._shoal_ref
    content = {"id": ref.id, **content}
    client = proxy._shoal_client
    if client is not None:
        return client.object_request(ref.engine, msg_type, content)
    return _peer(proxy._shoal_url, ref, msg_type, content)


def _peer(
    url: str | None, ref: Ref, msg_type: str, content: dict[str, object]
) -> concurrent.futures.Future[_Reply]:
    """The same request from code running on an engine: straight to the owning engine."""
    future: concurrent.futures.Future[_Reply] = concurrent.futures.Future()
    engine = current_engine()
    try:
        if engine is None or url is None:
            raise RuntimeError(
                f"the proxy of {ref} has no way to its engine here: use it in a process "
                "with a shoal.hub.Client, or on an engine of the same cluster and host"
            )
        _engine_references.flush()
        reply = engine.peer_request(url, msg_type, content)
    except BaseException as exc:
        future.set_exception(exc)
        return future
    if reply.get("status") == "ok":
        future.set_result(reply)
    else:
        future.set_exception(error_from_reply(reply))
    return future


def _as_refs(value: object, depth: int = 8) -> object:
    """``value`` with proxies replaced by engine refs, which the engine resolves."""
    if isinstance(value, Remote):
        return _Arg(value)
    if depth <= 0:
        return value
    if type(value) is tuple or type(value) is list:
        return type(value)(_as_refs(v, depth - 1) for v in value)
    if type(value) is dict:
        return {k: _as_refs(v, depth - 1) for k, v in value.items()}
    return value


class _Arg:
    """A proxy in the arguments of a call: resolved on the engine that runs the call (the
    object itself there, or fetched from its own engine)."""

    __slots__ = ("proxy",)

    def __init__(self, proxy: Remote) -> None:
        self.proxy = proxy

    def __reduce__(self) -> tuple[Any, ...]:
        p = self.proxy
        return (_ResolvedArg, (p._shoal_ref, p._shoal_type, p._shoal_url, p._shoal_owner))


class _ResolvedArg:
    """The engine side of :class:`_Arg`."""

    __slots__ = ("owner", "ref", "type_name", "url")

    def __init__(self, ref: Ref, type_name: str, url: str | None, owner: str) -> None:
        self.ref, self.type_name, self.url, self.owner = ref, type_name, url, owner

    def __shoal_resolve__(self) -> object:
        return _resolve(self.ref, self.url)


def _resolve(ref: Ref, url: str | None) -> object:
    """On an engine, the object ``ref`` names: its own, or fetched from the engine at
    ``url`` that holds it."""
    engine = current_engine()
    if engine is not None and engine.engine_id == ref.engine and engine.kernel.objects:
        return engine.kernel.objects.get(ref.id)
    return _peer(url, ref, MsgType.FETCH_REQUEST, {"id": ref.id}).result()["result"]


def _call(
    proxy: Remote,
    name: str,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    prefer_local: bool,
    *,
    by_value: bool = False,
) -> _Result[object]:
    content: dict[str, object] = {
        "method": name,
        "args": _as_refs(args),
        "kwargs": _as_refs(kwargs),
        "returns": "value" if by_value else "auto" if prefer_local else "ref",
        "owner": proxy._shoal_owner,
    }
    if _registered:
        content["keep"] = sorted(_registered)
    return _then(_request(proxy, MsgType.CALL_METHOD_REQUEST, content), proxy)


def _getattr(proxy: Remote, name: str) -> _Result[object]:
    content: dict[str, object] = {"name": name, "owner": proxy._shoal_owner}
    if _registered:
        content["keep"] = sorted(_registered)
    return _then(_request(proxy, MsgType.GETATTR_REQUEST, content), proxy)


def _then(reply: concurrent.futures.Future[_Reply], proxy: Remote) -> _Result[object]:
    """A Future of the value a reply stands for: the result, a new proxy, or ``proxy``
    itself."""
    out: _Result[object] = _Result(reply)

    def convert(done: concurrent.futures.Future[_Reply]) -> None:
        try:
            content = done.result()
            value: object
            if content.get("self"):
                value = proxy
            elif "ref" in content:
                engine_id = proxy._shoal_ref.engine
                value = _make_proxies(engine_id, [content["ref"]], content, proxy)[0]
            else:
                value = content.get("result")
        except BaseException as exc:
            out.set_exception(exc)
            return
        out.set_result(value)

    reply.add_done_callback(convert)
    return out


class _Result(concurrent.futures.Future[T]):
    """The Future a proxy call returns: waiting on it reads the client's sockets (like an
    AsyncResult), so a call made from the client's own callbacks cannot deadlock."""

    def __init__(self, inner: concurrent.futures.Future[_Reply]) -> None:
        super().__init__()
        self._inner = inner

    def result(self, timeout: float | None = None) -> T:
        if isinstance(self._inner, AsyncResult) and not self._inner.done():
            self._inner.wait(timeout)
        return super().result(timeout)

    def get(self, timeout: float | None = None) -> T:
        """The result (ipyparallel's name)."""
        return self.result(timeout)

    def __await__(self) -> Generator[object, None, T]:
        return asyncio.wrap_future(self).__await__()


def _make_proxies(
    engine_id: int, refs: Sequence[_Reply], reply: _Reply, source: Remote | Client
) -> list[Remote]:
    """Proxies for the ref dicts of ``engine_id``'s store, with classes built from the
    interfaces the reply carries (``reply["types"]``) for types not seen before; they
    hold references like ``source`` (a proxy) does, or booked to ``source`` (a client)."""
    client: Client | None
    if isinstance(source, Remote):
        client, owner, url = source._shoal_client, source._shoal_owner, source._shoal_url
    else:
        client, owner, url = source, source.owner, source.direct_url(engine_id)
    types = reply.get("types") or {}
    out: list[Remote] = []
    for r in refs:
        name = str(r["type"])
        cls = _proxy_class(name, types.get(name))
        out.append(cls(Ref(engine_id, int(r["id"])), name, url, owner, client))
    return out


# -- module functions -------------------------------------------------------------------

_next_engine = itertools.count()


@overload
def scatter(
    obj: list[T],
    destination: int | Sequence[int] | None = None,
    *,
    split: Literal[True] = True,
    client: Client | None = None,
) -> list[Remote]: ...
@overload
def scatter(
    obj: object,
    destination: int | Sequence[int] | None = None,
    *,
    split: Literal[False],
    client: Client | None = None,
) -> Remote: ...
@overload
def scatter(
    obj: object,
    destination: int | Sequence[int] | None = None,
    *,
    split: bool = True,
    client: Client | None = None,
) -> Remote | list[Remote] | tuple[Remote, ...]: ...
def scatter(
    obj: object,
    destination: int | Sequence[int] | None = None,
    *,
    split: bool = True,
    client: Client | None = None,
) -> Remote | list[Remote] | tuple[Remote, ...]:
    """Put ``obj`` on the engines; return a proxy (or proxies) for it.

    A list or tuple is spread item by item over the engines (``destination``: the engine
    ids to use, all by default), in contiguous blocks, one message per engine; the result
    is a list or tuple of proxies in the same order. Anything else, or a list with
    ``split=False``, goes whole to one engine (``destination``, or the next engine in
    turn) and gives one proxy.

    For a type checker: a list gives a ``list[Remote]`` (a subclass of list, which goes
    whole, is the exception it cannot see), ``split=False`` one :class:`Remote`, and
    anything else either.
    """
    client = client or current_client()
    engines = _destinations(client, destination)
    if split and (type(obj) is list or type(obj) is tuple):
        n = len(obj)
        parts = [(i * n // len(engines), (i + 1) * n // len(engines)) for i in range(len(engines))]
        pending = []
        for engine_id, (lo, hi) in zip(engines, parts, strict=True):
            if hi > lo:
                items = {"obj": list(obj[lo:hi]), "items": True, "owner": client.owner}
                pending.append(
                    (engine_id, client.object_request(engine_id, MsgType.STORE_REQUEST, items))
                )
        proxies: list[Remote] = []
        for engine_id, reply in pending:
            content: _Reply = reply.result()
            proxies += _make_proxies(engine_id, content["refs"], content, client)
        return type(obj)(proxies)
    engine_id = (
        engines[0] if destination is not None else engines[next(_next_engine) % len(engines)]
    )
    whole = {"obj": obj, "owner": client.owner}
    stored: _Reply = client.object_request(engine_id, MsgType.STORE_REQUEST, whole).result()
    return _make_proxies(engine_id, [stored["ref"]], stored, client)[0]


def _destinations(client: Client, destination: int | Sequence[int] | None) -> list[int]:
    known = client.ids
    if not known:
        raise RuntimeError("the cluster has no engines: wait_for_engines(n) first")
    if destination is None:
        return known
    wanted = [destination] if isinstance(destination, int) else list(destination)
    unknown = [e for e in wanted if e not in known]
    if unknown or not wanted:
        raise ValueError(
            f"destination must name engines of the cluster {known}, got {destination!r}"
        )
    return wanted


@overload
def gather(x: Remote) -> object: ...
@overload
def gather(x: Gatherable[T]) -> T: ...
@overload
def gather(x: object) -> object: ...
def gather(x: object) -> object:
    """Bring remote things back as local objects: ``x`` itself, or inside lists, tuples and
    dict values; other objects pass through unchanged.

    Remote things are proxies (:class:`Remote`) and every object whose type defines
    ``__shoal_gather__`` (see :class:`Gatherable`; :mod:`shoal.arrays`' arrays do). Every
    fetch is started before any is waited for, so the engines send at once.
    """
    found: list[object] = []
    _collect(x, found, 8)
    finishers = {id(p): _start_gather(p) for p in found}
    values = {k: finish() for k, finish in finishers.items()}
    return _replace(x, values, 8)


class Gatherable(Protocol[T_co]):
    """What :func:`gather` brings back besides proxies: a type with this method.

    ``__shoal_gather__()`` starts fetching the object's value from the engines and returns
    a function that waits for it and returns it; ``gather`` starts every fetch first,
    then calls the functions. ``Gatherable[T]`` is gathered as a ``T``.
    """

    def __shoal_gather__(self) -> Callable[[], T_co]: ...


def _start_gather(item: object) -> Callable[[], object]:
    if isinstance(item, Remote):
        reply = _request(item, MsgType.FETCH_REQUEST, {"id": item._shoal_ref.id})
        return lambda: reply.result()["result"]
    return type(item).__shoal_gather__(item)  # type: ignore[attr-defined, no-any-return]


def _gatherable(x: object) -> bool:
    # Looked up on the type: a proxy's attributes are remote.
    return isinstance(x, Remote) or hasattr(type(x), "__shoal_gather__")


def _collect(x: object, found: list[object], depth: int) -> None:
    """The things to gather in ``x``, in lists, tuples and dict values ``depth`` deep."""
    if _gatherable(x):
        found.append(x)
    elif depth > 0 and (type(x) is list or type(x) is tuple):
        for v in x:
            _collect(v, found, depth - 1)
    elif depth > 0 and type(x) is dict:
        for v in x.values():
            _collect(v, found, depth - 1)


def _replace(x: object, values: dict[int, object], depth: int) -> object:
    """``x`` with each thing gathered replaced by ``values[id(thing)]``."""
    if _gatherable(x):
        return values[id(x)]
    if depth > 0 and (type(x) is list or type(x) is tuple):
        return type(x)(_replace(v, values, depth - 1) for v in x)
    if depth > 0 and type(x) is dict:
        return {k: _replace(v, values, depth - 1) for k, v in x.items()}
    return x


def call_async(
    proxy: Remote, name: str, /, *args: object, **kwargs: object
) -> concurrent.futures.Future[object]:
    """``proxy.<name>(*args, **kwargs)`` started on its engine; a Future of the result
    (``result()``, ``get()``, awaitable). Works for special methods too:
    ``call_async(p, "__getitem__", 0)``."""
    return _call(proxy, name, args, kwargs, True)


def _apply_local(
    f: Callable[..., T], objs: list[object], args: tuple[object, ...], kwargs: dict[str, object]
) -> list[T]:
    return [f(o, *args, **kwargs) for o in objs]


def _method_local(
    name: str, objs: list[object], args: tuple[object, ...], kwargs: dict[str, object]
) -> list[object]:
    return [getattr(o, name)(*args, **kwargs) for o in objs]


def _per_engine(
    runner: Callable[[_F, list[object], tuple[object, ...], dict[str, object]], list[T]],
    first: _F,
    items: Sequence[object],
    args: tuple[object, ...],
    kwargs: dict[str, object],
) -> list[T]:
    """Run ``runner(first, objs, args, kwargs)`` once per engine over its items, in
    parallel; plain (local) items run here. Results in the order of ``items``."""
    by_engine: dict[int, list[int]] = {}
    out: dict[int, T] = {}
    client = None
    for i, item in enumerate(items):
        if isinstance(item, Remote) and item._shoal_client is not None:
            by_engine.setdefault(item.__engine_id__, []).append(i)
            client = item._shoal_client
    pending = []
    if client is not None:  # the client of the proxies among the items, if any
        for engine_id, idx in by_engine.items():
            view = client[engine_id]
            pending.append(
                (idx, view.apply_async(runner, first, [items[i] for i in idx], args, kwargs))
            )
    for i, item in enumerate(items):
        if not (isinstance(item, Remote) and item._shoal_client is not None):
            out[i] = runner(first, [item], args, kwargs)[0]
    for idx, result in pending:
        out.update(zip(idx, result.get(), strict=True))
    return [out[i] for i in range(len(items))]


@overload
def apply(f: Callable[..., T], obj: Remote, /, *args: object, **kwargs: object) -> T: ...
@overload
def apply(f: Callable[..., T], obj: list[_O], /, *args: object, **kwargs: object) -> list[T]: ...
@overload
def apply(f: Callable[..., T], obj: object, /, *args: object, **kwargs: object) -> T | list[T]: ...
def apply(f: Callable[..., T], obj: object, /, *args: object, **kwargs: object) -> T | list[T]:
    """``f(obj, *args, **kwargs)`` run on the engine holding ``obj`` (a proxy), or here
    for a plain object. A list or tuple of proxies: ``f`` on each, in parallel, each on
    its own engine; a list of the results."""
    if type(obj) is list or type(obj) is tuple:
        return _per_engine(_apply_local, f, obj, args, kwargs)
    return _per_engine(_apply_local, f, [obj], args, kwargs)[0]


def vectorize(f: Callable[..., T]) -> Callable[..., list[T]]:
    """``f`` made to run over a scattered sequence: ``vectorize(f)(proxies, *args)``
    runs ``f(item, *args)`` for each item on the engine holding it, in parallel (one
    message per engine), and returns the list of results."""

    def vectorized(items: Iterable[object], *args: object, **kwargs: object) -> list[T]:
        return _per_engine(_apply_local, f, list(items), args, kwargs)

    vectorized.__name__ = f"vectorized_{getattr(f, '__name__', 'function')}"
    vectorized.__doc__ = f.__doc__
    return vectorized


def call_all(
    proxies: Iterable[object], method: str, /, *args: object, **kwargs: object
) -> list[object]:
    """``p.<method>(*args, **kwargs)`` for every proxy, in parallel on their engines (one
    message per engine); the list of results, by value."""
    return _per_engine(_method_local, method, list(proxies), args, kwargs)


class ObjectHub:
    """Every remote object of the cluster, as a read-only mapping ``Ref -> proxy``.

    ``len(hub)`` counts them, ``hub.counts()`` per engine; iterating lists their refs;
    ``hub[ref]`` makes a proxy (holding a reference of its own). Each call asks the
    engines, so it shows the cluster as it is now.
    """

    def __init__(self, client: Client | None = None) -> None:
        self.client = client or current_client()

    def _listing(self) -> dict[int, list[list[Any]]]:
        """Per engine, its store's ``[id, type name]`` rows (as the engine sent them)."""
        client = self.client
        pending = {e: client.object_request(e, MsgType.LIST_REQUEST, {}) for e in client.ids}
        listing = {}
        for e, reply in pending.items():
            try:
                listing[e] = cast("list[list[Any]]", reply.result()["objects"])
            except Exception:  # an engine that went away holds nothing any more
                listing[e] = []
        return listing

    def counts(self) -> dict[int, int]:
        """How many objects each engine holds."""
        return {e: len(objects) for e, objects in self._listing().items()}

    def __len__(self) -> int:
        return sum(self.counts().values())

    def keys(self) -> list[Ref]:
        return [Ref(e, int(o[0])) for e, objects in self._listing().items() for o in objects]

    def __iter__(self) -> Iterator[Ref]:
        return iter(self.keys())

    def __contains__(self, ref: object) -> bool:
        return ref in self.keys()

    def types(self) -> dict[Ref, str]:
        """The type name of every object."""
        return {
            Ref(e, int(o[0])): str(o[1]) for e, objects in self._listing().items() for o in objects
        }

    def __getitem__(self, ref: Ref) -> Remote:
        types = self.types()
        if ref not in types:
            raise KeyError(f"{ref} is not held by any engine of the cluster")
        client = self.client
        interface = client.object_request(ref.engine, MsgType.DESCRIBE_REQUEST, {"id": ref.id})
        client.references.add(ref.engine, ref.id, client.owner, 1)
        client.references.flush()
        reply = {"types": {types[ref]: interface.result()}}
        return _make_proxies(ref.engine, [{"id": ref.id, "type": types[ref]}], reply, client)[0]

    def values(self) -> list[Remote]:
        return [self[r] for r in self.keys()]

    def items(self) -> list[tuple[Ref, Remote]]:
        return [(r, self[r]) for r in self.keys()]

    def __repr__(self) -> str:
        return f"<ObjectHub: {self.counts()} objects per engine>"
