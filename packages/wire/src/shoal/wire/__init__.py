"""shoal.wire: signed messages, dill serialization with zero-copy buffers, zmq sessions.

Usable alone: ``pip install shoal-wire`` needs only pyzmq and dill.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._curve import CurveServer as CurveServer
from ._curve import bind as bind
from ._curve import configure_curve_client as configure_curve_client
from ._curve import curve_keypair as curve_keypair
from ._curve import is_loopback_url as is_loopback_url
from ._errors import AuthenticationError as AuthenticationError
from ._errors import ConnectionFileError as ConnectionFileError
from ._errors import CurveSetupError as CurveSetupError
from ._errors import FrameCountError as FrameCountError
from ._errors import FrameTooLargeError as FrameTooLargeError
from ._errors import HeaderDecodeError as HeaderDecodeError
from ._errors import InsecureBindError as InsecureBindError
from ._errors import InvalidKeyError as InvalidKeyError
from ._errors import LocalUsageError as LocalUsageError
from ._errors import MalformedMessageError as MalformedMessageError
from ._errors import RemoteInputError as RemoteInputError
from ._errors import ReplayError as ReplayError
from ._errors import SharedMemoryLost as SharedMemoryLost
from ._errors import UnpicklableError as UnpicklableError
from ._errors import VersionMismatchError as VersionMismatchError
from ._errors import WireError as WireError
from ._files import ConnectionInfo as ConnectionInfo
from ._files import CurveKeys as CurveKeys
from ._files import generate_key as generate_key
from ._files import read_connection_file as read_connection_file
from ._files import read_private_file as read_private_file
from ._files import write_connection_file as write_connection_file
from ._files import write_private_file as write_private_file
from ._message import DELIMITER as DELIMITER
from ._message import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._message import Codec as Codec
from ._message import Envelope as Envelope
from ._message import Header as Header
from ._message import Link as Link
from ._message import Message as Message
from ._message import RawContent as RawContent
from ._message import ReplayGuard as ReplayGuard
from ._message import decode as decode
from ._message import encode as encode
from ._message import new_header as new_header
from ._serialize import Buffer as Buffer
from ._serialize import Serializer as Serializer
from ._shm import SharedMemory as SharedMemory
from ._shm import copy_buffer as copy_buffer
from ._shm import default_shared_memory as default_shared_memory
from ._shm import shared_memory_enabled as shared_memory_enabled
from ._shm import sweep as sweep_shared_memory
from ._shm import this_host as this_host

if _TYPE_CHECKING:
    from . import connection as connection
    from ._connection import HandshakeError as HandshakeError
    from ._session import AsyncSession as AsyncSession
    from ._session import Received as Received
    from ._session import Session as Session
    from ._session import SessionStatistics as SessionStatistics

# Imported on first use: the connection module costs ~100 ms with asyncio, which every
# engine's and client's start would pay.
_LAZY = {
    "connection": ("shoal.wire.connection", None),
    "HandshakeError": ("shoal.wire._connection", "HandshakeError"),
    "AsyncSession": ("shoal.wire._session", "AsyncSession"),
    "Received": ("shoal.wire._session", "Received"),
    "Session": ("shoal.wire._session", "Session"),
    "SessionStatistics": ("shoal.wire._session", "SessionStatistics"),
}


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        if attr is not None and value.__module__.startswith("shoal.wire._"):
            value.__module__ = "shoal.wire"
        globals()[name] = value
        return value
    # Read on first use: importlib.metadata costs ~50 ms, paid by every engine's start.
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415

        return version("shoal-wire")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DELIMITER",
    "PROTOCOL_VERSION",
    "AsyncSession",
    "AuthenticationError",
    "Buffer",
    "Codec",
    "Envelope",
    "Header",
    "Link",
    "Message",
    "RawContent",
    "Received",
    "ReplayGuard",
    "Serializer",
    "Session",
    "SessionStatistics",
    "SharedMemory",
    "copy_buffer",
    "default_shared_memory",
    "shared_memory_enabled",
    "sweep_shared_memory",
    "this_host",
    "decode",
    "encode",
    "new_header",
    "ConnectionFileError",
    "ConnectionInfo",
    "CurveKeys",
    "CurveServer",
    "CurveSetupError",
    "FrameCountError",
    "FrameTooLargeError",
    "HandshakeError",
    "HeaderDecodeError",
    "InsecureBindError",
    "InvalidKeyError",
    "LocalUsageError",
    "MalformedMessageError",
    "RemoteInputError",
    "ReplayError",
    "SharedMemoryLost",
    "UnpicklableError",
    "VersionMismatchError",
    "WireError",
    "bind",
    "connection",
    "configure_curve_client",
    "curve_keypair",
    "is_loopback_url",
    "generate_key",
    "read_connection_file",
    "read_private_file",
    "write_connection_file",
    "write_private_file",
]

# Tracebacks and pickles show the public path, not the private module.
for _name in __all__:
    if _name in _LAZY:
        continue
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("shoal.wire._"):
        _obj.__module__ = "shoal.wire"
del _name, _obj
