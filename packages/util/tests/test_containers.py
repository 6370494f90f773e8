"""Namespace and ReverseDict."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import dill
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.util import Namespace, ReverseDict

# --- Namespace ---------------------------------------------------------------------


def test_namespace_attributes_are_items() -> None:
    """Attribute reads and writes go to the dict's items."""
    ns = Namespace(a=1)
    ns.b = 2
    assert ns == {"a": 1, "b": 2}
    assert ns.a == 1
    assert ns["b"] == 2
    assert isinstance(ns, dict)


def test_namespace_missing_attribute_is_attribute_error() -> None:
    """A missing key reads as AttributeError, so getattr defaults and hasattr work."""
    ns = Namespace()
    with pytest.raises(AttributeError, match="'nope'"):
        _ = ns.nope
    assert getattr(ns, "nope", 5) == 5
    assert not hasattr(ns, "nope")


@pytest.mark.parametrize("name", ["keys", "items", "update", "get", "__class__", "copy"])
def test_namespace_refuses_dict_attribute_names(name: str) -> None:
    """Setting an attribute named like a dict attribute raises KeyError naming it."""
    ns = Namespace()
    with pytest.raises(KeyError, match=name):
        setattr(ns, name, 1)
    assert name not in ns
    ns[name] = 1  # still allowed as an item
    assert ns[name] == 1
    assert callable(ns.keys) or name == "keys"


def test_namespace_delattr() -> None:
    """del ns.x removes the item, and a missing one raises AttributeError."""
    ns = Namespace(x=1)
    del ns.x
    assert ns == {}
    with pytest.raises(AttributeError):
        del ns.x


def test_namespace_has_no_instance_dict() -> None:
    """Every attribute lands in the mapping: there is no __dict__ to hide values in."""
    ns = Namespace()
    ns.value = 3
    assert not hasattr(ns, "__dict__")
    assert dict(ns) == {"value": 3}


def test_namespace_dir_lists_keys() -> None:
    """dir() offers identifier keys for tab completion."""
    ns = Namespace({"alpha": 1, "not an identifier": 2})
    assert "alpha" in dir(ns)
    assert "not an identifier" not in dir(ns)
    assert "keys" in dir(ns)


@pytest.mark.parametrize("dumps_loads", [pickle, dill], ids=["pickle", "dill"])
def test_namespace_pickles(dumps_loads: Any) -> None:
    """Namespace survives pickle and dill with its type and items."""
    ns = Namespace(a=1, b=[2])
    back = dumps_loads.loads(dumps_loads.dumps(ns))
    assert type(back) is Namespace
    assert back == ns
    assert back.b == [2]


def test_namespace_copies() -> None:
    """copy.copy and copy.deepcopy keep the type; deepcopy copies values."""
    ns = Namespace(a=[1])
    shallow, deep = copy.copy(ns), copy.deepcopy(ns)
    assert type(shallow) is Namespace
    assert type(deep) is Namespace
    assert shallow.a is ns.a
    assert deep.a == ns.a
    assert deep.a is not ns.a


def test_namespace_repr() -> None:
    """The repr names the class and shows the items."""
    assert repr(Namespace(a=1)) == "Namespace({'a': 1})"


# --- ReverseDict -------------------------------------------------------------------


def test_reversedict_looks_up_both_ways() -> None:
    """rd[key] gives the value and rd[value] gives the key."""
    rd = ReverseDict({0: "a", 1: "b"})
    assert rd[0] == "a"
    assert rd["a"] == 0
    assert rd["b"] == 1
    assert rd.get("b") == 1
    assert rd.get("zz", "default") == "default"
    with pytest.raises(KeyError):
        rd["zz"]


def test_reversedict_iterates_keys_only() -> None:
    """len, iteration and ``in`` see the keys, as for a dict."""
    rd = ReverseDict({0: "a", 1: "b"})
    assert len(rd) == 2
    assert list(rd) == [0, 1]
    assert 0 in rd
    assert "a" not in rd
    assert dict(rd) == {0: "a", 1: "b"}
    assert rd == {0: "a", 1: "b"}


def test_reversedict_refuses_key_on_both_sides() -> None:
    """A key that is already a value raises KeyError, as IPython's does."""
    rd = ReverseDict({1: 2})
    with pytest.raises(KeyError, match="both sides"):
        rd[2] = 3
    assert dict(rd) == {1: 2}


def test_reversedict_refuses_value_that_is_a_key() -> None:
    """A value that is already a key raises KeyError: rd[value] would be ambiguous."""
    rd = ReverseDict({1: 2})
    with pytest.raises(KeyError, match="already a key"):
        rd[3] = 1
    assert dict(rd) == {1: 2}


