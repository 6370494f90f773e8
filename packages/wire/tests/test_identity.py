"""Classes and functions sent by value come back as themselves (shoal issue 18).

pytest's test modules are not ``__main__``: the classes here are made by running
``MAIN_SOURCE`` in a namespace named ``__main__``, as a script's are. The receiver is a
process of its own (``identity_peer.py``), given the frames in a file.
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import dataclasses
import decimal
import enum
import gc
import io
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.wire import Serializer, _identity, _serialize

TESTS = Path(__file__).parent

MAIN_SOURCE = '''
import dataclasses
import enum
import typing

T = typing.TypeVar("T", bound=int)


class Box(typing.Generic[T]):
    def __init__(self, value: T):
        self.value = value


class Pair(typing.NamedTuple):
    a: int
    b: str = "b"


class Counter:
    label = "v1"

    def __init__(self, n=0):
        self.n = n

    def inc(self):
        self.n += 1
        return self

    def fresh(self):
        return Counter(self.n)  # the class by its global name


class Base:
    def who(self):
        return "base"

    def child(self):
        return Child()  # a base whose method names its subclass


class Child(Base):
    def who(self):
        return "child+" + super().who()


class MyError(Exception):
    pass


class Color(enum.Enum):
    RED = 1
    GREEN = 2
    CRIMSON = 1  # an alias

    def shout(self):
        return self.name.upper()


@dataclasses.dataclass
class Point:
    x: int
    y: list = dataclasses.field(default_factory=list)


class Slotted:
    __slots__ = ("a",)

    def __init__(self, a):
        self.a = a

    @classmethod
    def make(cls, a):
        return cls(a)

    @staticmethod
    def twice(a):
        return 2 * a

    @property
    def double(self):
        return 2 * self.a


SCALE = 2


def scale(x):
    return x * SCALE


def observe(memory, counter, child, error, color, point, slotted, func):
    """Runs on the peer: what it sees there, and objects made there."""
    first = memory.setdefault("first", counter)
    try:
        raise error
    except MyError:
        caught = True
    who = child.who
    return {
        "objs": (counter, child, error, color, point, slotted, func),
        "made": [
            counter.fresh(),
            child.child(),
            Slotted.make(5),
            Color(2),
            dataclasses.replace(point, x=7),
            MyError("made there"),
        ],
        "facts": {
            "same_class_as_first": type(counter) is type(first),
            "first_label": type(first).label,
            "counter_is_global": type(counter) is Counter,
            "child_is_base": issubclass(type(child), Base) and type(child) is Child,
            "super_cell": who.__func__.__closure__[0].cell_contents is type(child),
            "who": who(),
            "caught": caught,
            "alias": Color.CRIMSON is Color.RED,
            "shout": color.shout(),
            "fields": [f.name for f in dataclasses.fields(point)],
            "slots": not hasattr(slotted, "__dict__"),
            "slotted": (slotted.double, Slotted.twice(4), slotted.a),
            "scale": func(3),
            "module": type(counter).__module__,
        },
    }


def echo(memory, *objs):
    return objs


def typing_facts(memory, box, pair):
    """Runs on the peer: generic and named tuple classes work there."""
    return box, pair, Box[int], type(box).__parameters__[0].__bound__, pair._replace(a=2)
'''


def main_namespace() -> dict[str, Any]:
    """A fresh ``__main__``-like module namespace running ``MAIN_SOURCE``."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(MAIN_SOURCE), "<main>", "exec"), namespace)  # noqa: S102
    return namespace


@contextlib.contextmanager
def as_receiver() -> Iterator[None]:
    """Load as another process does: with a tracker that made none of the ids."""
    saved = _identity._TRACKER
    _identity._TRACKER = _identity._Tracker()
    try:
        yield
    finally:
        _identity._TRACKER = saved


def dumps(message: Any) -> list[bytes]:
    """``message``'s frames, as bytes, made now."""
    return [bytes(memoryview(f)) for f in Serializer().dumps(message)]


