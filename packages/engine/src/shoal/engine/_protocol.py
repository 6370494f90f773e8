"""The message types of shoal's protocol, named once for engines, hubs and clients.

Theory of operation
-------------------
Every message a shoal process sends has one of the types of :class:`MsgType`. A request
is answered by exactly one reply, whose type :func:`reply_type` gives from a table (never
by editing the request's name); a notice is answered by nothing. The sets below say which
channel carries which requests, so that a receiver can refuse a request sent to the wrong
place with an error that names the right one. ``packages/engine/PROTOCOL.md`` documents
each type's content; a test checks that it names every member here and nothing else.

The raw frames that are not messages (never signed, never deserialized, never acted on
beyond an echo) are :data:`PING` and :data:`PONG`: a peer checking that a route works.

``apply_batch_request`` carries up to :data:`BATCH_MAX` small ``apply_request`` tasks in
one signed message, answered by one ``apply_batch_reply``: one wake-up, one signature and
one pickle for many small tasks each way.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "CONTROL_REQUESTS",
    "OUTPUT_NOTICES",
    "HUB_REQUESTS",
    "BATCH_MAX",
    "PING",
    "PONG",
    "SHELL_REQUESTS",
    "MsgType",
    "known_requests",
    "reply_type",
]

#: A raw frame asking whether a route works, answered :data:`PONG`; not a message.
PING: Final = b"ping"
#: The answer to :data:`PING`.
PONG: Final = b"pong"
#: Tasks one ``apply_batch_request`` may carry at most.
BATCH_MAX: Final = 64


class MsgType(str, enum.Enum):
    """Every message type of the protocol; members compare equal to their strings.

    .. versionadded:: 0.2
    """

    # shell: the kernel
    EXECUTE_REQUEST = "execute_request"
    EXECUTE_REPLY = "execute_reply"
    APPLY_REQUEST = "apply_request"
    APPLY_REPLY = "apply_reply"
    APPLY_BATCH_REQUEST = "apply_batch_request"
    APPLY_BATCH_REPLY = "apply_batch_reply"
    PUSH_REQUEST = "push_request"
    PUSH_REPLY = "push_reply"
    PULL_REQUEST = "pull_request"
    PULL_REPLY = "pull_reply"
    CLEAR_REQUEST = "clear_request"
    CLEAR_REPLY = "clear_reply"
    RELAY_REQUEST = "relay_request"
    RELAY_REPLY = "relay_reply"
    # shell: Jupyter's requests (history_request is also the hub's, below)
    KERNEL_INFO_REQUEST = "kernel_info_request"
    KERNEL_INFO_REPLY = "kernel_info_reply"
    COMPLETE_REQUEST = "complete_request"
    COMPLETE_REPLY = "complete_reply"
    INSPECT_REQUEST = "inspect_request"
    INSPECT_REPLY = "inspect_reply"
    IS_COMPLETE_REQUEST = "is_complete_request"
    IS_COMPLETE_REPLY = "is_complete_reply"
    COMM_INFO_REQUEST = "comm_info_request"
    COMM_INFO_REPLY = "comm_info_reply"
    # engine -> client while a request runs: stdin (answered on control by input_reply)
    INPUT_REQUEST = "input_request"
    INPUT_REPLY = "input_reply"
    # shell: the object store
    STORE_REQUEST = "store_request"
    STORE_REPLY = "store_reply"
    CALL_METHOD_REQUEST = "call_method_request"
    CALL_METHOD_REPLY = "call_method_reply"
    GETATTR_REQUEST = "getattr_request"
    GETATTR_REPLY = "getattr_reply"
    SETATTR_REQUEST = "setattr_request"
    SETATTR_REPLY = "setattr_reply"
    INCREF_REQUEST = "incref_request"
    INCREF_REPLY = "incref_reply"
    DECREF_REQUEST = "decref_request"
    DECREF_REPLY = "decref_reply"
    DESCRIBE_REQUEST = "describe_request"
    DESCRIBE_REPLY = "describe_reply"
    REFS_REQUEST = "refs_request"
    REFS_REPLY = "refs_reply"
    LIST_REQUEST = "list_request"
    LIST_REPLY = "list_reply"
    FETCH_REQUEST = "fetch_request"
    FETCH_REPLY = "fetch_reply"
    # shell (object store) and control (a client's lease ended): both take it
    RELEASE_REQUEST = "release_request"
    RELEASE_REPLY = "release_reply"
    # control
    INTERRUPT_REQUEST = "interrupt_request"
    INTERRUPT_REPLY = "interrupt_reply"
    ABORT_REQUEST = "abort_request"
    ABORT_REPLY = "abort_reply"
    STATUS_REQUEST = "status_request"
    STATUS_REPLY = "status_reply"
    SHUTDOWN_REQUEST = "shutdown_request"
    SHUTDOWN_REPLY = "shutdown_reply"
    JUPYTER_GATEWAY_REQUEST = "jupyter_gateway_request"
    JUPYTER_GATEWAY_REPLY = "jupyter_gateway_reply"
    # engine -> hub
    REGISTER_REQUEST = "register_request"
    REGISTER_REPLY = "register_reply"
    # client -> hub
    CONNECT_REQUEST = "connect_request"
    CONNECT_REPLY = "connect_reply"
    QUEUE_STATUS_REQUEST = "queue_status_request"
    QUEUE_STATUS_REPLY = "queue_status_reply"
    HISTORY_REQUEST = "history_request"
    HISTORY_REPLY = "history_reply"
    ADD_ENGINES_REQUEST = "add_engines_request"
    ADD_ENGINES_REPLY = "add_engines_reply"
    REMOVE_ENGINES_REQUEST = "remove_engines_request"
    REMOVE_ENGINES_REPLY = "remove_engines_reply"
    STATISTICS_REQUEST = "statistics_request"
    STATISTICS_REPLY = "statistics_reply"
    # notices: no reply
    STREAM = "stream"
    DISPLAY_DATA = "display_data"
    UPDATE_DISPLAY_DATA = "update_display_data"
    EXECUTE_RESULT = "execute_result"
    CLEAR_OUTPUT = "clear_output"
    ENGINE_READY = "engine_ready"
    HISTORY_REPORT = "history_report"
    ENGINE_REGISTERED = "engine_registered"
    ENGINE_UNREGISTERED = "engine_unregistered"
    NO_ENGINES = "no_engines"
    LAUNCH_FAILED = "launch_failed"
    HUB_SHUTDOWN = "hub_shutdown"
    # the reply to a request of a type the receiver does not know (an error reply)
    ERROR_REPLY = "error_reply"

    def __str__(self) -> str:
        return str(self.value)


_M = MsgType
_REPLIES: Final[dict[str, MsgType]] = {
    str(request.value): reply
    for request, reply in (
        (_M.EXECUTE_REQUEST, _M.EXECUTE_REPLY),
        (_M.APPLY_REQUEST, _M.APPLY_REPLY),
        (_M.APPLY_BATCH_REQUEST, _M.APPLY_BATCH_REPLY),
        (_M.PUSH_REQUEST, _M.PUSH_REPLY),
        (_M.PULL_REQUEST, _M.PULL_REPLY),
        (_M.CLEAR_REQUEST, _M.CLEAR_REPLY),
        (_M.RELAY_REQUEST, _M.RELAY_REPLY),
        (_M.KERNEL_INFO_REQUEST, _M.KERNEL_INFO_REPLY),
        (_M.COMPLETE_REQUEST, _M.COMPLETE_REPLY),
        (_M.INSPECT_REQUEST, _M.INSPECT_REPLY),
        (_M.IS_COMPLETE_REQUEST, _M.IS_COMPLETE_REPLY),
        (_M.COMM_INFO_REQUEST, _M.COMM_INFO_REPLY),
        (_M.INPUT_REQUEST, _M.INPUT_REPLY),
        (_M.STORE_REQUEST, _M.STORE_REPLY),
        (_M.CALL_METHOD_REQUEST, _M.CALL_METHOD_REPLY),
        (_M.GETATTR_REQUEST, _M.GETATTR_REPLY),
        (_M.SETATTR_REQUEST, _M.SETATTR_REPLY),
        (_M.INCREF_REQUEST, _M.INCREF_REPLY),
        (_M.DECREF_REQUEST, _M.DECREF_REPLY),
        (_M.DESCRIBE_REQUEST, _M.DESCRIBE_REPLY),
        (_M.REFS_REQUEST, _M.REFS_REPLY),
        (_M.LIST_REQUEST, _M.LIST_REPLY),
        (_M.FETCH_REQUEST, _M.FETCH_REPLY),
        (_M.RELEASE_REQUEST, _M.RELEASE_REPLY),
        (_M.INTERRUPT_REQUEST, _M.INTERRUPT_REPLY),
        (_M.ABORT_REQUEST, _M.ABORT_REPLY),
        (_M.STATUS_REQUEST, _M.STATUS_REPLY),
        (_M.SHUTDOWN_REQUEST, _M.SHUTDOWN_REPLY),
        (_M.JUPYTER_GATEWAY_REQUEST, _M.JUPYTER_GATEWAY_REPLY),
        (_M.REGISTER_REQUEST, _M.REGISTER_REPLY),
        (_M.CONNECT_REQUEST, _M.CONNECT_REPLY),
        (_M.QUEUE_STATUS_REQUEST, _M.QUEUE_STATUS_REPLY),
        (_M.HISTORY_REQUEST, _M.HISTORY_REPLY),
        (_M.ADD_ENGINES_REQUEST, _M.ADD_ENGINES_REPLY),
        (_M.REMOVE_ENGINES_REQUEST, _M.REMOVE_ENGINES_REPLY),
        (_M.STATISTICS_REQUEST, _M.STATISTICS_REPLY),
    )
}

#: Requests an engine serves on shell (and on its direct socket), one at a time.
SHELL_REQUESTS: Final = frozenset(
    str(m.value)
    for m in (
        _M.EXECUTE_REQUEST,
        _M.APPLY_REQUEST,
        _M.APPLY_BATCH_REQUEST,
        _M.PUSH_REQUEST,
        _M.PULL_REQUEST,
        _M.CLEAR_REQUEST,
        _M.RELAY_REQUEST,
        _M.KERNEL_INFO_REQUEST,
        _M.COMPLETE_REQUEST,
        _M.INSPECT_REQUEST,
        _M.IS_COMPLETE_REQUEST,
        _M.HISTORY_REQUEST,
        _M.COMM_INFO_REQUEST,
        _M.STORE_REQUEST,
        _M.CALL_METHOD_REQUEST,
        _M.GETATTR_REQUEST,
        _M.SETATTR_REQUEST,
        _M.INCREF_REQUEST,
        _M.DECREF_REQUEST,
        _M.DESCRIBE_REQUEST,
        _M.REFS_REQUEST,
        _M.LIST_REQUEST,
        _M.FETCH_REQUEST,
        _M.RELEASE_REQUEST,
    )
)
#: Requests an engine's I/O thread serves on control, even while user code runs.
CONTROL_REQUESTS: Final = frozenset(
    str(m.value)
    for m in (
        _M.INTERRUPT_REQUEST,
        _M.ABORT_REQUEST,
        _M.STATUS_REQUEST,
        _M.SHUTDOWN_REQUEST,
        _M.RELEASE_REQUEST,
        _M.JUPYTER_GATEWAY_REQUEST,
    )
)
#: What an engine sends while a request runs, before its reply, addressed like the
#: reply (the request's header as parent): output, and ``input_request``, which the
#: client answers with ``input_reply`` on control. None of them ends the request.
OUTPUT_NOTICES: Final = frozenset(
    str(m.value)
    for m in (
        _M.STREAM,
        _M.DISPLAY_DATA,
        _M.UPDATE_DISPLAY_DATA,
        _M.EXECUTE_RESULT,
        _M.CLEAR_OUTPUT,
        _M.INPUT_REQUEST,
    )
)
#: Requests a hub serves itself (a client's ``hub`` route).
HUB_REQUESTS: Final = frozenset(
    str(m.value)
    for m in (
        _M.CONNECT_REQUEST,
        _M.QUEUE_STATUS_REQUEST,
        _M.HISTORY_REQUEST,
        _M.ADD_ENGINES_REQUEST,
        _M.REMOVE_ENGINES_REQUEST,
        _M.ABORT_REQUEST,
        _M.SHUTDOWN_REQUEST,
        _M.STATISTICS_REQUEST,
    )
)


def reply_type(request_type: str) -> str:
    """The type of the reply to a request of type ``request_type``: from the table, or
    ``error_reply`` for a type that is not a request of the protocol (it is answered, with
    an error that names the known requests, never left waiting)."""
    reply = _REPLIES.get(str(request_type), _M.ERROR_REPLY)
    return str(reply.value)


def known_requests() -> list[str]:
    """Every request type of the protocol, sorted: what an error about an unknown one
    lists."""
    return sorted(_REPLIES)
