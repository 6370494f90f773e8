"""Dictionaries with extra lookups: attribute access and two-way lookup.

Theory of operation
-------------------
* ``Namespace`` is a plain ``dict`` whose string keys can also be read and written as
  attributes. A name that ``dict`` itself has (``keys``, ``items``, ``__class__``, ...)
  can never be set as an attribute: it would shadow the method for every reader.
* ``ReverseDict`` keeps a second dict from values to keys, so ``rd[key]`` and
  ``rd[value]`` both work. Every change goes through ``__setitem__`` or
  ``__delitem__``, which update both dicts, and ``__setitem__`` refuses any pair that
  would make a lookup ambiguous, so the two sides always agree.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar, overload

__all__ = ["Namespace", "ReverseDict"]

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V", bound=Hashable)
_D = TypeVar("_D")
_MISSING: Any = object()


def _lookup(mapping: Mapping[Any, Any], key: object) -> Any:
    return mapping.get(key, _MISSING)


class Namespace(dict[str, Any]):
    """A ``dict`` whose keys are also attributes.

    ``ns.x`` reads ``ns["x"]`` and ``ns.x = 1`` writes ``ns["x"] = 1``.

    Raises
    ------
    AttributeError
        When reading or deleting an attribute that is not a key.
    KeyError
        When setting an attribute whose name ``dict`` already has (``ns.keys = 1``):
        it would hide the method. Use ``ns["keys"] = 1`` instead.

    Examples
    --------
    >>> ns = Namespace(a=1)
    >>> ns.b = 2
    >>> ns
    Namespace({'a': 1, 'b': 2})
    >>> ns.a + ns["b"]
    3

    .. versionadded:: 0.1
    """

    # No instance __dict__: every attribute write must land in the mapping.
    __slots__ = ()

    def __getattr__(self, key: str) -> Any:
        # AttributeError, not IPython's NameError: getattr(ns, name, default), hasattr,
        # copy and pickle all rely on it.
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if hasattr(dict, key):
            raise KeyError(
                f"cannot set attribute {key!r} on a {type(self).__name__}: it would hide the"
                f" dict attribute of that name; set it as an item instead: ns[{key!r}] = ..."
            )
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no key {key!r}") from None

    def __dir__(self) -> list[str]:
        # Tab completion shows the keys that are usable as attributes.
        names = set(super().__dir__())
        names.update(k for k in self if isinstance(k, str) and k.isidentifier())
        return sorted(names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"


class ReverseDict(MutableMapping[_K, _V]):
    """A mapping that also looks values up: ``rd[key] == value`` and ``rd[value] == key``.

    Keys and values share one lookup space, so no object may be a key of one pair
    and the value of another, and no value may belong to two keys. ``[]`` and ``get``
    try the keys first, then the values; ``in``, iteration, ``len``, ``del`` and ``pop``
    see the keys only, as for a ``dict``. It is a ``MutableMapping``, not a ``dict``
    subclass (IPython's was): ``dict(rd)`` gives a plain dict. Typed as
    ``ReverseDict[K, V]``; ``rd[v]`` is typed ``K``.

    Parameters
    ----------
    data : mapping or iterable of (key, value) pairs, optional
        The initial pairs; each one is checked as by ``rd[key] = value``.

    Raises
    ------
    KeyError
        When a pair would put one object on both sides (``rd[1] = 2`` then
        ``rd[2] = 3``), or give a value a second key (``rd[1] = "a"`` then
        ``rd[2] = "a"``); and when neither a key nor a value matches a lookup.

    Examples
    --------
    >>> rd = ReverseDict({0: "engine-a"})
    >>> rd[0], rd["engine-a"]
    ('engine-a', 0)

    .. versionadded:: 0.1
    """

    # A MutableMapping over two dicts rather than a dict subclass: dict's C methods
    # (update, setdefault, |=, copy, pickling) would bypass __setitem__ and let the
    # reverse index go stale; here every write goes through the two methods below.

    def __init__(self, data: Mapping[_K, _V] | Iterable[tuple[_K, _V]] = (), /) -> None:
        self._forward: dict[_K, _V] = {}
        self._reverse: dict[_V, _K] = {}
        self.update(data)

    @overload
    def __getitem__(self, key: _K) -> _V: ...
    @overload
    def __getitem__(self, key: _V) -> _K: ...
    def __getitem__(self, key: _K | _V) -> _V | _K:
        # Keys and values share one lookup space: each side is asked for either kind.
        forward: dict[Any, _V] = self._forward
        reverse: dict[Any, _K] = self._reverse
        try:
            return forward[key]
        except KeyError:
            return reverse[key]

    @overload
    def get(self, key: _K, /) -> _V | None: ...
    @overload
    def get(self, key: _V, /) -> _K | None: ...
    @overload
    def get(self, key: _K, default: _V | _D, /) -> _V | _D: ...
    @overload
    def get(self, key: _V, default: _K | _D, /) -> _K | _D: ...
    def get(self, key: _K | _V, default: _V | _K | _D | None = None, /) -> _V | _K | _D | None:
        """Return ``self[key]`` (the value of a key, or the key of a value), else ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: _K, value: _V) -> None:
        owner = _lookup(self._reverse, key)  # keys and values share one lookup space
        if owner is not _MISSING and owner != key:
            raise KeyError(f"can't have key {key!r} on both sides: it is the value of {owner!r}")
        owner = self._reverse.get(value, _MISSING)
        if owner is not _MISSING and owner != key:
            raise KeyError(f"value {value!r} already belongs to key {owner!r}")
        if value != key and _lookup(self._forward, value) is not _MISSING:
            raise KeyError(f"can't have {value!r} on both sides: it is already a key")
        old = self._forward.get(key, _MISSING)
        if old is not _MISSING:
            del self._reverse[old]
        self._forward[key] = value
        self._reverse[value] = key

    def __delitem__(self, key: _K) -> None:
        value = self._forward.pop(key)
        del self._reverse[value]

    def __contains__(self, key: object) -> bool:
        return key in self._forward

    def __iter__(self) -> Iterator[_K]:
        return iter(self._forward)

    def __len__(self) -> int:
        return len(self._forward)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._forward!r})"

    def copy(self) -> ReverseDict[_K, _V]:
        """Return a shallow copy."""
        return type(self)(self._forward)
