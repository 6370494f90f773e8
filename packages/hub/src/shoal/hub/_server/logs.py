"""The hub's log thread: engines' log records, appended to ``engines.log`` as text.

Engines publish records with :func:`shoal.util.connect_engine_logger` (``[topic, text]``,
unsigned) to the hub's ``log`` SUB. Nothing in a record is acted on: it is written as
text only, cut to :data:`LOG_RECORD_BYTES`, its control characters escaped and its further
lines indented, so that every line that starts at column 0 is one the hub began.
Malformed messages are counted and dropped. ``shoal logs`` prints the file.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import zmq

from shoal.util import log_errors

from .._protocol import SocketStatistics

__all__ = [
    "LOG_FILE_BYTES",
    "LOG_FRAME_BYTES",
    "LOG_HWM",
    "LOG_RECORD_BYTES",
    "LogSink",
    "escape_unsafe",
]

log = logging.getLogger("shoal.hub")

#: The most of a record's text written to ``engines.log`` (its head and tail are kept).
LOG_RECORD_BYTES = 16 * 1024
#: A larger frame on the log socket makes zmq drop its sender's connection unread.
LOG_FRAME_BYTES = 1024 * 1024
#: Records queued on the log socket before zmq drops more (memory stays bounded).
LOG_HWM = 10_000
#: ``engines.log`` is moved to ``engines.log.1`` (replacing it) when it grows past this.
LOG_FILE_BYTES = 16 * 1024 * 1024


# A topic is ``<root>.<LEVEL>`` (shoal.util.PUBLogHandler); engines' roots are
# ``engine`` (before they register) and ``engine.<id>``. Levels may be custom names.
_TOPIC = re.compile(
    rb"(?:([A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,3})\.)?([A-Za-z][A-Za-z0-9_ -]{0,31})"
)
_ENGINE_ROOT = re.compile(r"engine(?:\.([0-9]{1,9}))?")
# What must not reach a terminal or a log reader raw: C0 controls but tab and newline,
# DEL, C1 controls, line and paragraph separators, bidirectional marks and overrides.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def escape_unsafe(text: str) -> str:
    """``text`` with each unsafe character shown as its escape (``\\x1b``, ``\\u202e``)."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _record_text(body: bytes) -> list[str]:
    """A record's text as lines to write: at most :data:`LOG_RECORD_BYTES` of it (head
    and tail, the middle cut and said so), decoded leniently, unsafe characters escaped."""
    if len(body) > LOG_RECORD_BYTES:
        half = LOG_RECORD_BYTES // 2
        cut = len(body) - 2 * half
        text = (
            body[:half].decode("utf-8", "replace")
            + f" [... {cut} bytes cut ...] "
            + body[-half:].decode("utf-8", "replace")
        )
    else:
        text = body.decode("utf-8", "replace")
    return escape_unsafe(text).rstrip("\n").split("\n")


def _timestamp(when: float) -> str:
    """``2024-05-01 12:00:00.123``, local time (as :func:`shoal.util.local_logger`)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) + f".{int(when % 1 * 1000):03d}"


class LogSink(threading.Thread):
    """Appends the records published to the hub's ``log`` socket to ``path``.

    A line reads ``<time> <source> <LEVEL> <text>``: the source is ``engine <id> (pid
    <pid>)`` with the pid from the hub's own table (``engine ?`` before the engine
    registered), or the topic's root for other publishers
    (:func:`shoal.util.connect_logger`). A record's further lines (a traceback) follow,
    indented by four spaces. Records are unsigned: the topic is only a claim, and the
    text is never acted on.

    The routing thread never waits for this one: it owns the socket and the file, and
    reads :meth:`statistics` only.
    """

    def __init__(
        self, sock: zmq.Socket[Any], path: str, pid_of: Callable[[int], int | None]
    ) -> None:
        super().__init__(name="shoal-hub-logs", daemon=True)
        self.sock = sock
        self.path = path
        self.pid_of = pid_of
        self.received = 0
        self.dropped: dict[str, int] = {}
        self._pids: dict[int, int] = {}  # engines seen, kept past their end (bounded)
        self._halt = threading.Event()
        self._warned = 0.0
        self._file = self._open()

    def _open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "ab")

    def stop(self) -> None:
        if self.ident is None:  # it never ran: close what it holds
            self.sock.close(linger=0)
            self._file.close()
            return
        self._halt.set()
        self.join(timeout=5)

    def statistics(self) -> SocketStatistics:
        return {"sent": 0, "received": self.received, "dropped": dict(self.dropped)}

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                if self.sock.poll(100):
                    self._drain()
            self._drain()  # what reached the socket before the stop
        finally:
            self.sock.close(linger=0)
            self._file.close()

    def _drain(self) -> None:
        """Read a burst of records, write them, flush (``shoal logs -f`` sees them)."""
        lines: list[str] = []
        for _ in range(256):
            try:
                frames, count = self._recv()
            except zmq.Again:
                break
            self.received += 1
            line = self._line(frames, count)
            if line:
                lines.append(line)
        if lines:
            self._write("".join(lines))

    def _recv(self) -> tuple[list[bytes], int]:
        """One message: its first two frames and how many it had (the rest are read and
        dropped, kept nowhere)."""
        frame = self.sock.recv(zmq.NOBLOCK, copy=False)
        kept = [frame.bytes]
        count = 1
        while frame.more:
            frame = self.sock.recv(copy=False)
            count += 1
            if count <= 2:
                kept.append(frame.bytes)
        return kept, count

    @log_errors(logger=log)
    def _line(self, frames: list[bytes], count: int) -> str:
        """The text written for one message ('' when it is dropped)."""
        if count != 2:
            return self._drop(f"{count} frames, not [topic, text]")
        topic, body = frames
        match = _TOPIC.fullmatch(topic)
        if match is None:
            return self._drop("a malformed topic")
        root = (match.group(1) or b"").decode("ascii")
        level = match.group(2).decode("ascii")
        first, *more = _record_text(body)
        head = f"{_timestamp(time.time())} {self._source(root)} {level} {first}\n"
        return head + "".join(f"    {line}\n" for line in more)

    def _source(self, root: str) -> str:
        engine = _ENGINE_ROOT.fullmatch(root)
        if engine is None:
            return root or "-"
        if engine.group(1) is None:
            return "engine ?"
        engine_id = int(engine.group(1))
        pid = self._pids.get(engine_id)
        if pid is None and (pid := self.pid_of(engine_id)) is not None:
            if len(self._pids) >= 4096:
                del self._pids[next(iter(self._pids))]
            self._pids[engine_id] = pid
        where = "not an engine of this hub" if pid is None else f"pid {pid}"
        return f"engine {engine_id} ({where})"

    def _drop(self, why: str) -> str:
        self.dropped[why] = self.dropped.get(why, 0) + 1
        now = time.monotonic()
        if now - self._warned > 1.0:  # at most once a second: a flood must not flood
            self._warned = now
            total = sum(self.dropped.values())
            log.warning("dropped a message on the log socket: %s (%d dropped so far)", why, total)
        return ""

    def _write(self, text: str) -> None:
        try:
            if self._file.closed:  # a rotation that failed: try again
                self._file = self._open()
            self._file.write(text.encode("utf-8"))
            self._file.flush()
            if self._file.tell() >= LOG_FILE_BYTES:
                self._file.close()
                os.replace(self.path, self.path + ".1")
                self._file = self._open()
        except OSError as exc:  # a full disk, a removed folder: the hub goes on
            self._drop(f"{self.path} could not be written ({exc.strerror})")
