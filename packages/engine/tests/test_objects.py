"""Tests of the engine's object store (distob's ObjectEngine), in process."""

from __future__ import annotations

import dataclasses
import gc
import pickle
import tracemalloc
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from shoal.engine._errors import NoSuchObjectError
from shoal.engine._objects import RESOLVE_DEPTH, ObjectStore, Ref


class Account:
    """A small user object with methods, attributes and a failing method."""

    kind = "account"

    def __init__(self, balance: int = 0) -> None:
        self.balance = balance
        self.calls = 0

    def deposit(self, amount: int) -> int:
        self.calls += 1
        self.balance += amount
        return self.balance

    def transfer_from(self, other: Account, amount: int) -> int:
        other.balance -= amount
        return self.deposit(amount)

    def history(self) -> Iterator[int]:
        yield self.balance

    def boom(self) -> None:
        raise ZeroDivisionError("boom in user code")  # the user's failing line

    def interrupted(self) -> None:
        raise KeyboardInterrupt

    def __repr__(self) -> str:
        return f"Account({self.balance})"


class Unpicklable(Exception):
    """An exception that refuses to be pickled."""

    def __reduce__(self) -> Any:
        raise TypeError("not today")


@pytest.fixture
def store() -> ObjectStore:
    """A fresh store with an engine id."""
    return ObjectStore(engine_id=3)


# -- Ref ------------------------------------------------------------------------------


