"""The errors of the wire layer.

Theory of operation
-------------------
Every error the wire layer raises derives from :class:`WireError`, which cannot be
raised itself. Each subclass also derives from the builtin a caller would naturally catch
(``ValueError`` for bad input, ``TypeError`` for objects that cannot be serialized,
``PermissionError`` for unsafe files), so code that knows nothing of shoal still works.

Errors are split by who is at fault:

* :class:`RemoteInputError` -- what a *peer* sent is wrong (bad signature, replay,
  malformed frames, version mismatch). A receiving loop drops the message, counts it and
  keeps serving; it never answers it.
* :class:`LocalUsageError` -- what the *caller* asked is wrong (an unpicklable object,
  an empty key, an unsafe connection file). The message says how to fix it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "ConnectionFileError",
    "CurveSetupError",
    "FrameCountError",
    "FrameTooLargeError",
    "HeaderDecodeError",
    "InsecureBindError",
    "InvalidKeyError",
    "LocalUsageError",
    "MalformedMessageError",
    "RemoteInputError",
    "SharedMemoryLost",
    "ReplayError",
    "UnpicklableError",
    "VersionMismatchError",
    "WireError",
]


class WireError(Exception):
    """Base of every error raised by :mod:`shoal.wire`; never raised itself.

    Attributes
    ----------
    hint : str
        One sentence on what to do about it (empty when there is nothing to do but drop
        the message).
    """

    hint: str = ""

    def __new__(cls, *args: object, **kwargs: object) -> WireError:
        if cls in _ABSTRACT:
            raise TypeError(f"{cls.__name__} is a base class; raise one of its subclasses")
        # OSError subclasses take their message from __new__'s arguments.
        return super().__new__(cls, *args)

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.hint})" if self.hint else text


class RemoteInputError(WireError, ValueError):
    """A received message is unacceptable. Drop it; never answer it."""


class LocalUsageError(WireError):
    """The caller asked for something the wire layer cannot do safely or at all."""


class AuthenticationError(RemoteInputError):
    """The message signature is missing or does not match the key.

    Raised by :func:`decode` before anything in the message is deserialized. The usual
    cause is a peer started with another cluster's key or connection file.
    """

    hint = "check that both ends use the same key / connection file"


class ReplayError(RemoteInputError):
    """The message was seen before, or is older than the replay window.

    A signature enters the replay history only after it verified, so a forged copy of a
    genuine message cannot get the genuine one refused.
    """


class MalformedMessageError(RemoteInputError):
    """The frames do not form a shoal message (missing delimiter, bad lengths...)."""


class SharedMemoryLost(MalformedMessageError):
    """An authentic message whose shared memory buffer cannot be opened here (its
    segment is gone). It names the message, so the receiver can answer it with an error
    rather than leave its sender waiting.

    Attributes
    ----------
    header, parent_header : Header or None
        The message's (verified) header and parent header.
    identities : tuple of bytes
        Its routing identities.
    """

    header: Any = None
    parent_header: Any = None
    identities: tuple[bytes, ...] = ()


class FrameCountError(MalformedMessageError):
    """The message has more frames than the receiver accepts (``max_frames``)."""


class FrameTooLargeError(MalformedMessageError):
    """A frame is larger than the receiver accepts (``max_frame_size``)."""


class HeaderDecodeError(MalformedMessageError):
    """A header, parent header or metadata frame is not the JSON object it must be."""


class VersionMismatchError(RemoteInputError):
    """The peer speaks another version of the wire protocol.

    The message names both versions; upgrade the older side.
    """

    hint = "install the same shoal-wire version on both ends"


class UnpicklableError(LocalUsageError, TypeError):
    """An object cannot be serialized, even by dill.

    The message names the type and where inside the object the failure happened,
    e.g. ``obj['conn'].sock``.
    """

    def __init__(self, message: str, *, path: str = "obj", type_name: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.type_name = type_name


class InvalidKeyError(LocalUsageError, ValueError):
    """A signing key is empty, too weak, or the digest is weaker than SHA-256."""


class ConnectionFileError(LocalUsageError, PermissionError):
    """A connection or key file is unsafe (readable by others, a symlink) or invalid."""


class InsecureBindError(LocalUsageError, ValueError):
    """Binding a non-loopback address without CurveZMQ encryption was refused.

    Pass Curve keys, or ``insecure=True`` if the network is trusted.
    """

    hint = "configure CurveZMQ keys, or pass insecure=True on a trusted network"


class CurveSetupError(LocalUsageError, RuntimeError):
    """CurveZMQ cannot be set up as asked.

    Raised when libzmq was built without CURVE, when a second ZAP handler is started in
    one context, or when a socket from another context is given to a
    :class:`CurveServer` (its handler would never be asked, and every client would get
    in). The message says which.
    """


_ABSTRACT = (WireError, RemoteInputError, LocalUsageError)
