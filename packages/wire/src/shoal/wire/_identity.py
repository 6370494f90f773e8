"""Identity of what travels by value: each such class and function keeps a tracker id.

Theory of operation
-------------------
A class or function the receiver cannot import (defined in ``__main__``, in a function
body, ...) travels by value. Without more, every message would build a new class on
the receiver, and a sender would get back instances of a class that is not its own:
``isinstance(gather(scatter(Counter())), Counter)`` would be False. The rules:

1. The first time this process pickles such a class or function it gives it a *tracker
   id* (uuid4 hex), recorded both ways: object -> id (a ``WeakKeyDictionary``) and
   id -> object ("own", a ``WeakValueDictionary``). The tables are process-wide, as
   they describe this process's objects (like ``sys.modules``); a lock makes giving an
   id and keeping a received class atomic, and they keep nothing alive.
2. Loading an id this process made (the *origin*) returns its own object, untouched:
   what the message says about it is read and dropped.
3. A class received under an id seen for the first time is built and kept under that
   id ("received"), and the id is recorded for it, so sending it (or its instances)
   onward or back carries the same id and its origin resolves it. An id received again
   returns the class built before, so the objects of two messages share one class,
   brought up to date: the message's attributes are set on it (methods rebuilt from the
   message replace the old ones; an attribute the sender deleted is kept). Its bases,
   metaclass, ``__slots__`` and enum members are those of the first message: they
   cannot change on a class that exists.
4. A received function is built afresh from every message (its globals may have
   changed at the sender since the last one); only its id is recorded, so that sending
   it back resolves to the original at its origin.
5. A class travels as a skeleton (metaclass, name, bases, module, qualified name,
   ``__slots__``, ``__orig_bases__``; an enum's members), made or found through the
   tracker, then its attributes as the pickle's *state*. The pickle memo holds the
   class before its attributes load, so a class that reaches itself (methods naming it,
   ``super()``'s ``__class__`` cells, a base whose methods name a subclass) needs
   nothing more: every such reference is the class that the tracker returned. As with
   cloudpickle, a metaclass (and ``__init_subclass__``) sees the skeleton's namespace,
   not the attributes set afterwards, and enum members are made from their values
   (a custom ``__new__`` of the members is not replayed).
6. Descriptors and sentinels that a class's attributes hold and plain pickle refuses or
   copies get reducers here (classmethod, staticmethod, property, mappingproxy, TypeVars
   of ``__main__``; dataclasses' field markers and ``MISSING``), so that ``__main__``
   classes (and their instances) stay on the C pickler's path.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import threading
import types
import typing
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Final

__all__: list[str] = []  # private module: shoal.wire._serialize uses it


class _Tracker:
    """The process's tracker ids: object -> id, and id -> own or received object."""

    __slots__ = ("_ids", "_lock", "_own", "_received")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._own: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._received: weakref.WeakValueDictionary[str, type] = weakref.WeakValueDictionary()

    def id_of(self, obj: Any) -> str:
        """``obj``'s tracker id; a new one, owned by this process, the first time."""
        tracker_id = self._ids.get(obj)
        if tracker_id is None:
            with self._lock:
                tracker_id = self._ids.get(obj)
                if tracker_id is None:
                    tracker_id = uuid.uuid4().hex
                    self._ids[obj] = tracker_id
                    self._own[tracker_id] = obj
        return tracker_id

    def own(self, tracker_id: str) -> Any:
        """The object this process gave ``tracker_id`` to, or None."""
        return self._own.get(tracker_id)

    def owns(self, obj: Any) -> bool:
        """True when ``obj`` is one of this process's own (rule 2: left untouched)."""
        tracker_id = self._ids.get(obj)
        return tracker_id is not None and self._own.get(tracker_id) is obj

    def known_class(self, tracker_id: str) -> Any:
        """The class (own or received) known under ``tracker_id``, or None."""
        cls = self._own.get(tracker_id)
        if cls is None:
            cls = self._received.get(tracker_id)
        return cls

    def keep_class(self, tracker_id: str, cls: type) -> type:
        """Keep ``cls`` as received under ``tracker_id``; or, when another thread was
        first, return the class it kept."""
        with self._lock:
            known = self.known_class(tracker_id)
            if known is not None:
                return known  # type: ignore[no-any-return]
            self._received[tracker_id] = cls
            self._ids[cls] = tracker_id
        return cls

    def remember(self, obj: Any, tracker_id: str) -> None:
        """Record ``tracker_id`` for a received function (rule 4)."""
        # One store, atomic under the GIL, with nothing to check first: no lock.
        self._ids[obj] = tracker_id


