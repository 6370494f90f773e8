"""shoal.engine: the kernel that runs code and holds objects for a remote client."""

from importlib.metadata import version as _version

from ._errors import EngineDiedError as EngineDiedError
from ._errors import EngineError as EngineError
from ._errors import NoSuchObjectError as NoSuchObjectError
from ._errors import RemoteError as RemoteError

__version__: str = _version("shoal-engine")

__all__ = [
    "EngineDiedError",
    "EngineError",
    "NoSuchObjectError",
    "RemoteError",
]

# Tracebacks and pickles show the public path, not the private module.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("shoal.engine._"):
        _obj.__module__ = "shoal.engine"
del _name, _obj