def test_ref_pickles_and_is_frozen() -> None:
    """A Ref survives pickling, compares by id, and cannot be changed."""
    ref = Ref(7)
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert hash(Ref(7)) == hash(ref)
    assert not hasattr(ref, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.id = 8  # type: ignore[misc]


# -- store / get ------------------------------------------------------------------------


def test_store_and_get(store: ObjectStore) -> None:
    """store() returns fresh ids, never reused, and get() returns the same object."""
    obj = Account(5)
    a = store.store(obj)
    b = store.store(obj)
    assert a != b
    assert store.get(a) is obj
    assert store.get(b) is obj
    assert len(store) == 2
    assert a in store
    store.decref(a)
    c = store.store(obj)
    assert c not in (a, b)
    assert a not in store


def test_get_unknown_id_names_it(store: ObjectStore) -> None:
    """get() of an id the store does not hold raises NoSuchObjectError naming the id."""
    with pytest.raises(NoSuchObjectError, match="12345"):
        store.get(12345)


def test_describe(store: ObjectStore) -> None:
    """describe() gives the type, sorted public methods and attributes, and repr."""
    oid = store.store(Account(5))
    info = store.describe(oid)
    assert info["type"] == f"{Account.__module__}.Account"
    assert info["methods"] == ["boom", "deposit", "history", "interrupted", "transfer_from"]
    assert info["attributes"] == ["balance", "calls", "kind"]
    assert info["repr"] == "Account(5)"
    reply = store.handle("describe_request", {"id": oid})
    assert reply == {"status": "ok", **info}


def test_describe_truncates_repr(store: ObjectStore) -> None:
    """describe() cuts a long repr to about 200 characters."""
    info = store.describe(store.store("x" * 10_000))
    assert 150 < len(info["repr"]) <= 200
    assert info["type"] == "builtins.str"


# -- call_method / getattr / setattr ----------------------------------------------------


def test_call_method_by_value(store: ObjectStore) -> None:
    """returns='value' answers the result itself and changes the stored object."""
    oid = store.store(Account(5))
    assert store.call_method(oid, "deposit", (10,), returns="value") == ("value", 15)
    reply = store.handle(
        "call_method_request",
        {"id": oid, "method": "deposit", "args": (1,), "kwargs": {}, "returns": "value"},
    )
    assert reply == {"status": "ok", "result": 16}
    assert store.get(oid).balance == 16


def test_call_method_by_ref(store: ObjectStore) -> None:
    """returns='ref' stores the result and answers a ref dict with count 1."""
    oid = store.store({"a": [1, 2]})
    reply = store.handle(
        "call_method_request", {"id": oid, "method": "get", "args": ("a",), "returns": "ref"}
    )
    assert reply["status"] == "ok"
    assert "result" not in reply
    ref = reply["ref"]
    assert ref["type"] == "builtins.list"
    assert store.get(ref["id"]) is store.get(oid)["a"]
    assert store.decref(ref["id"]) == 0


def test_call_method_auto_keeps_unserializable_as_ref(store: ObjectStore) -> None:
    """returns='auto' keeps a result the serializer refuses (a generator) as a ref."""
    oid = store.store(Account(4))
    reply = store.handle("call_method_request", {"id": oid, "method": "history"})
    assert reply["status"] == "ok"
    assert reply["ref"]["type"] == "builtins.generator"
    assert next(store.get(reply["ref"]["id"])) == 4


def test_call_method_auto_sends_serializable_by_value(store: ObjectStore) -> None:
    """returns='auto' answers a serializable result by value, storing nothing."""
    oid = store.store([3, 1, 2])
    assert store.call_method(oid, "__len__") == ("value", 3)
    assert store.call_method(oid, "copy") == ("value", [3, 1, 2])
    assert len(store) == 1


def test_bad_returns_is_refused_before_the_call(store: ObjectStore) -> None:
    """An unknown returns= raises ValueError naming the accepted values; nothing runs."""
    oid = store.store(Account())
    with pytest.raises(ValueError, match=r"'value', 'ref', 'auto'.*'both'"):
        store.call_method(oid, "deposit", (1,), returns="both")
    assert store.get(oid).calls == 0
    with pytest.raises(ValueError, match="returns"):
        store.getattr(oid, "balance", returns="both")


def test_call_method_on_non_callable(store: ObjectStore) -> None:
    """Calling an attribute that is not callable says so and points at getattr."""
    oid = store.store(Account())
    with pytest.raises(TypeError, match=r"Account\.balance is builtins\.int, not callable"):
        store.call_method(oid, "balance")


def test_getattr_and_setattr(store: ObjectStore) -> None:
    """getattr reads by value or ref; setattr sets, through handle as well."""
    oid = store.store(Account(5))
    assert store.getattr(oid, "balance") == ("value", 5)
    assert store.handle("setattr_request", {"id": oid, "name": "balance", "value": 9}) == {
        "status": "ok"
    }
    assert store.handle("getattr_request", {"id": oid, "name": "balance"}) == {
        "status": "ok",
        "result": 9,
    }
    kind, ref = store.getattr(oid, "deposit", returns="ref")
    assert kind == "ref"
    assert ref["type"] == "builtins.method"
    store.setattr(oid, "kind", "savings")
    assert store.get(oid).kind == "savings"
    assert Account.kind == "account"


def test_getattr_missing_attribute(store: ObjectStore) -> None:
    """getattr of a missing attribute answers an AttributeError reply."""
    oid = store.store(Account())
    reply = store.handle("getattr_request", {"id": oid, "name": "nope"})
    assert reply["status"] == "error"
    assert reply["ename"] == "AttributeError"
    assert "nope" in reply["evalue"]


# -- Ref resolution ---------------------------------------------------------------------


def test_ref_in_args_is_the_stored_object(store: ObjectStore) -> None:
    """A Ref in args and kwargs reaches the method as the stored object itself."""
    src = store.store(Account(100))
    dst = store.store(Account(0))
    reply = store.handle(
        "call_method_request",
        {"id": dst, "method": "transfer_from", "args": (Ref(src),), "kwargs": {"amount": 30}},
    )
    assert reply == {"status": "ok", "result": 30}
    assert store.get(src).balance == 70
    reply = store.handle(
        "call_method_request",
        {
            "id": dst,
            "method": "transfer_from",
            "args": (),
            "kwargs": {"other": Ref(src), "amount": 5},
        },
    )
    assert reply == {"status": "ok", "result": 35}
    assert store.get(src).balance == 65


def test_ref_in_setattr_value(store: ObjectStore) -> None:
    """setattr resolves a Ref in the value, so objects can point at each other."""
    a = store.store(Account())
    b = store.store(Account())
    store.handle("setattr_request", {"id": a, "name": "partner", "value": [Ref(b)]})
    assert store.get(a).partner[0] is store.get(b)


def test_resolve_nested_and_no_copies(store: ObjectStore) -> None:
    """resolve() replaces Refs in nested tuples/lists/dicts and copies nothing else."""
    obj = Account()
    oid = store.store(obj)
    plain: dict[str, Any] = {"a": [1, (2, 3)], "b": "x"}
    assert store.resolve(plain) is plain
    nested: Any = ([1, {"k": (Ref(oid),)}], plain)
    out = store.resolve(nested)
    assert out[0][1]["k"][0] is obj
    assert out[1] is plain
    assert type(out[0][1]["k"]) is tuple
    assert nested[0][1]["k"][0] == Ref(oid)  # the input is not mutated
    assert store.resolve(Ref(oid)) is obj


def test_resolve_depth_limit(store: ObjectStore) -> None:
    """A Ref deeper than RESOLVE_DEPTH containers is left as it is."""
    oid = store.store(Account())
    shallow: Any = Ref(oid)
    for _ in range(RESOLVE_DEPTH):
        shallow = [shallow]
    deep = [shallow]
    out = store.resolve(shallow)
    for _ in range(RESOLVE_DEPTH):
        out = out[0]
    assert isinstance(out, Account)
    assert store.resolve(deep) is deep


def test_resolve_unknown_ref(store: ObjectStore) -> None:
    """A Ref to an id the store does not hold gives a NoSuchObjectError reply."""
    oid = store.store(Account())
    reply = store.handle(
        "call_method_request", {"id": oid, "method": "transfer_from", "args": (Ref(999), 1)}
    )
    assert reply["status"] == "error"
    assert reply["ename"] == "NoSuchObjectError"
    assert "999" in reply["evalue"]
    assert store.get(oid).calls == 0


# -- reference counts -------------------------------------------------------------------


def test_incref_decref_counts(store: ObjectStore) -> None:
    """incref/decref move the count; the object stays until the count reaches 0."""
    oid = store.store(Account())
    assert store.incref(oid) == 2
    assert store.handle("incref_request", {"id": oid, "n": 3}) == {"status": "ok", "refcount": 5}
    assert store.decref(oid, 4) == 1
    assert oid in store
    assert store.handle("decref_request", {"id": oid}) == {"status": "ok", "refcount": 0}
    assert oid not in store


def test_object_freed_at_zero(store: ObjectStore) -> None:
    """At count 0 the store keeps nothing alive: a weakref to the object dies."""
    obj = Account()
    oid = store.store(obj)
    store.incref(oid)
    alive = weakref.ref(obj)
    del obj
    store.decref(oid)
    gc.collect()
    assert alive() is not None
    store.decref(oid)
    gc.collect()
    assert alive() is None


def test_memory_returned_at_zero(store: ObjectStore) -> None:
    """A stored 50 MB array's memory is returned when its count reaches 0."""
    tracemalloc.start()
    try:
        array = np.ones(50 * 2**20, dtype=np.uint8)
        reply = store.handle("store_request", {"obj": array})
        assert reply["ref"]["type"] == "numpy.ndarray"
        del array, reply
        held, _ = tracemalloc.get_traced_memory()
        assert held >= 50 * 2**20 - 64 * 2**10
        assert store.handle("decref_request", {"id": 1})["refcount"] == 0
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Other threads allocate and free a little meanwhile (traced too): 64 KiB of slack.
    assert held - after >= 50 * 2**20 - 64 * 2**10


def test_decref_unknown_and_below_zero(store: ObjectStore) -> None:
    """decref of an unknown id or below 0 raises clearly and changes nothing."""
    with pytest.raises(NoSuchObjectError, match="42"):
        store.decref(42)
    oid = store.store(Account())
    with pytest.raises(ValueError, match="below 0"):
        store.decref(oid, 2)
    assert oid in store
    with pytest.raises(ValueError, match=r"n must be an int >= 1, got 0"):
        store.incref(oid, 0)
    assert store.decref(oid) == 0
    with pytest.raises(NoSuchObjectError):
        store.decref(oid)
    reply = store.handle("decref_request", {"id": oid})
    assert reply["status"] == "error"
    assert reply["ename"] == "NoSuchObjectError"


def test_many_cycles_leave_store_empty(store: ObjectStore) -> None:
    """10,000 store/decref cycles leave the store empty, with every id distinct."""
    ids = set()
    for i in range(10_000):
        oid = store.store([i])
        ids.add(oid)
        assert store.decref(oid) == 0
    assert len(store) == 0
    assert len(ids) == 10_000


# -- error replies ----------------------------------------------------------------------


def test_user_exception_becomes_error_reply(store: ObjectStore) -> None:
    """A method that raises answers an error reply with the user's line and no engine frames."""
    oid = store.store(Account())
    reply = store.handle("call_method_request", {"id": oid, "method": "boom"})
    assert reply["status"] == "error"
    assert reply["ename"] == "ZeroDivisionError"
    assert reply["evalue"] == "boom in user code"
    assert reply["engine_id"] == 3
    assert "in boom" in reply["traceback"]
    assert "# the user's failing line" in reply["traceback"]
    assert "engine/_objects.py" not in reply["traceback"]
    assert "test_objects.py" in reply["traceback"]
    exc = reply["exception"]
    assert isinstance(exc, ZeroDivisionError)
    assert exc.__traceback__ is None


def test_keyboard_interrupt_becomes_error_reply(store: ObjectStore) -> None:
    """Even KeyboardInterrupt in user code becomes an error reply, not a raise."""
    oid = store.store(Account())
    reply = store.handle("call_method_request", {"id": oid, "method": "interrupted"})
    assert reply["status"] == "error"
    assert reply["ename"] == "KeyboardInterrupt"


def test_unpicklable_exception_sent_as_text(store: ObjectStore) -> None:
    """An exception the serializer cannot send arrives as text with exception None."""

    def raise_it() -> None:
        raise Unpicklable("cannot travel")

    fid = store.store(raise_it)
    reply = store.handle("call_method_request", {"id": fid, "method": "__call__"})
    assert reply["status"] == "error"
    assert reply["ename"] == "Unpicklable"
    assert reply["evalue"] == "cannot travel"
    assert reply["exception"] is None


@pytest.mark.parametrize(
    ("msg_type", "content", "ename", "match"),
    [
        ("frobnicate_request", {}, "ValueError", "msg_type must be one of"),
        ("store_request", None, "TypeError", "content must be a mapping"),
        ("store_request", {}, "ValueError", "needs a 'obj' field"),
        ("getattr_request", {"name": "x"}, "ValueError", "needs a 'id' field"),
        ("getattr_request", {"id": "1", "name": "x"}, "TypeError", "'id' must be int"),
        ("incref_request", {"id": True}, "TypeError", "'id' must be int"),
        ("call_method_request", {"id": 1, "method": 5}, "TypeError", "'method' must be str"),
        ("call_method_request", {"id": 1, "method": "f", "args": 3}, "TypeError", "'args'"),
        ("describe_request", {"id": 999}, "NoSuchObjectError", "999"),
        ("incref_request", {"id": 1, "n": -2}, "ValueError", "n must be an int >= 1"),
    ],
)
def test_bad_requests_become_error_replies(
    store: ObjectStore, msg_type: str, content: Any, ename: str, match: str
) -> None:
    """An unknown msg_type or malformed content answers an error reply, never raises."""
    store.store(Account())
    reply = store.handle(msg_type, content)
    assert reply["status"] == "error"
    assert reply["ename"] == ename
    assert match in reply["evalue"]
    assert set(reply) == {"status", "ename", "evalue", "traceback", "engine_id", "exception"}
    assert store.get(1).calls == 0


# -- owners, leases and the requests proxies use ----------------------------------------


def test_counts_are_booked_per_owner_and_a_release_frees_an_owners_objects(
    store: ObjectStore,
) -> None:
    shared = store.store([1], owner="alice")
    alone = store.store([2], owner="alice")
    store.incref(shared, owner="bob")
    assert store.refcount(shared) == 2
    assert store.owners() == {"alice": 2, "bob": 1}
    with pytest.raises(ValueError, match="owner 'carol'"):
        store.decref(shared, owner="carol")  # carol holds nothing: nothing changes
    assert store.release("alice") == 1  # `alone` had no other owner
    assert alone not in store
    assert shared in store
    assert store.refcount(shared) == 1
    assert store.release("bob") == 1
    assert len(store) == 0


def test_refs_request_applies_batched_changes_and_skips_stale_ids(store: ObjectStore) -> None:
    a = store.store("a", owner="c")
    b = store.store("b", owner="c")
    reply = store.handle(
        "refs_request", {"owner": "c", "deltas": [[a, 2], [b, -1], [b, -1], [999, -1]]}
    )
    assert reply == {"status": "ok", "missing": 2, "objects": 1}  # b's 2nd -1 and 999
    assert store.refcount(a) == 3
    assert b not in store


def test_a_copy_given_back_before_its_increment_arrived_is_still_freed(
    store: ObjectStore,
) -> None:
    """A proxy copy's -1 (engine to engine) may overtake its +1 (client to engine): the
    copy's count waits below 0, and the object goes when both have come."""
    oid = store.store("block", owner="c")
    store.handle("refs_request", {"owner": "c+7", "deltas": [[oid, -1]]})  # overtook
    assert oid in store  # c still holds it
    store.handle("refs_request", {"owner": "c+7", "deltas": [[oid, 1]]})  # the +1 at last
    assert store.owners() == {"c": 1}
    store.handle("refs_request", {"owner": "c", "deltas": [[oid, -1]]})
    assert oid not in store  # nothing leaked for c+7


def test_list_fetch_and_release_requests(store: ObjectStore) -> None:
    oid = store.store({"k": 1}, owner="c")
    listing = store.handle("list_request", {})
    assert listing["objects"] == [[oid, "builtins.dict", 1]]
    assert listing["owners"] == {"c": 1}
    assert store.handle("fetch_request", {"id": oid}) == {"status": "ok", "result": {"k": 1}}
    assert store.handle("release_request", {"owner": "c"})["freed"] == 1
    assert store.handle("fetch_request", {"id": oid})["ename"] == "NoSuchObjectError"


def test_replies_carry_the_interface_of_new_refs_and_self(store: ObjectStore) -> None:
    reply = store.handle("store_request", {"obj": [Account(), Account()], "items": True})
    assert len(reply["refs"]) == 2
    interface = reply["types"][f"{__name__}.Account"]  # once for both
    assert "deposit" in interface["methods"]
    assert "balance" not in interface["methods"]  # an instance attribute, not a method
    lst = store.store([1])
    assert store.handle("call_method_request", {"id": lst, "method": "__iadd__", "args": ([2],)})[
        "self"
    ]
    assert store.get(lst) == [1, 2]
    number = store.store(5)
    assert store.handle("call_method_request", {"id": number, "method": "__int__"}) == {
        "status": "ok",
        "result": 5,
    }  # immutable values returning themselves are values
    kept = store.handle(
        "call_method_request",
        {"id": lst, "method": "copy", "keep": ["builtins.list"]},
    )
    assert store.get(kept["ref"]["id"]) == [1, 2]
    assert "append" in kept["types"]["builtins.list"]["methods"]


def test_objects_with_a_resolve_hook_are_replaced_in_arguments(store: ObjectStore) -> None:
    class Stand:
        def __shoal_resolve__(self) -> list[int]:
            return [7, 8]

    lst = store.store([1])
    store.call_method(lst, "extend", (Stand(),))
    assert store.get(lst) == [1, 7, 8]


def test_a_copy_given_back_before_its_reference_arrived_keeps_the_object() -> None:
    """A proxy copy's reference is booked to an owner of its own ("<owner>+<n>") by the
    client, while the engine that got the copy gives it back by another connection: the
    give-back may come first. The count then waits below 0, and the object stays."""
    store = ObjectStore()
    oid = store.store([1, 2], owner="client")
    assert store.decref(oid, 1, "client+1") == 0  # the copy is back before its +1
    assert store.decref(oid, 1, "client") == -1  # and the client dropped its own
    assert oid in store
    assert store.incref(oid, 1, "client+1") == 0  # the +1 lands: nothing holds it now
    assert oid not in store
    with pytest.raises(ValueError, match="below 0"):  # an ordinary owner never goes below 0
        store.decref(store.store([3]), 1, "other")


def test_releasing_an_owner_releases_its_copies_too() -> None:
    store = ObjectStore()
    oid = store.store("x", owner="client")
    store.incref(oid, 2, "client+7")
    kept = store.store("y", owner="clients")  # another owner, whose name starts alike
    assert store.release("client") == 1
    assert oid not in store
    assert kept in store