#: The process's tracker (module state on purpose: identity is per process).
_TRACKER = _Tracker()


# -- classes ---------------------------------------------------------------------------

_HEAPTYPE: Final = 1 << 9  # Py_TPFLAGS_HEAPTYPE: made by a class statement or type()
_MAIN_NAMES: Final = ("__main__", "__mp_main__")
# What EnumType computes when it makes an enum: made again by the skeleton.
_ENUM_MADE: Final = frozenset(
    {
        "__new__",
        "_all_bits_",
        "_boundary_",
        "_flag_mask_",
        "_generate_next_value_",
        "_inverted_",
        "_member_map_",
        "_member_names_",
        "_member_type_",
        "_new_member_",
        "_singles_mask_",
        "_unhashable_values_",
        "_use_args_",
        "_value2member_map_",
        "_value_repr_",
    }
)
_AUTOMATIC: Final = (types.GetSetDescriptorType, types.MemberDescriptorType)


def class_by_value(cls: type, needs_value: Callable[[Any], bool]) -> bool:
    """True when ``cls`` travels by value: defined in ``__main__``, or a Python class
    that cannot be imported by name (builtin and extension types keep pickle's way)."""
    if cls.__module__ in _MAIN_NAMES:
        return True
    return bool(cls.__flags__ & _HEAPTYPE) and needs_value(cls)


def _class_state(cls: type) -> dict[str, Any]:
    """The attributes that the skeleton does not make by itself."""
    state = dict(cls.__dict__)
    for name, value in cls.__dict__.items():
        # __dict__, __weakref__ and slots' descriptors: made with the class
        if isinstance(value, _AUTOMATIC) and value.__objclass__ is cls:
            del state[name]
    state.pop("__slots__", None)
    state.pop("__orig_bases__", None)
    if isinstance(cls, abc.ABCMeta):  # the registry, not the caches (_abc_data refuses)
        state.pop("_abc_impl", None)
        registry, *_ = _abc_dump(cls)
        state["_abc_impl"] = [sub for sub in (ref() for ref in registry) if sub is not None]
    return state


def _abc_dump(cls: type) -> tuple[Any, ...]:
    get_dump: Callable[[type], tuple[Any, ...]] = getattr(abc, "_get_dump")  # noqa: B009
    return get_dump(cls)


def reduce_class(cls: type) -> tuple[Any, ...]:
    """The reduction of a by-value class: a tracked skeleton, then its attributes."""
    tracker_id = _TRACKER.id_of(cls)
    state = _class_state(cls)
    namespace: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    if isinstance(cls, enum.EnumMeta):
        enum_members: dict[str, Any] = dict(cls.__members__)  # aliases too
        members = {name: member._value_ for name, member in enum_members.items()}
        for name in (*members, *_ENUM_MADE):
            state.pop(name, None)
        args: tuple[Any, ...] = (tracker_id, type(cls), cls.__name__, cls.__bases__, namespace)
        return (_make_enum, (*args, members), state, None, None, _set_class_state)
    for name in ("__slots__", "__orig_bases__"):  # needed by type() / Generic at creation
        if name in cls.__dict__:
            namespace[name] = cls.__dict__[name]
    args = (tracker_id, type(cls), cls.__name__, cls.__bases__, namespace)
    return (_make_class, args, state, None, None, _set_class_state)


def _make_class(
    tracker_id: str, metaclass: type, name: str, bases: tuple[type, ...], namespace: dict[str, Any]
) -> type:
    """The class known under ``tracker_id``, else a new skeleton kept under it."""
    known = _TRACKER.known_class(tracker_id)
    if known is not None:
        return known  # type: ignore[no-any-return]
    cls = types.new_class(name, bases, {"metaclass": metaclass}, lambda ns: ns.update(namespace))
    return _TRACKER.keep_class(tracker_id, cls)


