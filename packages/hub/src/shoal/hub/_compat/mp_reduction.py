"""``multiprocess.reduction`` for the cluster context: custom reducers, client and engines.

Theory of operation
-------------------
In multiprocess, ``reduction.register(type, reduce)`` teaches the one pickler of the
program's processes how to pickle ``type``. A cluster has one serializer per process
(:class:`shoal.wire.Serializer`): the client's, which pickles what it sends to engines,
and each engine's, which pickles what its tasks return. So :func:`register` records the
pair here and applies it

* to this process's :class:`ForkingPickler` (what :func:`dump` and
  ``ForkingPickler.dumps`` use),
* to the serializer of every client it is applied to: those passed to :func:`attach`,
  and the connected :func:`~shoal.hub.current_client` (the one ``mp.reduction`` of
  ``mp = client.context()`` means, unless another Client connected since),
* and to the serializer of each of those clients' engines, by a registration task run on
  every engine through ``client[:]``; engines that were already given a pair are not
  given it again.

Engines that join a cluster later get the pairs recorded so far when :func:`sync` (or
:func:`attach`, or another :func:`register`) next runs for their client: the Client
offers no hook that announces a new engine, so nothing runs at the moment one registers.

A type defined in ``__main__`` or inside a function works too: shoal's serializer sends
such a class by value with an id, and an engine keeps the one class it built for that
id, so the registration task and the later tasks name the same class there.

What differs from multiprocess, and why:

* ``reduce`` is used for instances of exactly ``type``, not of its subclasses (as in
  multiprocess, whose pickler looks types up in a dispatch table too).
* Registering any reducer on a client takes its serializer off the fast path it uses
  for plain contents (every message is then pickled by the full pickler): register
  what needs it only.
* :class:`ForkingPickler` pickles with shoal's serializer (dill's semantics, protocol 5,
  every buffer in band), so its bytes load with plain ``pickle.loads``; it is not a
  ``pickle.Pickler`` subclass. There are no ``send_handle``/``recv_handle``/``DupFd``:
  file descriptors do not travel between an engine and its client.
"""

from __future__ import annotations

import pickle
import sys
import threading
import weakref
from collections.abc import Callable
from typing import IO, ClassVar, Final, TypeAlias, TypeVar, cast

from shoal.engine import current_engine
from shoal.wire import Serializer

from .._client.client import Client, current_client

__all__ = [
    "ForkingPickler",
    "Reducer",
    "attach",
    "dump",
    "register",
    "registered",
    "sync",
]

#: A reducer: what ``__reduce__`` returns for an object, ``(callable, args[, state...])``.
Reducer: TypeAlias = Callable[[object], "str | tuple[object, ...]"]

_T = TypeVar("_T")
_NO_BUFFERS_OUT_OF_BAND: Final = sys.maxsize  # ForkingPickler writes one stream

_lock = threading.RLock()
_registry: dict[type, Reducer] = {}  # every pair registered in this process, in order
_local = Serializer(threshold=_NO_BUFFERS_OUT_OF_BAND)  # ForkingPickler's
# Per client: how many pairs each of its engines has been given (pairs are only added,
# so a count says which ones).
_clients: weakref.WeakKeyDictionary[Client, dict[int, int]] = weakref.WeakKeyDictionary()


def _check(kind: object, reduce: object) -> None:
    if not isinstance(kind, type):
        raise TypeError(f"type must be a class, got {kind!r}")
    if not callable(reduce):
        raise TypeError(f"reduce must be callable, got {reduce!r}")


def register(type: type[_T], reduce: Callable[[_T], str | tuple[object, ...]]) -> None:
    """Pickle instances of ``type`` with ``reduce(obj)``, here and on the engines.

    ``reduce`` returns what ``__reduce__`` would: ``(callable, args[, state, ...])``. See
    the module docstring for where it applies. It returns once every engine ran the
    registration task (behind the tasks queued there before it).

    Raises
    ------
    TypeError
        ``type`` is not a class, or ``reduce`` is not callable.
    shoal.hub.RemoteError
        The registration failed on an engine (it could not import ``type``'s module).
    """
    _check(type, reduce)
    reducer = cast(Reducer, reduce)  # it is only ever given instances of ``type``
    with _lock:
        _registry[type] = reducer
        _local.register(type, reducer)
        ForkingPickler._extra_reducers[type] = reducer
    for client in _targets():
        _apply(client)


def registered() -> dict[type, Reducer]:
    """The pairs registered in this process so far (a copy), in order."""
    with _lock:
        return dict(_registry)


