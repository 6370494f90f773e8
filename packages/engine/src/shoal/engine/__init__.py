"""shoal.engine: the kernel that runs code and holds objects for a remote client."""

from importlib.metadata import version as _version

from ._errors import EngineDiedError as EngineDiedError
from ._errors import EngineError as EngineError
from ._errors import NoSuchObjectError as NoSuchObjectError
from ._errors import RemoteError as RemoteError
from ._kernel import Kernel as Kernel
from ._manager import KernelManager as KernelManager
from ._objects import ObjectStore as ObjectStore
from ._objects import Ref as Ref

__version__: str = _version("shoal-engine")

__all__ = [
    "EngineDiedError",
    "EngineError",
    "Kernel",
    "KernelManager",
    "NoSuchObjectError",
    "ObjectStore",
    "Ref",
    "RemoteError",
]

# Tracebacks and pickles show the public path, not the private module.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("shoal.engine._"):
        _obj.__module__ = "shoal.engine"
del _name, _obj
