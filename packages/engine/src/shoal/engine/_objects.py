"""The engine's object store: distob's ObjectEngine, in process.

Theory of operation
-------------------
An :class:`ObjectStore` keeps Python objects by integer id so that clients can use them
through proxies without moving them. Its rules:

* **Ids.** :meth:`ObjectStore.store` hands out a fresh id (1, 2, 3, ...) on every call;
  an id is never reused during the store's life, so a stale proxy can never reach a
  newer object. Storing the same object twice gives two ids with separate counts.
* **Reference counts, per owner.** A stored object starts with a count of 1 (the proxy
  that asked for it), booked to an *owner*: a string naming who holds the reference (a
  client's token; ``""`` for a lone engine's user). ``incref``/``decref`` move one
  owner's count; when the counts of all owners reach 0 the store forgets the object and
  holds nothing else for it, so its memory is returned once nothing else on the engine
  refers to it. A count never goes below 0: such a request fails and changes nothing.
  ``release(owner)`` drops every count an owner holds: a hub says so when a client's
  lease ends (the client died or left), and its objects go with it.
* **Refs in arguments.** A :class:`Ref` inside the arguments of ``call_method`` or the
  value of ``setattr`` stands for the stored object, and so does any object whose type
  has a ``__shoal_resolve__()`` method (a proxy from a higher layer: the method returns
  what the proxy stands for); it is replaced before the call, at
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
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from shoal.wire import Serializer

from ._errors import NoSuchObjectError
from ._replies import error_reply

__all__ = ["RESOLVE_DEPTH", "ObjectDescription", "ObjectStore", "Ref", "RefDict"]

#: How many container levels :meth:`ObjectStore.resolve` looks into for a :class:`Ref`.
RESOLVE_DEPTH = 8

_RETURNS = ("value", "ref", "auto")
# Values whose methods may return the object itself (int.__int__) and are still values.
_IMMUTABLE = frozenset({int, float, complex, bool, str, bytes, tuple, frozenset, type(None)})
_REPR_LIMIT = 200


class RefDict(TypedDict):
    """A ref dict: a stored object's ``id`` and its type name (``"module.Qualname"``),
    as :meth:`ObjectStore.ref` and the replies of PROTOCOL.md give it.

    .. versionadded:: 0.3
    """

    id: int
    type: str


class ObjectDescription(TypedDict):
    """What :meth:`ObjectStore.describe` returns (and ``describe_request`` answers).

    .. versionadded:: 0.3
    """

    type: str
    methods: list[str]
    attributes: list[str]
    specials: list[str]
    repr: str


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
        self._counts: dict[int, dict[str, int]] = {}  # id -> {owner: count}
        self._ids = itertools.count(1)
        self._handlers: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
            "store_request": self._store_request,
            "call_method_request": self._call_method_request,
            "getattr_request": self._getattr_request,
            "setattr_request": self._setattr_request,
            "incref_request": self._incref_request,
            "decref_request": self._decref_request,
            "describe_request": self._describe_request,
            "refs_request": self._refs_request,
            "release_request": self._release_request,
            "list_request": self._list_request,
            "fetch_request": self._fetch_request,
        }

    # -- the store ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, id: object) -> bool:
        return id in self._objects

    def __repr__(self) -> str:
        return f"<ObjectStore: {len(self)} objects, engine_id={self.engine_id}>"

    def store(self, obj: object, owner: str = "") -> int:
        """Keep ``obj`` with a reference count of 1 booked to ``owner``; return its new id.

        Every call gives a new id, even for an object already stored: storing the same
        object twice gives two ids, each with its own count.
        """
        oid = next(self._ids)
        self._objects[oid] = obj
        self._counts[oid] = {owner: 1}
        return oid

    def get(self, id: int) -> object:
        """The object stored under ``id``; :class:`NoSuchObjectError` if there is none."""
        try:
            return self._objects[id]
        except (KeyError, TypeError):
            raise self._missing(id) from None

    def ref(self, id: int) -> RefDict:
        """The ref dict ``{"id": id, "type": "module.Qualname"}`` of a stored object."""
        return {"id": id, "type": type_name(self.get(id))}

    def refcount(self, id: int) -> int:
        """The reference count of ``id``, all owners together."""
        return sum(self._owner_counts(id).values())

    def incref(self, id: int, n: int = 1, owner: str = "") -> int:
        """Add ``n`` (>= 1) to ``owner``'s count of ``id``; return the total count."""
        _check_count(n, "incref")
        counts = self._owner_counts(id)
        mine = counts.get(owner, 0) + n
        if mine:
            counts[owner] = mine
            return sum(counts.values())
        del counts[owner]  # a copy's +1 that came after its give-back (see decref)
        if not counts:
            del self._objects[id], self._counts[id]
            return 0
        return sum(counts.values())

    def decref(self, id: int, n: int = 1, owner: str = "") -> int:
        """Take ``n`` (>= 1) from ``owner``'s count of ``id``; return the total count.

        The object is dropped when the total reaches 0.

        Raises
        ------
        NoSuchObjectError
            ``id`` is not held (never stored, or already dropped).
        ValueError
            ``owner``'s count would go below 0; nothing is changed.
        """
        _check_count(n, "decref")
        counts = self._owner_counts(id)
        mine = counts.get(owner, 0) - n
        # A copy's own owner ("<owner>+<n>") may be given back before its +1 arrived (by
        # another connection): the count waits below 0 for it, and holds the object.
        if mine < 0 and "+" not in owner:
            raise ValueError(
                f"decref(n={n}) of object {id} would take the reference count of owner "
                f"{owner!r} below 0 (it is {mine + n}); nothing was changed"
            )
        if mine:
            counts[owner] = mine
        else:
            counts.pop(owner, None)
        if not counts:
            del self._objects[id], self._counts[id]
            return 0
        return sum(counts.values())

    def release(self, owner: str) -> int:
        """Drop every count ``owner`` holds (its copies' too); how many objects that freed."""
        freed = 0
        mine = owner + "+"
        for oid, counts in list(self._counts.items()):
            gone = [o for o in counts if o == owner or o.startswith(mine)]
            if not gone:
                continue
            for o in gone:
                del counts[o]
            if not counts:
                del self._objects[oid], self._counts[oid]
                freed += 1
        return freed

    def owners(self) -> dict[str, int]:
        """How many objects each owner holds a count on."""
        held: dict[str, int] = {}
        for counts in self._counts.values():
            for owner in counts:
                held[owner] = held.get(owner, 0) + 1
        return held

    def resolve(self, value: object) -> object:
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
        if hasattr(cls, "__shoal_resolve__"):
            return value.__shoal_resolve__()
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
        args: tuple[object, ...] = (),
        kwargs: Mapping[str, object] | None = None,
        returns: str = "auto",
        *,
        owner: str = "",
        keep: Collection[str] = (),
    ) -> (
        tuple[Literal["value"], object]
        | tuple[Literal["ref"], RefDict]
        | tuple[Literal["self"], None]
    ):
        """Call ``obj.<method>(*args, **kwargs)`` on the object ``id``.

        ``args`` and ``kwargs`` are resolved (:meth:`resolve`) first. Returns
        ``("value", result)`` or ``("ref", ref_dict)`` as ``returns`` asks (see the
        module docstring), or ``("self", None)`` when the method returned the object
        itself (``list.__iadd__``, fluent methods) and ``returns`` is not ``"value"``;
        with ``"auto"``, a result whose type name is in ``keep`` is kept as a ref. Any
        attribute name is allowed, dunders included.
        """
        _check_returns(returns)
        obj = self.get(id)
        fn = getattr(obj, _check_name(method, "method"))
        if not callable(fn):
            raise TypeError(
                f"{type_name(obj)}.{method} is {type_name(fn)}, not callable; "
                "use getattr to read it"
            )
        # As resolve(), whose result is typed object: a tuple comes back a tuple, a dict a dict.
        call_args = self._resolve(tuple(args), RESOLVE_DEPTH)
        call_kwargs = self._resolve(dict(kwargs or {}), RESOLVE_DEPTH)
        result = fn(*call_args, **call_kwargs)
        if result is obj and returns != "value" and type(obj) not in _IMMUTABLE:
            return "self", None
        return self._answer(result, returns, owner, keep)

    def getattr(
        self,
        id: int,
        name: str,
        returns: str = "auto",
        owner: str = "",
        keep: Collection[str] = (),
    ) -> tuple[Literal["value"], object] | tuple[Literal["ref"], RefDict]:
        """Read ``obj.<name>`` of the object ``id``; answered like :meth:`call_method`."""
        _check_returns(returns)
        value = getattr(self.get(id), _check_name(name, "name"))
        return self._answer(value, returns, owner, keep)

    def setattr(self, id: int, name: str, value: object) -> None:
        """Set ``obj.<name> = value`` on the object ``id``; ``value`` is resolved first."""
        obj = self.get(id)
        setattr(obj, _check_name(name, "name"), self.resolve(value))

    def interface(self, obj: object) -> dict[str, list[str]]:
        """``{"methods": [...], "specials": [...]}`` of ``obj``'s type: the public methods
        and the special methods a proxy class needs (read from the type, so no property
        of the object runs)."""
        cls = type(obj)
        methods = [n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n, None))]
        specials = [n for n in dir(cls) if n.startswith("__") and n.endswith("__")]
        return {"methods": methods, "specials": specials}

    def _types(self, ids: list[int]) -> dict[str, dict[str, list[str]]]:
        """The interface of each type among the objects ``ids``, once per type."""
        types: dict[str, dict[str, list[str]]] = {}
        for oid in ids:
            obj = self._objects[oid]
            name = type_name(obj)
            if name not in types:
                types[name] = self.interface(obj)
        return types

    def describe(self, id: int) -> ObjectDescription:
        """What a proxy needs to look like the object ``id``.

        Returns ``{"type": "module.Qualname", "methods": [...], "attributes": [...],
        "specials": [...], "repr": str}``: the sorted public (no leading ``_``) callable
        and non-callable attribute names, the special methods (``__len__``, ``__add__``,
        ...) the type defines, and ``repr(obj)`` cut to about 200 characters. An attribute
        whose lookup raises counts as non-callable.
        """
        obj = self.get(id)
        specials = sorted(n for n in dir(type(obj)) if n.startswith("__") and n.endswith("__"))
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
        return {
            "type": type_name(obj),
            "methods": methods,
            "attributes": attributes,
            "specials": specials,
            "repr": text,
        }

    def _answer(
        self, result: object, returns: str, owner: str = "", keep: Collection[str] = ()
    ) -> tuple[Literal["value"], object] | tuple[Literal["ref"], RefDict]:
        if returns == "auto" and keep and type_name(result) in keep:
            returns = "ref"
        if returns == "auto":
            try:
                self.serializer.dumps(result)
            except Exception:
                returns = "ref"
        if returns == "ref":
            return "ref", self.ref(self.store(result, owner))
        return "value", result

    def _owner_counts(self, id: int) -> dict[str, int]:
        try:
            return self._counts[id]
        except (KeyError, TypeError):
            raise self._missing(id) from None

    @staticmethod
    def _missing(id: object) -> NoSuchObjectError:
        return NoSuchObjectError(
            f"no object with id {id!r} in the object store: it was never stored, "
            "or its reference count reached 0"
        )

    # -- shell requests -----------------------------------------------------------------

    def handle(self, msg_type: str, content: object) -> dict[str, object]:
        """Answer one object-store shell request with its reply content.

        ``msg_type`` is one of ``store_request``, ``call_method_request``,
        ``getattr_request``, ``setattr_request``, ``incref_request``, ``decref_request``,
        ``describe_request``, ``refs_request``, ``release_request``, ``list_request``,
        ``fetch_request``; ``content`` holds the fields PROTOCOL.md lists for it.
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
        owner = _field(content, "store_request", "owner", str, "")
        if _field(content, "store_request", "items", bool, False):  # one id per item
            ids = [self.store(o, owner) for o in obj]
            return {"status": "ok", "refs": [self.ref(i) for i in ids], "types": self._types(ids)}
        oid = self.store(obj, owner)
        return {"status": "ok", "ref": self.ref(oid), "types": self._types([oid])}

    def _call_method_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        kind, answer = self.call_method(
            _field(content, "call_method_request", "id", int),
            _field(content, "call_method_request", "method", str),
            _field(content, "call_method_request", "args", (tuple, list), ()),
            _field(content, "call_method_request", "kwargs", (dict, type(None)), None),
            _field(content, "call_method_request", "returns", str, "auto"),
            owner=_field(content, "call_method_request", "owner", str, ""),
            keep=_field(content, "call_method_request", "keep", (list, tuple), ()),
        )
        return self._answered(kind, answer)

    def _answered(self, kind: str, answer: Any) -> dict[str, Any]:
        if kind == "self":
            return {"status": "ok", "self": True}
        if kind == "ref":
            return {"status": "ok", "ref": answer, "types": self._types([answer["id"]])}
        return {"status": "ok", "result": answer}

    def _getattr_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        kind, answer = self.getattr(
            _field(content, "getattr_request", "id", int),
            _field(content, "getattr_request", "name", str),
            _field(content, "getattr_request", "returns", str, "auto"),
            _field(content, "getattr_request", "owner", str, ""),
            _field(content, "getattr_request", "keep", (list, tuple), ()),
        )
        return self._answered(kind, answer)

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
            _field(content, "incref_request", "owner", str, ""),
        )
        return {"status": "ok", "refcount": count}

    def _decref_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        count = self.decref(
            _field(content, "decref_request", "id", int),
            _field(content, "decref_request", "n", int, 1),
            _field(content, "decref_request", "owner", str, ""),
        )
        return {"status": "ok", "refcount": count}

    def _describe_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        return {"status": "ok", **self.describe(_field(content, "describe_request", "id", int))}

    def _refs_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        """Many count changes in one request: ``deltas = [[id, delta], ...]``, in order.

        Made for proxies dropped in batches: an id already freed is skipped (counted in
        ``missing``), so one stale entry cannot block the others.
        """
        owner = _field(content, "refs_request", "owner", str, "")
        missing = 0
        for oid, delta in _field(content, "refs_request", "deltas", (list, tuple)):
            if oid not in self._counts:
                missing += 1
            elif delta > 0:
                self.incref(oid, delta, owner)
            elif delta < 0 and "+" in owner:
                # A copy given back before its +1 arrived (that came by another
                # connection): its count waits below 0 for it, as decref allows.
                self.decref(oid, -delta, owner)
            elif delta < 0:
                n = min(-delta, self._counts[oid].get(owner, 0))
                if n:
                    self.decref(oid, n, owner)
                if n < -delta:
                    missing += 1
        return {"status": "ok", "missing": missing, "objects": len(self)}

    def _release_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        freed = self.release(_field(content, "release_request", "owner", str))
        return {"status": "ok", "freed": freed, "objects": len(self)}

    def _list_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        objects = [
            [oid, type_name(obj), sum(self._counts[oid].values())]
            for oid, obj in self._objects.items()
        ]
        return {"status": "ok", "objects": objects, "owners": self.owners()}

    def _fetch_request(self, content: Mapping[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "result": self.get(_field(content, "fetch_request", "id", int))}


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