def _make_enum(  # noqa: PLR0917 - called by the unpickler, positionally
    tracker_id: str,
    metaclass: type[enum.EnumMeta],
    name: str,
    bases: tuple[type, ...],
    namespace: dict[str, Any],
    members: dict[str, Any],
) -> type:
    """As ``_make_class``, for an enum: its members are made with the class."""
    known = _TRACKER.known_class(tracker_id)
    if known is not None:
        return known  # type: ignore[no-any-return]
    classdict = metaclass.__prepare__(name, bases)
    for key, value in (*namespace.items(), *members.items()):
        classdict[key] = value
    cls = metaclass(name, bases, classdict)
    return _TRACKER.keep_class(tracker_id, cls)


def _set_class_state(cls: type, state: dict[str, Any]) -> type:
    """Set the attributes of a received class (rule 3); an own class stays untouched."""
    if _TRACKER.owns(cls):
        return cls
    registry: list[type] = []
    for name, value in state.items():
        if name == "_abc_impl":
            registry = value
        else:
            setattr(cls, name, value)
    for subclass in registry:
        cls.register(subclass)  # type: ignore[attr-defined]
    return cls


# -- what class attributes hold --------------------------------------------------------


def _dataclasses_sentinel(name: str) -> object:
    return getattr(dataclasses, name)


def _reduce_wrapper(obj: Any) -> tuple[Any, ...]:
    return type(obj), (obj.__func__,)


def _reduce_property(obj: property) -> tuple[Any, ...]:
    return type(obj), (obj.fget, obj.fset, obj.fdel, obj.__doc__)


def _mappingproxy(mapping: dict[str, Any]) -> types.MappingProxyType[str, Any]:
    return types.MappingProxyType(mapping)


def _reduce_mappingproxy(obj: types.MappingProxyType[str, Any]) -> tuple[Any, ...]:
    return _mappingproxy, (dict(obj),)  # e.g. a dataclass field's metadata


def _make_typevar(name: str, bound: Any, constraints: tuple[Any, ...], variance: str) -> Any:
    make: Callable[..., Any] = typing.TypeVar  # mypy wants a literal name
    typevar = make(
        name,
        *constraints,
        bound=bound,
        covariant=variance == "+",
        contravariant=variance == "-",
    )
    typevar.__module__ = "__main__"
    return typevar


def _reduce_typevar(obj: Any) -> Any:
    """A TypeVar of ``__main__`` by value (pickle would look it up there by name)."""
    if getattr(obj, "__module__", None) not in _MAIN_NAMES:
        return NotImplemented
    variance = "+" if obj.__covariant__ else "-" if obj.__contravariant__ else ""
    return _make_typevar, (obj.__name__, obj.__bound__, obj.__constraints__, variance)


def _sentinel_reducer(name: str) -> Callable[[Any], tuple[Any, ...]]:
    return lambda obj: (_dataclasses_sentinel, (name,))


def _field_marker(obj: Any) -> tuple[Any, ...]:
    return _dataclasses_sentinel, (obj.name,)  # _FIELD, _FIELD_CLASSVAR, _FIELD_INITVAR


#: Reducers for the types above (exact types), for the C pickler's ``reducer_override``.
PART_REDUCERS: Final[dict[type, Callable[[Any], Any]]] = {
    classmethod: _reduce_wrapper,
    staticmethod: _reduce_wrapper,
    abc.abstractclassmethod: _reduce_wrapper,
    abc.abstractstaticmethod: _reduce_wrapper,
    property: _reduce_property,
    types.MappingProxyType: _reduce_mappingproxy,
    typing.TypeVar: _reduce_typevar,
    abc.abstractproperty: _reduce_property,
    type(dataclasses.MISSING): _sentinel_reducer("MISSING"),
    type(dataclasses.KW_ONLY): _sentinel_reducer("KW_ONLY"),
    getattr(dataclasses, "_HAS_DEFAULT_FACTORY_CLASS"): _sentinel_reducer(  # noqa: B009
        "_HAS_DEFAULT_FACTORY"
    ),
    getattr(dataclasses, "_FIELD_BASE"): _field_marker,  # noqa: B009
}
