"""shoal.util: small shared helpers for the layers above shoal.wire.

urls (check, split, bind url to connect url), ports and socket options, logging over
zmq, relaying signals to child processes, and two dict flavours; the semantics of
``IPython.parallel.util``, for Python 3.10+ and current pyzmq. Needs only
``shoal-wire`` and pyzmq.
"""

from ._containers import Namespace as Namespace
from ._containers import ReverseDict as ReverseDict
from ._functions import interactive as interactive
from ._functions import log_errors as log_errors
from ._keys import generate_exec_key as generate_exec_key
from ._logging import PUBLogHandler as PUBLogHandler
from ._logging import connect_engine_logger as connect_engine_logger
from ._logging import connect_logger as connect_logger
from ._logging import integer_loglevel as integer_loglevel
from ._logging import local_logger as local_logger
from ._signals import signal_children as signal_children
from ._sockets import select_random_ports as select_random_ports
from ._sockets import set_hwm as set_hwm
from ._urls import disambiguate_ip_address as disambiguate_ip_address
from ._urls import disambiguate_url as disambiguate_url
from ._urls import is_url as is_url
from ._urls import outbound_ip as outbound_ip
from ._urls import split_url as split_url
from ._urls import validate_url as validate_url
from ._urls import validate_url_container as validate_url_container


def __getattr__(name: str) -> str:
    # Read on first use: importlib.metadata costs ~50 ms, paid by every engine's start.
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415

        return version("shoal-util")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Namespace",
    "PUBLogHandler",
    "ReverseDict",
    "connect_engine_logger",
    "connect_logger",
    "disambiguate_ip_address",
    "disambiguate_url",
    "generate_exec_key",
    "integer_loglevel",
    "interactive",
    "is_url",
    "local_logger",
    "log_errors",
    "outbound_ip",
    "select_random_ports",
    "set_hwm",
    "signal_children",
    "split_url",
    "validate_url",
    "validate_url_container",
]

# Tracebacks and pickles show the public path, not the private module.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("shoal.util._"):
        _obj.__module__ = "shoal.util"
del _name, _obj
