"""Logging helpers: publish log records over zmq, log to stderr, parse log levels.

Theory of operation
-------------------
* A `PUBLogHandler` sends each record as two frames on a zmq PUB socket: the topic
  ``<root>.<LEVELNAME>`` (``ip.INFO``, ``engine.3.ERROR``; just ``<LEVELNAME>`` when
  the root is empty), then the formatted message, both UTF-8. A SUB socket picks
  levels or engines by subscribing to topic prefixes, as with pyzmq's own
  ``zmq.log.handlers.PUBHandler``.
* ``emit`` runs under the handler's lock, so records logged from several threads never
  use the socket at the same time. PUB never blocks: with no subscriber, or past the
  high-water mark, records are dropped.
* A process forked after the handler was made (``os.fork``, a ``fork`` Pool on an
  engine) must not touch the parent's zmq socket (libzmq's rule: its I/O thread is not
  in the child, and a send can wake, and abort, the parent's). There ``emit`` drops
  the record; the child's other handlers still get it.
* Records are text (UTF-8), never pickled, and not signed: a collector treats them as
  untrusted text (the hub bounds, escapes and only writes them).
* ``connect_*`` create the PUB socket and ``connect`` it to a collector that binds a
  SUB socket (the hub, usually); the handler owns that socket and closes it in
  ``close()``. A logger gets at most one such handler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import zmq

from shoal.wire import CurveKeys, configure_curve_client

from ._urls import validate_url

__all__ = [
    "PUBLogHandler",
    "connect_engine_logger",
    "connect_logger",
    "integer_loglevel",
    "local_logger",
]

_LEVEL_NAMES = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")

# INFO lines are for people; the other levels say where they come from (as pyzmq does).
_INFO_FORMAT = logging.Formatter("%(message)s")
_DETAILED_FORMAT = logging.Formatter("%(levelname)s %(filename)s:%(lineno)d - %(message)s")

#: How long (ms) records queued at close() may still be sent when the context ends.
CLOSE_LINGER_MS = 1000


def integer_loglevel(level: str | int) -> int:
    """Return ``level`` as an int: ``"debug"``, ``"DEBUG"``, ``"10"`` and ``10`` all give 10.

    Level names are matched in any case; names added with ``logging.addLevelName``
    work too.

    Raises
    ------
    ValueError
        When ``level`` is neither a level name nor a non-negative integer; the message
        lists the accepted names.
    TypeError
        When ``level`` is neither a str nor an int.

    .. versionadded:: 0.1
    """
    if isinstance(level, bool) or not isinstance(level, int | str):
        raise TypeError(f"loglevel must be a str or an int, got {type(level).__name__}: {level!r}")
    if isinstance(level, int):
        if level >= 0:
            return level
    else:
        text = level.strip()
        if text.isascii() and text.isdigit():
            return int(text)
        # getLevelName maps a registered name to its number (documented behaviour).
        value = logging.getLevelName(text.upper())
        if isinstance(value, int):
            return value
    names = ", ".join(_LEVEL_NAMES)
    raise ValueError(
        f"invalid loglevel {level!r}: expected a level name ({names}, in any case)"
        " or a non-negative integer such as 10 or '10'"
    )


class PUBLogHandler(logging.Handler):
    """A logging handler that publishes records on a zmq PUB socket.

    Each record is sent as two frames: the topic ``<root_topic>.<LEVELNAME>`` and the
    formatted message. Without a formatter set, INFO records are sent as the bare
    message and others as ``LEVEL file:line - message`` (plus the traceback, if any).
    Records logged in a process forked from the one that made the handler are dropped
    (a zmq socket must not be used across ``fork``).

    Parameters
    ----------
    socket : zmq.Socket
        A PUB (or XPUB) socket, already bound or connected.
    root_topic : str
        The first part of every topic; ``""`` for the level name alone.
    level : int or str
        The handler's level.
    owns_socket : bool
        Close ``socket`` in `close` (what `connect_logger` does).

    Examples
    --------
    >>> ctx = zmq.Context.instance()
    >>> pub = ctx.socket(zmq.PUB)
    >>> _ = pub.connect("tcp://127.0.0.1:5557")
    >>> logging.getLogger("app").addHandler(PUBLogHandler(pub, "app", owns_socket=True))

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        socket: zmq.Socket[object],
        root_topic: str = "",
        *,
        level: int | str = logging.NOTSET,
        owns_socket: bool = False,
    ) -> None:
        super().__init__(integer_loglevel(level))
        self.socket = socket
        self.root_topic = root_topic
        self.owns_socket = owns_socket
        self._pid = os.getpid()  # the process whose socket it is

    def topic(self, record: logging.LogRecord) -> bytes:
        """Return the topic frame for ``record``."""
        parts = [self.root_topic, record.levelname] if self.root_topic else [record.levelname]
        return ".".join(parts).encode("utf-8", "replace")

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` with the handler's formatter, or the per-level default."""
        if self.formatter is not None:
            return self.formatter.format(record)
        fmt = _INFO_FORMAT if record.levelno == logging.INFO else _DETAILED_FORMAT
        return fmt.format(record)

    def emit(self, record: logging.LogRecord) -> None:
        """Publish ``record`` (topic frame, then message frame)."""
        if os.getpid() != self._pid:  # a forked child: the socket is the parent's
            return
        try:
            frames = [self.topic(record), self.format(record).encode("utf-8", "replace")]
            self.socket.send_multipart(frames)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        """Detach from logging; close the socket if the handler owns it."""
        self.acquire()  # not while emit() is sending on the socket
        try:
            if self.owns_socket and not self.socket.closed:
                self.socket.close(linger=CLOSE_LINGER_MS)
        finally:
            self.release()
        super().close()


class _HasEngineId(Protocol):
    @property
    def id(self) -> int | None: ...


class _EnginePUBLogHandler(PUBLogHandler):
    """Topics ``engine.<id>.<LEVEL>``, with the id read at each record.

    An engine learns its id only when it registers, after logging is set up.
    """

    def __init__(self, socket: zmq.Socket[object], engine: int | _HasEngineId, **kw: Any) -> None:
        self.engine = engine
        super().__init__(socket, _engine_topic(engine), **kw)

    def topic(self, record: logging.LogRecord) -> bytes:
        self.root_topic = _engine_topic(self.engine)
        return super().topic(record)


def _engine_topic(engine: int | _HasEngineId) -> str:
    eid = engine if isinstance(engine, int) else engine.id
    return "engine" if eid is None else f"engine.{eid}"


def _connect(
    logger: logging.Logger,
    context: zmq.Context[zmq.Socket[object]],
    iface: str,
    loglevel: str | int,
    make: Callable[[zmq.Socket[object]], PUBLogHandler],
    *,
    curve: CurveKeys | None,
) -> PUBLogHandler:
    for h in logger.handlers:
        if isinstance(h, PUBLogHandler):
            return h  # never a second publisher on one logger
    level = integer_loglevel(loglevel)
    validate_url(iface)
    sock = context.socket(zmq.PUB)
    try:
        if curve is not None:
            configure_curve_client(sock, curve)
        sock.connect(iface)
        handler = make(sock)
    except BaseException:
        sock.close(linger=0)
        raise
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def connect_logger(
    logname: str,
    context: zmq.Context[zmq.Socket[object]],
    iface: str,
    root: str = "ip",
    loglevel: str | int = logging.DEBUG,
    *,
    curve: CurveKeys | None = None,
) -> PUBLogHandler:
    """Publish the records of logger ``logname`` to a zmq url, with topics ``<root>.<LEVEL>``.

    Creates a PUB socket in ``context``, connects it to ``iface`` (where a collector
    binds a SUB socket), and adds a `PUBLogHandler` owning it to the logger. The
    logger's level and the handler's are set to ``loglevel``.

    Parameters
    ----------
    logname : str
        The logger's name (``""`` for the root logger).
    context : zmq.Context
    iface : str
        The collector's url, such as ``tcp://127.0.0.1:5557``.
    root : str
        The first part of each topic.
    loglevel : int or str
        See `integer_loglevel`.
    curve : CurveKeys, optional
        Connect as a CurveZMQ client with these keys (a collector that is a Curve
        server: :class:`shoal.wire.CurveServer`).

        .. versionadded:: 0.3

    Returns
    -------
    PUBLogHandler
        The new handler, or the one the logger already had (its socket, url and
        level are left as they were). ``logger.removeHandler(h); h.close()`` detaches it.

    Raises
    ------
    ValueError
        For a malformed ``iface`` or ``loglevel``.

    Examples
    --------
    >>> ctx = zmq.Context.instance()
    >>> h = connect_logger("shoal.hub", ctx, "tcp://127.0.0.1:5557", root="hub")
    >>> logging.getLogger("shoal.hub").warning("disk full")  # topic b"hub.WARNING"

    .. versionadded:: 0.1
    """
    return _connect(
        logging.getLogger(logname),
        context,
        iface,
        loglevel,
        lambda sock: PUBLogHandler(sock, root, owns_socket=True),
        curve=curve,
    )


def connect_engine_logger(
    context: zmq.Context[zmq.Socket[object]],
    iface: str,
    engine: int | _HasEngineId,
    loglevel: str | int = logging.DEBUG,
    *,
    curve: CurveKeys | None = None,
) -> PUBLogHandler:
    """Publish the root logger's records with topics ``engine.<id>.<LEVEL>``.

    As `connect_logger` on the root logger. ``engine`` is an engine id, or an object
    whose ``id`` attribute is read at each record (``None`` until the engine
    registers, giving topic ``engine.<LEVEL>``).

    .. versionadded:: 0.1
    .. versionchanged:: 0.3
       ``curve``, as in `connect_logger`.
    """
    return _connect(
        logging.getLogger(),
        context,
        iface,
        loglevel,
        lambda sock: _EnginePUBLogHandler(sock, engine, owns_socket=True),
        curve=curve,
    )


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[TextIO]
else:  # StreamHandler is subscriptable at runtime only from Python 3.11.
    _StreamHandler = logging.StreamHandler


class _LocalStreamHandler(_StreamHandler):
    """Marks the handler that `local_logger` added, so it adds only one."""


def local_logger(logname: str, loglevel: str | int = logging.DEBUG) -> logging.Logger:
    """Return logger ``logname``, logging to stderr with timestamps.

    Lines look like ``2024-05-01 12:00:00.123 [I shoal.hub] message``. The logger and
    its new handler get ``loglevel``. When an earlier call already added the handler,
    the logger is returned unchanged.

    Raises
    ------
    ValueError
        For a malformed ``loglevel`` (see `integer_loglevel`).

    .. versionadded:: 0.1
    """
    level = integer_loglevel(loglevel)
    logger = logging.getLogger(logname)
    if any(isinstance(h, _LocalStreamHandler) for h in logger.handlers):
        return logger
    handler = _LocalStreamHandler()
    handler.setLevel(level)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d [%(levelname)1.1s %(name)s] %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    logger.addHandler(handler)
    logger.setLevel(level)
    return logger
