"""The ``multiprocess.managers`` API for a cluster: shared objects that engines use too.

``Manager()`` starts a server process and returns a :class:`SyncManager`; its
``Queue``, ``Lock``, ``dict``, ``Barrier``, ... proxies work in the client and in tasks
on any engine. See :mod:`shoal.hub._managers` for the theory of operation.
"""

from ._managers import AcquirerProxy as AcquirerProxy
from ._managers import ArrayProxy as ArrayProxy
from ._managers import AutoProxy as AutoProxy
from ._managers import BarrierProxy as BarrierProxy
from ._managers import BaseManager as BaseManager
from ._managers import BaseProxy as BaseProxy
from ._managers import ConditionProxy as ConditionProxy
from ._managers import DictProxy as DictProxy
from ._managers import EventProxy as EventProxy
from ._managers import IteratorProxy as IteratorProxy
from ._managers import ListProxy as ListProxy
from ._managers import Manager as Manager
from ._managers import ManagerLost as ManagerLost
from ._managers import Namespace as Namespace
from ._managers import NamespaceProxy as NamespaceProxy
from ._managers import QueueProxy as QueueProxy
from ._managers import SyncManager as SyncManager
from ._managers import Token as Token
from ._managers import ValueProxy as ValueProxy

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
