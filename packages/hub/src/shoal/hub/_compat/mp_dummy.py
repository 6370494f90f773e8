"""``multiprocess.dummy`` for the cluster context: the same API on threads of this process.

``mp.dummy`` (and ``mp.ThreadPool``) of a cluster context do what they do in
multiprocess: they run on threads of the *calling* process (the client, or an engine when
a task uses them there), never on the cluster's engines. That is their point: code
written for processes runs on threads, for I/O-bound work or to debug without pickling.
So this module hands out multiprocess's own ``multiprocess.dummy`` when multiprocess is
installed, and the standard library's ``multiprocessing.dummy`` otherwise (shoal-hub does
not require multiprocess); both behave the same.

What differs from multiprocess: nothing a program sees. ``implementation`` says which of
the two this is.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = [
    "Array",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Namespace",
    "Pipe",
    "Pool",
    "Process",
    "Queue",
    "RLock",
    "Semaphore",
    "ThreadPool",
    "Value",
    "active_children",
    "current_process",
    "freeze_support",
    "implementation",
    "shutdown",
]


def _load() -> tuple[ModuleType, ModuleType]:
    """multiprocess's dummy and pool modules, or else the standard library's."""
    for package in ("multiprocess", "multiprocessing"):
        try:
            return (
                importlib.import_module(f"{package}.dummy"),
                importlib.import_module(f"{package}.pool"),
            )
        except ImportError:
            continue
    raise ImportError("neither multiprocess.dummy nor multiprocessing.dummy can be imported")


_dummy, _pool = _load()

#: The package whose dummy module this is: ``"multiprocess"`` or ``"multiprocessing"``.
implementation: str = _dummy.__name__.rsplit(".", 1)[0]

if TYPE_CHECKING:  # the standard library's are typed; multiprocess's are the same code
    from multiprocessing.dummy import (
        Array,
        Barrier,
        BoundedSemaphore,
        Condition,
        Event,
        JoinableQueue,
        Lock,
        Manager,
        Namespace,
        Pipe,
        Pool,
        Process,
        Queue,
        RLock,
        Semaphore,
        Value,
        active_children,
        current_process,
        freeze_support,
        shutdown,
    )
    from multiprocessing.pool import ThreadPool
else:
    Array = _dummy.Array
    Barrier = _dummy.Barrier
    BoundedSemaphore = _dummy.BoundedSemaphore
    Condition = _dummy.Condition
    Event = _dummy.Event
    JoinableQueue = _dummy.JoinableQueue
    Lock = _dummy.Lock
    Manager = _dummy.Manager
    Namespace = _dummy.Namespace
    Pipe = _dummy.Pipe
    Pool = _dummy.Pool
    Process = _dummy.Process
    Queue = _dummy.Queue
    RLock = _dummy.RLock
    Semaphore = _dummy.Semaphore
    Value = _dummy.Value
    active_children = _dummy.active_children
    current_process = _dummy.current_process
    freeze_support = _dummy.freeze_support
    shutdown = _dummy.shutdown
    ThreadPool = _pool.ThreadPool
