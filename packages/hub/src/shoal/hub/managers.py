"""The ``multiprocess.managers`` API for a cluster: shared objects that engines use too.

``Manager()`` starts a server process and returns a :class:`SyncManager`; its
``Queue``, ``Lock``, ``dict``, ``Barrier``, ... proxies work in the client and in tasks
on any engine. See :mod:`shoal.hub._compat.managers` for the theory of operation.
"""

from ._compat.managers import AcquirerProxy as AcquirerProxy
from ._compat.managers import ArrayProxy as ArrayProxy
from ._compat.managers import AutoProxy as AutoProxy
from ._compat.managers import BarrierProxy as BarrierProxy
from ._compat.managers import BaseManager as BaseManager
from ._compat.managers import BaseProxy as BaseProxy
from ._compat.managers import ConditionProxy as ConditionProxy
from ._compat.managers import DictProxy as DictProxy
from ._compat.managers import EventProxy as EventProxy
from ._compat.managers import IteratorProxy as IteratorProxy
from ._compat.managers import ListProxy as ListProxy
from ._compat.managers import Manager as Manager
from ._compat.managers import ManagerLost as ManagerLost
from ._compat.managers import Namespace as Namespace
from ._compat.managers import NamespaceProxy as NamespaceProxy
from ._compat.managers import QueueProxy as QueueProxy
from ._compat.managers import SyncManager as SyncManager
from ._compat.managers import Token as Token
from ._compat.managers import ValueProxy as ValueProxy

__all__ = [
    "AcquirerProxy",
    "ArrayProxy",
    "AutoProxy",
    "BarrierProxy",
    "BaseManager",
    "BaseProxy",
    "ConditionProxy",
    "DictProxy",
    "EventProxy",
    "IteratorProxy",
    "ListProxy",
    "Manager",
    "ManagerLost",
    "Namespace",
    "NamespaceProxy",
    "QueueProxy",
    "SyncManager",
    "Token",
    "ValueProxy",
]
