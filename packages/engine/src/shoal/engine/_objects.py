"""The engine's object store: distob's ObjectEngine, in process.

Theory of operation
-------------------
An :class:`ObjectStore` keeps Python objects by integer id so that clients can use them
through proxies without moving them. Its rules:

* **Ids.** :meth:`ObjectStore.store` hands out a fresh id (1, 2, 3, ...) on every call;
  an id is never reused during the store's life, so a stale proxy can never reach a
  newer object. Storing the same object twice gives two ids with separate counts.
* **Reference counts.** A stored object starts with a count of 1 (the proxy that asked
  for it). ``incref``/``decref`` move the count; at 0 the store forgets the object and
  holds nothing else for it, so its memory is returned once nothing else on the engine
  refers to it. The count never goes below 0: such a request fails and changes nothing.
* **Refs in arguments.** A :class:`Ref` inside the arguments of ``call_method`` or the
  value of ``setattr`` stands for the stored object; it is replaced before the call, at
  the top level and inside plain ``tuple``/``list``/``dict`` values (dict values, not
  keys) up to :data:`RESOLVE_DEPTH` levels deep. Containers without a Ref are passed as
  they are, never copied; subclasses of those containers are left untouched.
* **Results.** ``returns="value"`` answers the result itself, ``"ref"`` stores it and
  answers a ref dict ``{"id": int, "type": "module.Qualname"}``, ``"auto"`` answers by
  value when the serializer can serialize it and by ref when not.
* **Names.** Any attribute name is allowed, dunders (``__getitem__``, ``__call__``) and
  private names included: the engine runs the client's code anyway, so refusing names
  would protect nothing.
* **Requests.** :meth:`ObjectStore.handle` answers the object-store shell requests of
  PROTOCOL.md with reply content. It never raises: every failure, the user's or the
  request's, becomes an error reply whose traceback leaves out this module's frames.

No sockets, no threads: the engine calls :meth:`ObjectStore.handle` on its main thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shoal.wire import Serializer

from ._errors import NoSuchObjectError
from ._replies import error_reply

__all__ = ["RESOLVE_DEPTH", "ObjectStore", "Ref"]

#: How many container levels :meth:`ObjectStore.resolve` looks into for a :class:`Ref`.
RESOLVE_DEPTH = 8

_RETURNS = ("value", "ref", "auto")
_REPR_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Ref:
    """The marker for "the object with this id on this engine", put in arguments.

    Parameters
    ----------
    id : int
        The id :meth:`ObjectStore.store` returned.

    Examples
    --------
    >>> store = ObjectStore()
    >>> a, b = store.store([1, 2]), store.store([3])
    >>> store.call_method(a, "extend", (Ref(b),))
    ('value', None)
    >>> store.get(a)
    [1, 2, 3]

    .. versionadded:: 0.1
    """

    id: int


def type_name(obj: object) -> str:
    """``"module.Qualname"`` of ``obj``'s type, as ref dicts and ``describe`` show it."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class ObjectStore:
    """Objects kept by id, used through method calls and attribute access by id.

    The engine side of distob's ObjectEngine; see the module docstring for its rules
    and PROTOCOL.md ("Object store") for the requests it answers.

    Parameters
    ----------
    serializer : shoal.wire.Serializer, optional
        Decides what ``returns="auto"`` can send by value, and whether an error reply can
        carry the exception object. Default: a new ``Serializer()``.
    engine_id : int, optional
        Put in error replies; ``None`` for a lone engine.

    Examples
    --------
    >>> store = ObjectStore()
    >>> oid = store.store({"a": 1})
    >>> store.call_method(oid, "get", ("a",))
    ('value', 1)
    >>> store.call_method(oid, "keys", returns="ref")[0]
    'ref'
    >>> store.handle("decref_request", {"id": oid})
    {'status': 'ok', 'refcount': 0}
    >>> oid in store
    False

    .. versionadded:: 0.1
    """

    def __init__(
        self, serializer: Serializer | None = None, *, engine_id: int | None = None
    ) -> None:
        self.serializer = Serializer() if serializer is None else serializer
        self.engine_id = engine_id
        self._objects: dict[int, Any] = {}
        self._refcounts: dict[int, int] = {}
        self._ids = itertools.count(1)
        self._handlers: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
            "store_request": self._store_request,
            "call_method_request": self._call_method_request,
            "getattr_request": self._getattr_request,
            "setattr_request": self._setattr_request,
            "incref_request": self._incref_request,
            "decref_request": self._decref_request,
            "describe_request": self._describe_request,
        }

    # -- the store ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, id: object) -> bool:
        return id in self._objects

    def __repr__(self) -> str:
        return f"<ObjectStore: {len(self)} objects, engine_id={self.engine_id}>"

    def store(self, obj: Any) -> int:
        """Keep ``obj`` with a reference count of 1 and return its new id.

        Every call gives a new id, even for an object already stored: storing the same
        object twice gives two ids, each with its own count.
        """
        oid = next(self._ids)
        self._objects[oid] = obj
        self._refcounts[oid] = 1
        return oid

    def get(self, id: int) -> Any:
        """The object stored under ``id``; :class:`NoSuchObjectError` if there is none."""
        try:
            return self._objects[id]
        except (KeyError, TypeError):
            raise self._missing(id) from None

    def ref(self, id: int) -> dict[str, Any]:
        """The ref dict ``{"id": id, "type": "module.Qualname"}`` of a stored object."""
        return {"id": id, "type": type_name(self.get(id))}

    def incref(self, id: int, n: int = 1) -> int:
        """Add ``n`` (>= 1) to the reference count of ``id``; return the new count."""
        _check_count(n, "incref")
        count = self._refcount(id) + n
        self._refcounts[id] = count
        return count

    def decref(self, id: int, n: int = 1) -> int:
        """Take ``n`` (>= 1) from the count of ``id``; at 0 drop the object. Return the count.

        Raises
        ------
        NoSuchObjectError
            ``id`` is not held (never stored, or already dropped).
        ValueError
            The count would go below 0; nothing is changed.
        """
        _check_count(n, "decref")
        count = self._refcount(id) - n
        if count < 0:
            raise ValueError(
                f"decref(n={n}) of object {id} would take its reference count below 0 "
                f"(it is {count + n}); nothing was changed"
            )
        if count == 0:
            del self._objects[id], self._refcounts[id]
        else:
            self._refcounts[id] = count
        return count

    def resolve(self, value: Any) -> Any:
        """``value`` with every :class:`Ref` replaced by the object it names.

        Looks at the top level and inside plain tuples, lists and dict values, up to
        :data:`RESOLVE_DEPTH` levels; containers holding no Ref come back unchanged (the
        same object, not a copy).
        """
        return self._resolve(value, RESOLVE_DEPTH)

    def _resolve(self, value: Any, depth: int) -> Any:
        cls = type(value)
        if cls is Ref:
            return self.get(value.id)
        if depth <= 0:
            return value
        if cls is tuple or cls is list:
            items = [self._resolve(v, depth - 1) for v in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return cls(items)
        if cls is dict:
            out = {k: self._resolve(v, depth - 1) for k, v in value.items()}
            if all(out[k] is v for k, v in value.items()):
                return value
            return out
        return value

    # -- using stored objects -------------------------------------------------------------

    def call_method(
        self,
        id: int,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        returns: str = "auto",
    ) -> tuple[Literal["value", "ref"], Any]:
        """Call ``obj.<method>(*args, **kwargs)`` on the object ``id``.

        ``args`` and ``kwargs`` are resolved (:meth:`resolve`) first. Returns
        ``("value", result)`` or ``("ref", ref_dict)`` as ``returns`` asks (see the
        module docstring). Any attribute name is allowed, dunders included.
        """
        _check_returns(returns)
        obj = self.get(id)
        fn = getattr(obj, _check_name(method, "method"))
        if not callable(fn):
            raise TypeError(
                f"{type_name(obj)}.{method} is {type_name(fn)}, not callable; "
                "use getattr to read it"
            )
        args = self.resolve(tuple(args))
        kwargs = self.resolve(dict(kwargs or {}))
        return self._answer(fn(*args, **kwargs), returns)

    def getattr(
        self, id: int, name: str, returns: str = "auto"
    ) -> tuple[Literal["value", "ref"], Any]:
        """Read ``obj.<name>`` of the object ``id``; answered like :meth:`call_method`."""
        _check_returns(returns)
        return self._answer(getattr(self.get(id), _check_name(name, "name")), returns)

    def setattr(self, id: int, name: str, value: Any) -> None:
        """Set ``obj.<name> = value`` on the object ``id``; ``value`` is resolved first."""
        obj = self.get(id)
        setattr(obj, _check_name(name, "name"), self.resolve(value))

    def describe(self, id: int) -> dict[str, Any]:
        """What a proxy needs to look like the object ``id``.

        Returns ``{"type": "module.Qualname", "methods": [...], "attributes": [...],
        "repr": str}``: the sorted public (no leading ``_``) callable and non-callable
        attribute names, and ``repr(obj)`` cut to about 200 characters. An attribute
        whose lookup raises counts as non-callable.
        """
        obj = self.get(id)
        methods: list[str] = []
        attributes: list[str] = []
        for name in sorted(n for n in dir(obj) if not n.startswith("_")):
            try:
                is_method = callable(getattr(obj, name))
            except Exception:
                is_method = False
            (methods if is_method else attributes).append(name)
        try:
            text = repr(obj)
        except Exception as exc:
            text = f"<{type_name(obj)} object; repr() raised {type(exc).__name__}>"
        if len(text) > _REPR_LIMIT:
            text = text[: _REPR_LIMIT - 3] + "..."
        return {"type": type_name(obj), "methods": methods, "attributes": attributes, "repr": text}

    def _answer(self, result: Any, returns: str) -> tuple[Literal["value", "ref"], Any]:
        if returns == "auto":
            try:
                self.serializer.dumps(result)
            except Exception:
                returns = "ref"
        if returns == "ref":
            return "ref", self.ref(self.store(result))
        return "value", result

    def _refcount(self, id: int) -> int:
        try:
            return self._refcounts[id]
        except (KeyError, TypeError):
            raise self._missing(id) from None

    @staticmethod
    def _missing(id: object) -> NoSuchObjectError:
        return NoSuchObjectError(
            f"no object with id {id!r} in the object store: it was never stored, "
            "or its reference count reached 0"
        )

    # -- shell requests -----------------------------------------------------------------

    def handle(self, msg_type: str, content: Mapping[str, Any]) -> dict[str, Any]:
        """Answer one object-store shell request with its reply content.

        ``msg_type`` is one of ``store_request``, ``call_method_request``,
        ``getattr_request``, ``setattr_request``, ``incref_request``, ``decref_request``,
        ``describe_request``; ``content`` holds the fields PROTOCOL.md lists for it.
        Returns ``{"status": "ok", ...}`` with the reply's fields. Never raises: any
        exception (``KeyboardInterrupt`` and ``SystemExit`` included) becomes an error
        reply (PROTOCOL.md, "Error replies").
        """
        try:
            handler = self._handlers.get(msg_type)
            if handler is None:
                raise ValueError(
                    f"msg_type must be one of {sorted(self._handlers)}, got {msg_type!r}"
                )
            if not isinstance(content, Mapping):
                raise TypeError(f"{msg_type} content must be a mapping, got {type_name(content)}")
            return handler(content)
        except BaseException as exc:
            return error_reply(exc, engine_id=self.engine_id, serializer=self.serializer)

    def _store_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        obj = _field(content, "store_request", "obj", object)
        return {"status": "ok", "ref": self.ref(self.store(obj))}

    def _call_method_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        kind, answer = self.call_method(
            _field(content, "call_method_request", "id", int),
            _field(content, "call_method_request", "method", str),
            _field(content, "call_method_request", "args", (tuple, list), ()),
            _field(content, "call_method_request", "kwargs", (dict, type(None)), None),
            _field(content, "call_method_request", "returns", str, "auto"),
        )
        return {"status": "ok", ("result" if kind == "value" else "ref"): answer}

    def _getattr_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        kind, answer = self.getattr(
            _field(content, "getattr_request", "id", int),
            _field(content, "getattr_request", "name", str),
            _field(content, "getattr_request", "returns", str, "auto"),
        )
        return {"status": "ok", ("result" if kind == "value" else "ref"): answer}

    def _setattr_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        self.setattr(
            _field(content, "setattr_request", "id", int),
            _field(content, "setattr_request", "name", str),
            _field(content, "setattr_request", "value", object),
        )
        return {"status": "ok"}

    def _incref_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        count = self.incref(
            _field(content, "incref_request", "id", int),
            _field(content, "incref_request", "n", int, 1),
        )
        return {"status": "ok", "refcount": count}

    def _decref_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        count = self.decref(
            _field(content, "decref_request", "id", int),
            _field(content, "decref_request", "n", int, 1),
        )
        return {"status": "ok", "refcount": count}

    def _describe_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        return {"status": "ok", **self.describe(_field(content, "describe_request", "id", int))}


_REQUIRED: Any = object()


def _field(
    content: Mapping[str, Any],
    msg_type: str,
    name: str,
    kind: type | tuple[type, ...],
    default: Any = _REQUIRED,
) -> Any:
    """``content[name]``, checked to be a ``kind``; bools never count as ints."""
    if name not in content:
        if default is _REQUIRED:
            raise ValueError(f"{msg_type} content needs a {name!r} field; it has {sorted(content)}")
        return default
    value = content[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise TypeError(
            f"{msg_type} field {name!r} must be {expected}, got {type_name(value)} {value!r:.80}"
        )
    return value


def _check_returns(returns: object) -> None:
    if returns not in _RETURNS:
        raise ValueError(f"returns must be one of 'value', 'ref', 'auto'; got {returns!r}")


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be an attribute name (str), got {type_name(name)}")
    return name


def _check_count(n: object, op: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{op} n must be an int >= 1, got {n!r}")
