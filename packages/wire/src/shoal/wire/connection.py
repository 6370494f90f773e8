"""The ``multiprocess.connection`` API over zmq and shoal's serializer.

``Listener``, ``Client``, ``Pipe`` and ``wait`` behave like their ``multiprocess``
namesakes; every message is signed with the ``authkey``, and large buffers travel
without a copy. See :mod:`shoal.wire._connection` for the theory of operation.
"""

from ._connection import CLOSE_LINGER as CLOSE_LINGER
from ._connection import HEARTBEAT_TIMEOUT as HEARTBEAT_TIMEOUT
from ._connection import Address as Address
from ._connection import Client as Client
from ._connection import Connection as Connection
from ._connection import HandshakeError as HandshakeError
from ._connection import Listener as Listener
from ._connection import Pipe as Pipe
from ._connection import wait as wait

__all__ = [
    "CLOSE_LINGER",
    "HEARTBEAT_TIMEOUT",
    "Address",
    "Client",
    "Connection",
    "HandshakeError",
    "Listener",
    "Pipe",
    "wait",
]

for _name in ("Client", "Connection", "HandshakeError", "Listener", "Pipe", "wait"):
    globals()[_name].__module__ = "shoal.wire.connection"
del _name
