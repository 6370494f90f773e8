"""Ports and socket options."""

from __future__ import annotations

import contextlib
import socket
import threading

import zmq

__all__ = ["select_random_ports", "set_hwm"]

# Ports handed out by this process: the OS may reissue a released port at once, and
# two callers in one process must not be told the same port (as in IPython).
_handed_out: set[int] = set()
_lock = threading.Lock()


def select_random_ports(n: int) -> list[int]:
    """Return ``n`` distinct TCP ports that were free on every interface.

    All ``n`` ports are bound at the same time (so they differ) and then released, and
    no port is returned twice in one process. Another process can still take a port
    before you bind it: when you can, bind to port 0 or ``tcp://*:*`` instead.

    Parameters
    ----------
    n : int
        How many ports; 0 gives ``[]``.

    Raises
    ------
    TypeError
        When ``n`` is not an int.
    ValueError
        When ``n`` is negative.

    Examples
    --------
    >>> a, b = select_random_ports(2)
    >>> a != b
    True

    .. versionadded:: 0.1
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}: {n!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ports: list[int] = []
    with _lock, contextlib.ExitStack() as held:
        while len(ports) < n:
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("", 0))
            port: int = sock.getsockname()[1]
            # A port handed out before stays bound here, so the OS offers another.
            if port not in _handed_out:
                ports.append(port)
        _handed_out.update(ports)
    return ports


def set_hwm(sock: zmq.Socket[object], hwm: int = 0) -> None:
    """Set both high-water marks (``SNDHWM`` and ``RCVHWM``) of a zmq socket.

    ``zmq.HWM`` is no real libzmq option since libzmq 3 (pyzmq only emulates it), so
    the two options are set directly. Like every HWM, they apply to connections made
    after the call: call it before ``bind``/``connect``.

    Parameters
    ----------
    sock : zmq.Socket
    hwm : int
        Messages queued per peer before zmq drops or blocks; 0 means no limit.

    Raises
    ------
    ValueError
        When ``hwm`` is negative.
    zmq.ZMQError
        When libzmq refuses the option (a closed socket, for example).

    .. versionadded:: 0.1
    """
    if hwm < 0:
        raise ValueError(f"hwm must be >= 0 (0 = no limit), got {hwm}")
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
