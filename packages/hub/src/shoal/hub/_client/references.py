"""Reference counts of remote objects: the one place where they are booked and sent.

Theory of operation
-------------------
An engine's object store (:class:`shoal.engine.ObjectStore`) counts, per object and per
*owner*, the references held elsewhere; it frees an object when every owner's count is 0.
A proxy (:class:`shoal.hub.Remote`) holds one reference. The changes to those counts
start here, in a :class:`ReferenceBook`: the client has one (``Client.references``), and
so has every engine for the proxies its tasks hold (sent engine to engine).

Invariants (tested in ``packages/hub/tests/test_references.py``):

1. :meth:`ReferenceBook.add` never blocks and never sends: a proxy's ``__del__`` calls it,
   at any moment, in any thread (a ``deque.append``, atomic).
2. Changes leave in the order they were booked, one flush at a time: a +1 booked before
   a -1 is never sent after it. Within one flush the changes of each object are summed
   per owner, so a +1 and a -1 cancel and nothing is sent for them.
3. A copy that travels inside a message holds a reference of its own (booked to an owner
   of its own, ``"<owner>+<n>"``); :meth:`ReferenceBook.copy` sends that +1 before it
   returns, so before the message carrying the copy leaves.
4. A message pickled once and sent to ``n`` engines carries ``n`` copies of each proxy
   inside: :meth:`ReferenceBook.broadcast` books the ``n - 1`` that pickling did not see.
5. A change for an object whose engine is gone is dropped: its objects went with it (the
   ``send`` function says so by ignoring it).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["ReferenceBook"]

Where = TypeVar("Where", bound=Hashable)


class ReferenceBook(Generic[Where]):
    """Reference count changes waiting to be sent to the engines that hold the objects.

    ``Where`` names an object's engine (an engine id on a client, an engine's url on an
    engine); ``send(where, owner, deltas)`` sends one batch, ``deltas`` a list of
    ``[object id, change]``, none of them 0.
    """

    def __init__(self, send: Callable[[Where, str, list[list[int]]], None]) -> None:
        self._send = send
        self._changes: collections.deque[tuple[Where, int, str, int]] = collections.deque()
        self._lock = threading.Lock()  # one flush at a time (invariant 2)
        self._recording = threading.local()  # the copies a broadcast's pickling makes
        self._flushed_at = 0.0

    def add(self, where: Where, oid: int, owner: str, delta: int) -> None:
        """Book a change of ``delta`` to ``owner``'s count of object ``oid``; sent later."""
        self._changes.append((where, oid, owner, delta))

    def copy(self, where: Where, oid: int, owner: str) -> None:
        """A proxy was pickled: its copy holds a reference booked to ``owner``. Sent now,
        before the message carrying the copy."""
        self._changes.append((where, oid, owner, 1))
        record = getattr(self._recording, "copies", None)
        if record is not None:
            record.append((where, oid, owner))
        self.flush()

    @contextlib.contextmanager
    def broadcast(self, receivers: int) -> Iterator[None]:
        """Pickle a message inside this block that ``receivers`` engines will each
        unpickle: every proxy copied in it gets ``receivers - 1`` more references."""
        copies: list[tuple[Where, int, str]] = []
        self._recording.copies = copies
        try:
            yield
        finally:
            self._recording.copies = None
        for where, oid, owner in copies:
            for _ in range(receivers - 1):
                self._changes.append((where, oid, owner, 1))
        if copies:
            self.flush()

    def flush(self) -> None:
        """Send the booked changes: one batch per engine and owner, summed per object."""
        with self._lock:
            self._flushed_at = time.monotonic()
            batches: dict[tuple[Where, str], dict[int, int]] = {}
            changes = self._changes
            while changes:
                where, oid, owner, delta = changes.popleft()
                deltas = batches.setdefault((where, owner), {})
                deltas[oid] = deltas.get(oid, 0) + delta
            for (where, owner), summed in batches.items():
                items = [[oid, d] for oid, d in summed.items() if d]
                if items:
                    self._send(where, owner, items)

    @property
    def flushed_at(self) -> float:
        """When the last flush began (``time.monotonic()``)."""
        return self._flushed_at

    def __len__(self) -> int:
        """How many changes wait to be sent."""
        return len(self._changes)

    def __repr__(self) -> str:
        return f"<ReferenceBook: {len(self)} changes waiting>"