def peer(tmp_path: Path, messages: list[Any]) -> list[Any]:
    """Send ``messages`` (``{"run": f, "args": ...}``, or their frames made earlier by
    ``dumps``) to a peer process, in order, and load its reply."""
    s = Serializer()
    source, target = tmp_path / "in.pickle", tmp_path / "out.pickle"
    frames = [m if isinstance(m, list) else dumps(m) for m in messages]
    source.write_bytes(pickle.dumps(frames))
    # run() kills the peer when it outlives its timeout: no process is left behind
    done = subprocess.run(
        [sys.executable, str(TESTS / "identity_peer.py"), str(source), str(target)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    reply = s.loads(pickle.loads(target.read_bytes()))
    assert isinstance(reply, list)
    return reply


def sample(ns: dict[str, Any]) -> tuple[Any, ...]:
    """One object of each kind of class, and a function: ``observe``'s arguments."""
    return (
        ns["Counter"](1),
        ns["Child"](),
        ns["MyError"]("boom"),
        ns["Color"].GREEN,
        ns["Point"](1, [2]),
        ns["Slotted"](3),
        ns["scale"],
    )


def test_same_process_round_trip_keeps_identity() -> None:
    """In the process that made them, classes, instances and functions come back as such."""
    ns = main_namespace()
    s = Serializer()
    objs = sample(ns)
    kinds = [ns[name] for name in ("Counter", "Base", "Child", "Color", "Point", "Slotted")]
    out = s.loads(s.dumps({"objs": objs, "kinds": kinds, "observe": ns["observe"]}))
    assert isinstance(out, dict)
    assert [type(o) for o in out["objs"][:6]] == [type(o) for o in objs[:6]]
    assert out["kinds"] == kinds
    assert all(a is b for a, b in zip(out["kinds"], kinds, strict=True))
    assert out["objs"][6] is ns["scale"]
    assert out["observe"] is ns["observe"]
    assert out["objs"][3] is ns["Color"].GREEN
    assert out["objs"][4] == objs[4]
    assert out["objs"][0].inc().n == 2


def test_origin_class_is_left_untouched() -> None:
    """Loading its own class back does not reset the origin's class or its methods."""
    ns = main_namespace()
    counter, s = ns["Counter"], Serializer()
    frames = s.dumps(counter(1))
    inc = counter.__dict__["inc"]
    counter.label = "changed since"
    out = s.loads(frames)
    assert type(out) is counter
    assert counter.label == "changed since"
    assert counter.__dict__["inc"] is inc


def test_peer_returns_objects_of_the_original_classes(tmp_path: Path) -> None:
    """A peer process's results are instances of the sender's classes, and its functions."""
    ns = main_namespace()
    (reply,) = peer(tmp_path, [{"run": ns["observe"], "args": sample(ns)}])
    facts = reply["facts"]
    assert facts == {
        "same_class_as_first": True,
        "first_label": "v1",
        "counter_is_global": True,
        "child_is_base": True,
        "super_cell": True,
        "who": "child+base",
        "caught": True,
        "alias": True,
        "shout": "GREEN",
        "fields": ["x", "y"],
        "slots": True,
        "slotted": (6, 8, 3),
        "scale": 6,
        "module": "__main__",
    }
    counter, child, error, color, point, slotted, func = reply["objs"]
    assert type(counter) is ns["Counter"]
    assert type(child) is ns["Child"]
    assert isinstance(child, ns["Base"])
    assert type(error) is ns["MyError"]
    assert color is ns["Color"].GREEN
    assert type(point) is ns["Point"]
    assert point == ns["Point"](1, [2])
    assert type(slotted) is ns["Slotted"]
    assert func is ns["scale"]
    made = reply["made"]
    assert [type(m) for m in made] == [
        ns["Counter"],
        ns["Child"],
        ns["Slotted"],
        ns["Color"],
        ns["Point"],
        ns["MyError"],
    ]
    assert made[3] is ns["Color"].GREEN
    assert made[4] == ns["Point"](7, [2])


@pytest.mark.parametrize("index", [2, 5], ids=["sent", "made on the peer"])
def test_exception_back_from_peer_is_caught_by_its_class(tmp_path: Path, index: int) -> None:
    """``except MyError`` at the sender catches a MyError that came back from a peer."""
    ns = main_namespace()
    (reply,) = peer(tmp_path, [{"run": ns["observe"], "args": sample(ns)}])
    error = reply["objs"][2] if index == 2 else reply["made"][5]
    with pytest.raises(ns["MyError"]):
        raise error


def test_two_messages_share_one_class_on_the_peer_and_back(tmp_path: Path) -> None:
    """Two messages' objects share one class on the peer (brought up to date) and here."""
    ns = main_namespace()
    first = dumps({"run": ns["observe"], "args": sample(ns)})
    ns["Counter"].label = "v2"  # changed on the sender between two sends
    ns["SCALE"] = 5  # a function's global too
    second = {"run": ns["observe"], "args": sample(ns)}
    one, two = peer(tmp_path, [first, second])
    assert one["facts"]["first_label"] == "v1"
    assert two["facts"]["same_class_as_first"]
    assert two["facts"]["first_label"] == "v2"  # the peer's class was brought up to date
    assert (one["facts"]["scale"], two["facts"]["scale"]) == (6, 15)  # never stale
    assert type(one["objs"][0]) is type(two["objs"][0]) is ns["Counter"]
    assert type(one["made"][1]) is type(two["made"][1]) is ns["Child"]
    assert ns["Counter"].label == "v2"


def test_class_reused_by_a_receiver_keeps_super_working() -> None:
    """A class built once and updated by a second message: ``super()`` reaches the base."""
    ns = main_namespace()
    s = Serializer()
    first, second = s.dumps(ns["Child"]()), s.dumps(ns["Child"]())
    with as_receiver():
        a, b = s.loads(first), s.loads(second)
        assert type(a) is type(b)
        assert type(a) is not ns["Child"]
        assert b.who() == "child+base"
        who = type(b).__dict__["who"]
        assert who.__closure__[0].cell_contents is type(b)
        assert type(a).__bases__[0].__name__ == "Base"
        assert isinstance(b.child(), type(b))


def test_receiver_rebuilds_functions_but_sends_back_their_id() -> None:
    """A receiver builds each function afresh; sent back, it is the original again."""
    ns = main_namespace()
    s = Serializer()
    frames = s.dumps(ns["scale"])
    with as_receiver():
        first, second = s.loads(frames), s.loads(frames)
        assert first is not second
        assert first is not ns["scale"]
        back = s.dumps([first, second])
    assert s.loads(back) == [ns["scale"], ns["scale"]]


def test_main_instances_take_the_c_pickler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instances of ``__main__`` classes no longer send the whole message through dill."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("dumps went through dill")

    ns = main_namespace()
    monkeypatch.setattr(_serialize, "_DillPickler", refuse)
    objs = [*sample(ns), ns["Base"], ns["Color"], ns["Point"]]
    frames = Serializer().dumps(objs)
    assert b"dill" not in bytes(frames[0])
    with as_receiver():
        out = Serializer().loads(frames)
    assert isinstance(out, list)
    assert out[1].who() == "child+base"
    assert out[5].double == 6


def test_dill_path_keeps_identity_too(tmp_path: Path) -> None:
    """A message that needs dill (a lock) still brings back the original class and function."""
    ns = main_namespace()
    lock = threading.Lock()
    s = Serializer()
    assert b"dill" in bytes(s.dumps([lock, ns["Counter"](1)])[0])
    (echoed,) = peer(tmp_path, [{"run": ns["echo"], "args": (lock, ns["Counter"](1), ns["scale"])}])
    assert type(echoed[1]) is ns["Counter"]
    assert echoed[2] is ns["scale"]


def test_generic_and_named_tuple_classes(tmp_path: Path) -> None:
    """A Generic over a ``__main__`` TypeVar and a NamedTuple travel, and come back."""
    ns = main_namespace()
    box, pair = ns["Box"](1), ns["Pair"](1)
    (reply,) = peer(tmp_path, [{"run": ns["typing_facts"], "args": (box, pair)}])
    back_box, back_pair, alias, bound, replaced = reply
    assert type(back_box) is ns["Box"]
    assert back_box.value == 1
    assert type(back_pair) is ns["Pair"]
    assert back_pair == pair
    assert alias.__origin__ is ns["Box"]
    assert bound is int
    assert replaced == ns["Pair"](2, "b")


ABC_SOURCE = """
import abc


class Shape(abc.ABC):
    @abc.abstractmethod
    def area(self): ...


class Square(Shape):
    def __init__(self, side):
        self.side = side

    def area(self):
        return self.side**2


class Registered:
    pass


Shape.register(Registered)
"""


def test_abstract_base_class_keeps_its_rules_and_registry() -> None:
    """An ABC arrives abstract, with its abstract methods and registered classes."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(ABC_SOURCE, "<main>", "exec"), ns)  # noqa: S102
    s = Serializer()
    frames = s.dumps([ns["Square"](3), ns["Shape"], ns["Registered"]()])
    with as_receiver():
        out = s.loads(frames)
    assert isinstance(out, list)
    square, shape, registered = out
    assert square.area() == 9
    assert isinstance(square, shape)
    assert isinstance(registered, shape)
    assert shape.__abstractmethods__ == frozenset({"area"})
    with pytest.raises(TypeError, match="abstract"):
        shape()


def test_subclass_sent_after_its_base_reuses_the_base() -> None:
    """A receiver that built a base from one message builds the subclass on it."""
    ns = main_namespace()
    s = Serializer()
    base, child = s.dumps(ns["Base"]), s.dumps(ns["Child"]())
    with as_receiver():
        received_base = s.loads(base)
        received_child = s.loads(child)
    assert isinstance(received_base, type)
    assert isinstance(received_child, received_base)
    assert received_base is not ns["Base"]


def test_tracker_keeps_nothing_alive() -> None:
    """A class and a function sent once die when the program drops them."""
    ns = main_namespace()
    s = Serializer()
    s.dumps([ns["Counter"](1), ns["scale"]])
    refs = [weakref.ref(ns["Counter"]), weakref.ref(ns["scale"])]
    ns.clear()
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_one_id_when_threads_send_a_new_class_at_once() -> None:
    """Threads pickling a class for the first time together agree on its tracker id."""
    cls = main_namespace()["Counter"]
    barrier = threading.Barrier(8)
    streams: list[bytes] = []

    def send() -> None:
        barrier.wait(10)
        stream = io.BytesIO()
        _serialize._Pickler(stream, Serializer(), None).dump(cls)
        streams.append(stream.getvalue())

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(streams)) == 1
    assert len(streams) == 8


def test_local_class_is_tracked() -> None:
    """A class defined in a function body is sent by value and keeps its identity."""

    @dataclasses.dataclass
    class Local:
        x: int

    s = Serializer()
    out = s.loads(s.dumps([Local(1), Local]))
    assert out == [Local(1), Local]
    frames = s.dumps(Local(2))
    with as_receiver():
        other = s.loads(frames)
    assert type(other) is not Local
    assert dataclasses.fields(other)[0].name == "x"


@pytest.mark.parametrize(
    "content",
    [
        {"a": [1, 2.5, "x", None, (True, b"y")], "b": {"c": Serializer}},
        [signal.SIGINT, signal.Signals, enum.Enum],  # importable enums: by reference
        [collections.abc.Mapping, collections.OrderedDict(a=1), decimal.Decimal("1.5")],
    ],
    ids=["plain", "enums", "abc"],
)
def test_importable_content_frames_unchanged(content: Any) -> None:
    """Plain data and importable classes pickle to plain pickle's very bytes, both paths."""
    full = Serializer()
    full.register(complex, lambda z: (complex, (z.real, z.imag)))
    assert full.dumps(content) == Serializer().dumps(content) == [pickle.dumps(content, 5)]