def test_reversedict_refuses_value_with_two_keys() -> None:
    """A value can belong to one key only."""
    rd = ReverseDict({1: "a"})
    with pytest.raises(KeyError, match="already belongs to key 1"):
        rd[2] = "a"
    assert rd["a"] == 1


def test_reversedict_init_checks_pairs() -> None:
    """The initial pairs are checked like assignments."""
    with pytest.raises(KeyError):
        ReverseDict([(1, "a"), (2, "a")])


def test_reversedict_overwrite_drops_old_value() -> None:
    """Re-assigning a key forgets its old value on the reverse side."""
    rd = ReverseDict({1: "a"})
    rd[1] = "b"
    assert rd["b"] == 1
    with pytest.raises(KeyError):
        rd["a"]
    rd[1] = "b"  # the same pair again is fine
    rd[5] = "a"  # and the freed value can be reused
    assert rd["a"] == 5


def test_reversedict_self_pair() -> None:
    """A key may map to itself."""
    rd = ReverseDict({7: 7})
    assert rd[7] == 7
    rd[7] = 8
    assert rd[8] == 7


def test_reversedict_removals_keep_both_sides() -> None:
    """del, pop, popitem and clear remove the value side too."""
    rd = ReverseDict({1: "a", 2: "b", 3: "c", 4: "d"})
    del rd[1]
    assert rd.pop(2) == "b"
    assert rd.pop(99, None) is None
    assert rd.popitem() == (3, "c")
    for gone in ("a", "b", "c"):
        assert rd.get(gone) is None
    rd.clear()
    assert rd.get("d") is None
    assert len(rd) == 0
    rd["a"] = 1  # every old value is free again
    assert rd[1] == "a"


def test_reversedict_pop_of_a_value_raises() -> None:
    """pop and del take keys only; a value raises KeyError and changes nothing."""
    rd = ReverseDict({1: "a"})
    with pytest.raises(KeyError):
        rd.pop("a")
    with pytest.raises(KeyError):
        del rd["a"]
    assert rd["a"] == 1


def test_reversedict_update_and_setdefault_check_pairs() -> None:
    """update and setdefault go through the same checks as assignment."""
    rd = ReverseDict({1: "a"})
    rd.update({2: "b"})
    assert rd["b"] == 2
    with pytest.raises(KeyError):
        rd.update([(3, "a")])
    assert rd.setdefault(4, "d") == "d"
    assert rd["d"] == 4
    assert rd.setdefault(4, "e") == "d"


@pytest.mark.parametrize("dumps_loads", [pickle, dill], ids=["pickle", "dill"])
def test_reversedict_pickles(dumps_loads: Any) -> None:
    """A ReverseDict survives pickle and dill with both directions working."""
    rd = ReverseDict({0: b"id-0", 1: b"id-1"})
    back = dumps_loads.loads(dumps_loads.dumps(rd))
    assert type(back) is ReverseDict
    assert back[b"id-1"] == 1
    assert back[0] == b"id-0"


def test_reversedict_copy_and_repr() -> None:
    """copy() is an independent ReverseDict, and repr shows the pairs."""
    rd = ReverseDict({1: "a"})
    dup = rd.copy()
    dup[2] = "b"
    assert "b" not in dict(rd).values()
    assert type(dup) is ReverseDict
    assert repr(rd) == "ReverseDict({1: 'a'})"


@given(st.dictionaries(st.integers(), st.text(min_size=1), max_size=30))
def test_reversedict_roundtrip_property(data: dict[int, str]) -> None:
    """For keys and values from disjoint types, every pair is found both ways."""
    if len(set(data.values())) != len(data):  # duplicate values are refused
        with pytest.raises(KeyError):
            ReverseDict[int, str](data.items())
        return
    rd = ReverseDict[int, str](data.items())
    for k, v in data.items():
        assert rd[k] == v
        assert rd[v] == k


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 15), st.integers(0, 15)),
        max_size=60,
    )
)
def test_reversedict_invariant_under_random_operations(ops: list[tuple[bool, int, int]]) -> None:
    """Whatever sets and deletes succeed, rd[rd[k]] == k for every key k."""
    rd: ReverseDict[int, int] = ReverseDict()
    for is_set, key, value in ops:
        try:
            if is_set:
                rd[key] = value
            else:
                del rd[key]
        except KeyError:
            pass
        for k in rd:
            assert rd[rd[k]] == k