def attach(client: Client) -> None:
    """Apply the pairs registered so far, and those registered later, to ``client`` and
    its engines (``client.context()`` calls this)."""
    if not isinstance(client, Client):
        raise TypeError(f"client must be a shoal.hub.Client, got {client!r}")
    with _lock:
        _clients.setdefault(client, {})
    _apply(client)


def sync(client: Client | None = None) -> list[int]:
    """Give the engines that joined ``client``'s cluster since the last registration the
    pairs registered so far; the ids of the engines given some. Default: the connected
    :func:`~shoal.hub.current_client`."""
    if client is None:
        client = current_client()
    elif not isinstance(client, Client):
        raise TypeError(f"client must be a shoal.hub.Client or None, got {client!r}")
    with _lock:
        _clients.setdefault(client, {})
    return _apply(client)


def _targets() -> list[Client]:
    with _lock:
        # A closed client's engines are out of reach (and the pairs wait for no one).
        targets = [c for c in _clients if not c._closed and c._lost is None]
    try:
        current: Client | None = current_client()
    except RuntimeError:  # no client connected: the pairs wait for attach()
        current = None
    if current is not None and current not in targets:
        with _lock:
            _clients.setdefault(current, {})
        targets.append(current)
    return targets


def _apply(client: Client) -> list[int]:
    """Register every recorded pair on ``client``'s serializer, and on the engines that
    lack some of them; returns those engines' ids."""
    with _lock:
        pairs = list(_registry.items())
        given = _clients.setdefault(client, {})
        # The client's Codec owns the serializer that pickles its requests; the Client
        # has no public accessor for it yet (a ``Client.serializer`` would do).
        serializer: Serializer = client._codec.serializer
        for kind, reduce in pairs:
            serializer.register(kind, reduce)
        ids = client.ids
        behind = [e for e in ids if given.get(e, 0) < len(pairs)]
    if not behind:
        return []
    # Engines with fewer pairs get all of them again (registering twice is harmless).
    client.direct_view(behind).apply_sync(_install, pairs)
    with _lock:
        for e in behind:
            given[e] = max(given.get(e, 0), len(pairs))
    return behind


def _install(pairs: list[tuple[type, Reducer]]) -> int:
    """On an engine: register the pairs with its serializer and its ForkingPickler."""
    engine = current_engine()
    with _lock:
        for kind, reduce in pairs:
            if engine is not None:
                engine.serializer.register(kind, reduce)
            _registry[kind] = reduce
            _local.register(kind, reduce)
            ForkingPickler._extra_reducers[kind] = reduce
    return len(pairs)


class ForkingPickler:
    """multiprocess's ``ForkingPickler``: ``ForkingPickler(file).dump(obj)``,
    ``ForkingPickler.dumps(obj)`` (bytes that ``pickle.loads`` reads), ``loads`` and the
    class method ``register`` (which is :func:`register`).

    It pickles with shoal's serializer and the reducers registered here.
    """

    _extra_reducers: ClassVar[dict[type, Reducer]] = {}

    def __init__(self, file: IO[bytes], protocol: int | None = None) -> None:
        _check_protocol(protocol)
        if not hasattr(file, "write"):
            raise TypeError(f"file must have a write() method, got {file!r}")
        self._file = file

    def dump(self, obj: object) -> None:
        """Write ``obj``'s pickle to the file."""
        self._file.write(self.dumps(obj))

    @classmethod
    def register(cls, type: type, reduce: Reducer) -> None:
        """Register a reduce function for a type: :func:`register`."""
        register(type, reduce)

    @classmethod
    def dumps(cls, obj: object, protocol: int | None = None) -> memoryview:
        """``obj``'s pickle, as multiprocess returns it (a memoryview of bytes)."""
        _check_protocol(protocol)
        stream = _local.dumps(obj)[0]  # every buffer in band: one frame
        return memoryview(bytes(stream))

    loads = staticmethod(pickle.loads)


def _check_protocol(protocol: int | None) -> None:
    if protocol is not None and protocol != pickle.HIGHEST_PROTOCOL:
        raise ValueError(
            f"protocol must be None or {pickle.HIGHEST_PROTOCOL} (shoal pickles with"
            f" protocol {pickle.HIGHEST_PROTOCOL} only), got {protocol!r}"
        )


def dump(obj: object, file: IO[bytes], protocol: int | None = None) -> None:
    """``pickle.dump`` with :class:`ForkingPickler`."""
    ForkingPickler(file, protocol).dump(obj)
