"""shoal.engine: the kernel that runs code and holds objects for a remote client."""

from typing import TYPE_CHECKING

from ._current import current_engine as current_engine
from ._errors import EngineDiedError as EngineDiedError
from ._errors import EngineError as EngineError
from ._errors import NoSuchObjectError as NoSuchObjectError
from ._errors import RemoteError as RemoteError
from ._errors import RemoteTraceback as RemoteTraceback
from ._kernel import Kernel as Kernel
from ._manager import KernelManager as KernelManager
from ._objects import ObjectDescription as ObjectDescription
from ._objects import ObjectStore as ObjectStore
from ._objects import Ref as Ref
from ._objects import RefDict as RefDict
from ._protocol import BATCH_MAX as BATCH_MAX
from ._protocol import CONTROL_REQUESTS as CONTROL_REQUESTS
from ._protocol import HUB_REQUESTS as HUB_REQUESTS
from ._protocol import OUTPUT_NOTICES as OUTPUT_NOTICES
from ._protocol import PING as PING
from ._protocol import PONG as PONG
from ._protocol import SHELL_REQUESTS as SHELL_REQUESTS
from ._protocol import MsgType as MsgType
from ._protocol import known_requests as known_requests
from ._protocol import reply_type as reply_type

if TYPE_CHECKING:
    from ._engine import main as main


def __getattr__(name: str) -> object:
    # Read on first use: importlib.metadata costs ~50 ms, paid by every engine's start.
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415

        return version("shoal-engine")
    if name == "main":  # the engine process itself: clients never need it loaded
        from ._engine import main  # noqa: PLC0415

        main.__module__ = "shoal.engine"
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BATCH_MAX",
    "CONTROL_REQUESTS",
    "HUB_REQUESTS",
    "OUTPUT_NOTICES",
    "PING",
    "PONG",
    "SHELL_REQUESTS",
    "EngineDiedError",
    "EngineError",
    "Kernel",
    "KernelManager",
    "MsgType",
    "NoSuchObjectError",
    "ObjectDescription",
    "ObjectStore",
    "Ref",
    "RefDict",
    "RemoteError",
    "RemoteTraceback",
    "current_engine",
    "known_requests",
    "main",
    "reply_type",
]

# Tracebacks and pickles show the public path, not the private module.
for _name in __all__:
    if _name == "main":
        continue  # loaded on first use
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("shoal.engine._"):
        _obj.__module__ = "shoal.engine"
del _name, _obj
