"""How clients, the hub and engines address each other: routes and socket identities,
named once. The message types themselves are :class:`shoal.engine.MsgType`.

Theory of operation
-------------------
A client opens DEALERs whose identities share one token: ``s<token>`` sends requests,
``r<token>`` receives replies and notices, ``b<token>`` pings the hub's beat socket. The
hub answers what came from ``s<token>`` to ``r<token>`` (:func:`receiver_of`). A request
to an engine's direct socket names its receiving socket in its metadata (``reply_to``):
engines know nothing of clients' socket naming.

A client message to the hub is ``[route, head, *buffers]``; the route says where it goes
(:data:`HUB`, :data:`LB`, :data:`LB_BATCH`, :func:`engine_route`, :func:`control_route`).
The hub sends on what engines answer as ``[route, head, *buffers]`` with the engine's
route in front, so the client knows where a reply came from.
"""

from __future__ import annotations

from typing import Final, TypedDict

__all__ = [
    "BEAT",
    "HUB",
    "LB",
    "LB_BATCH",
    "RECEIVER",
    "SENDER",
    "SocketStatistics",
    "control_route",
    "engine_id_of",
    "engine_route",
    "receiver_of",
]

HUB: Final = b"hub"  # requests to the hub itself (connect, queue status, ...)
LB: Final = b"lb"  # a load-balanced task
LB_BATCH: Final = b"lbs"  # [lbs, frame counts (uint32 each), task 1's frames, task 2's, ...]
SENDER: Final = b"s"  # identity prefix of a client's sending socket
RECEIVER: Final = b"r"  # ... of its receiving socket
BEAT: Final = b"b"  # ... of its pinging socket


def engine_route(engine_id: int) -> bytes:
    """The route to engine ``engine_id``'s shell."""
    return b"e%d" % engine_id


def control_route(engine_id: int) -> bytes:
    """The route to engine ``engine_id``'s control."""
    return b"c%d" % engine_id


def engine_id_of(route: bytes) -> int | None:
    """The engine an ``e<id>`` or ``c<id>`` route names, or None for any other route."""
    if route[:1] in (b"e", b"c") and route[1:].isdigit():
        return int(route[1:])
    return None


def receiver_of(identity: bytes) -> bytes:
    """The receiving socket of the client whose sending or pinging socket is
    ``identity`` (opaque bytes: only the first byte is replaced)."""
    return RECEIVER + identity[1:]


class SocketStatistics(TypedDict):
    """What a socket sent, received and dropped (by reason) since it opened: a hub's
    ``statistics_request`` reply holds one per socket."""

    sent: int
    received: int
    dropped: dict[str, int]
