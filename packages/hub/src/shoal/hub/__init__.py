"""shoal.hub: the hub process, the Client, views, AsyncResult, Pool, Executor, Cluster,
remote objects (scatter, gather, proxies), managers and a multiprocess context
(:func:`get_context`).

Layers above build on its public seam: :meth:`Client.object_request` (an engine's object
store), :attr:`Client.references` (a :class:`ReferenceBook` of reference count changes),
:func:`gather` with the :class:`Gatherable` protocol, :func:`current_client` and
:func:`concatenate_shared`.
"""

import sys
from typing import TYPE_CHECKING

from shoal.engine import EngineDiedError as EngineDiedError
from shoal.engine import RemoteError as RemoteError

from ._cli.cluster import Cluster as Cluster
from ._client.asyncresult import AsyncMapResult as AsyncMapResult
from ._client.asyncresult import AsyncResult as AsyncResult
from ._client.client import Client as Client
from ._client.client import TaskRecord as TaskRecord
from ._client.client import current_client as current_client
from ._client.errors import CompositeError as CompositeError
from ._client.errors import DependencyError as DependencyError
from ._client.errors import HubLost as HubLost
from ._client.errors import KilledEngineError as KilledEngineError
from ._client.errors import TaskAborted as TaskAborted
from ._client.references import ReferenceBook as ReferenceBook
from ._client.views import DirectView as DirectView
from ._client.views import LoadBalancedView as LoadBalancedView
from ._client.views import View as View
from ._client.views import concatenate_shared as concatenate_shared
from ._client.views import empty_shared as empty_shared
from ._compat.pool import Executor as Executor
from ._compat.pool import Pool as Pool
from ._objects.remote import Gatherable as Gatherable
from ._objects.remote import ObjectHub as ObjectHub
from ._objects.remote import Ref as Ref
from ._objects.remote import Remote as Remote
from ._objects.remote import apply as apply
from ._objects.remote import call_all as call_all
from ._objects.remote import call_async as call_async
from ._objects.remote import gather as gather
from ._objects.remote import proxy_methods as proxy_methods
from ._objects.remote import scatter as scatter
from ._objects.remote import vectorize as vectorize
from ._protocol import SocketStatistics as SocketStatistics

if TYPE_CHECKING:
    from ._compat.context import ClusterContext as ClusterContext
    from ._compat.context import get_context as get_context
    from ._compat.joblib_backend import register_joblib_backend as register_joblib_backend
    from ._compat.managers import BaseManager as BaseManager
    from ._compat.managers import BaseProxy as BaseProxy
    from ._compat.managers import Manager as Manager
    from ._compat.managers import ManagerLost as ManagerLost
    from ._compat.managers import SyncManager as SyncManager
    from ._server.hub import Hub as Hub

# Loaded on first use: a client never needs the server (the hub process), and the
# managers (and the multiprocess context built on them) bring multiprocessing.managers.
_LAZY = {
    "Hub": "shoal.hub._server.hub",
    "ClusterContext": "shoal.hub._compat.context",
    "get_context": "shoal.hub._compat.context",
    "register_joblib_backend": "shoal.hub._compat.joblib_backend",  # imports joblib
    "BaseManager": "shoal.hub._compat.managers",
    "BaseProxy": "shoal.hub._compat.managers",
    "Manager": "shoal.hub._compat.managers",
    "ManagerLost": "shoal.hub._compat.managers",
    "SyncManager": "shoal.hub._compat.managers",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        obj: object = getattr(importlib.import_module(_LAZY[name]), name)
        if getattr(obj, "__module__", "").startswith("shoal.hub._"):
            obj.__module__ = "shoal.hub"
        globals()[name] = obj
        return obj
    # Read on first use: importlib.metadata costs ~50 ms, paid by every engine's start.
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415

        return version("shoal-hub")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_ipython_extension(ip: object) -> None:
    """``%load_ext shoal.hub``: the ``%px`` magics (needs IPython)."""
    from ._cli.magics import load_ipython_extension as load  # noqa: PLC0415 - IPython is optional

    load(ip)


__all__ = [
    "AsyncMapResult",
    "AsyncResult",
    "BaseManager",
    "BaseProxy",
    "Client",
    "Cluster",
    "ClusterContext",
    "CompositeError",
    "DependencyError",
    "DirectView",
    "EngineDiedError",
    "Executor",
    "Gatherable",
    "Hub",
    "HubLost",
    "KilledEngineError",
    "LoadBalancedView",
    "Manager",
    "ManagerLost",
    "ObjectHub",
    "Pool",
    "Ref",
    "ReferenceBook",
    "Remote",
    "RemoteError",
    "SocketStatistics",
    "SyncManager",
    "TaskAborted",
    "TaskRecord",
    "View",
    "apply",
    "call_all",
    "call_async",
    "concatenate_shared",
    "current_client",
    "empty_shared",
    "gather",
    "get_context",
    "proxy_methods",
    "register_joblib_backend",
    "scatter",
    "vectorize",
]

# Tracebacks and pickles show the public path, not the private module.
for _name in __all__:
    if _name in _LAZY:
        continue
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("shoal.hub._"):
        _obj.__module__ = "shoal.hub"
del _name, _obj

# joblib imported first: offer it the "shoal" backend now, at no import cost. Else
# shoal.hub.register_joblib_backend() does (importing joblib costs ~100 ms).
if "joblib.parallel" in sys.modules:
    from ._compat import joblib_backend as _joblib

    _joblib.register_joblib_backend()
    del _joblib
