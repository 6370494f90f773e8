"""The ReferenceBook's invariants (see ``shoal/hub/_client/references.py``), in process:
the book is socket-free, and ``send`` is where a client or engine would send a batch."""

from __future__ import annotations

import collections
import threading

from hypothesis import given
from hypothesis import strategies as st

from shoal.hub import ReferenceBook

Sent = list[tuple[int, str, list[list[int]]]]


def _book() -> tuple[ReferenceBook[int], Sent]:
    sent: Sent = []
    return ReferenceBook(lambda where, owner, deltas: sent.append((where, owner, deltas))), sent


def _totals(batches: Sent) -> collections.Counter[tuple[int, str, int]]:
    totals: collections.Counter[tuple[int, str, int]] = collections.Counter()
    for where, owner, deltas in batches:
        for oid, delta in deltas:
            totals[where, owner, oid] += delta
    return totals


changes = st.lists(
    st.tuples(
        st.integers(0, 2), st.integers(0, 4), st.sampled_from(["a", "b"]), st.integers(-2, 2)
    ),
    max_size=60,
)


@given(changes, st.lists(st.integers(0, 60), max_size=4))
def test_what_is_sent_sums_to_what_was_booked(
    booked: list[tuple[int, int, str, int]], flush_points: list[int]
) -> None:
    book, sent = _book()
    for i, (where, oid, owner, delta) in enumerate(booked):
        if i in flush_points:
            book.flush()
        book.add(where, oid, owner, delta)
    book.flush()
    expected: collections.Counter[tuple[int, str, int]] = collections.Counter()
    for where, oid, owner, delta in booked:
        expected[where, owner, oid] += delta
    got = _totals(sent)
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}
    assert len(book) == 0
    # One batch per engine and owner in each flush, and no change of 0 is ever sent.
    assert all(delta != 0 for _, _, deltas in sent for _, delta in deltas)


def test_a_plus_and_minus_in_one_flush_send_nothing() -> None:
    book, sent = _book()
    book.add(0, 7, "a", 1)
    book.add(0, 7, "a", -1)
    assert len(book) == 2
    book.flush()
    assert sent == []


def test_a_plus_booked_first_is_never_sent_after_its_minus() -> None:
    book, sent = _book()
    book.add(1, 3, "a", 1)
    book.flush()
    book.add(1, 3, "a", -1)
    book.flush()
    assert sent == [(1, "a", [[3, 1]]), (1, "a", [[3, -1]])]


def test_a_copy_is_sent_before_copy_returns() -> None:
    book, sent = _book()
    book.copy(2, 5, "a+1")
    assert sent == [(2, "a+1", [[5, 1]])]
    assert len(book) == 0


def test_a_broadcast_books_one_reference_per_receiver() -> None:
    book, sent = _book()
    with book.broadcast(3):
        book.copy(0, 1, "a+1")  # what pickling a proxy does, once
    assert _totals(sent) == {(0, "a+1", 1): 3}


def test_a_broadcast_records_only_its_own_thread() -> None:
    book, sent = _book()
    other = threading.Thread(target=book.copy, args=(0, 2, "b+1"))
    with book.broadcast(4):
        other.start()
        other.join()
        book.copy(0, 1, "a+1")
    assert _totals(sent) == {(0, "a+1", 1): 4, (0, "b+1", 2): 1}


def test_add_from_many_threads_loses_nothing() -> None:
    book, sent = _book()

    def drop(n: int) -> None:
        for _ in range(n):
            book.add(0, 1, "a", -1)

    threads = [threading.Thread(target=drop, args=(500,)) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        book.flush()  # flushes race the threads that book
    for t in threads:
        t.join()
    book.flush()
    assert _totals(sent) == {(0, "a", 1): -2000}


def test_what_send_ignores_is_gone() -> None:
    # The client's send drops batches for engines that are gone (invariant 5).
    alive = {0}
    sent: Sent = []

    def send(where: int, owner: str, deltas: list[list[int]]) -> None:
        if where in alive:
            sent.append((where, owner, deltas))

    book: ReferenceBook[int] = ReferenceBook(send)
    book.add(0, 1, "a", -1)
    book.add(9, 1, "a", -1)
    book.flush()
    assert sent == [(0, "a", [[1, -1]])]
    assert len(book) == 0
