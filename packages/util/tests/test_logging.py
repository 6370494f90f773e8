"""Logging over zmq (real PUB/SUB sockets), local_logger and integer_loglevel."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
import zmq

from shoal.util import (
    PUBLogHandler,
    connect_engine_logger,
    connect_logger,
    integer_loglevel,
    local_logger,
)

SocketFactory = Callable[[int], zmq.Socket[Any]]
DEADLINE_S = 10.0


@pytest.fixture
def logger_name() -> Iterator[str]:
    """A logger name unique to the test; its handlers are closed and removed afterwards."""
    name = f"shoal.test.{uuid.uuid4().hex}"
    try:
        yield name
    finally:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            logger.removeHandler(h)
            h.close()


@pytest.fixture
def collector(make_socket: SocketFactory) -> tuple[zmq.Socket[Any], str]:
    """A SUB socket bound to a random port (as a hub's log collector), and its url."""
    sub = make_socket(zmq.SUB)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    return sub, f"tcp://127.0.0.1:{port}"


def wait_connected(log: logging.Logger, sub: zmq.Socket[Any], level: int = logging.ERROR) -> None:
    """Log probes until the SUB gets one: PUB drops records until the subscription arrives."""
    probe = f"probe-{uuid.uuid4().hex}"
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        log.log(level, probe)
        if sub.poll(50, zmq.POLLIN):
            return
    pytest.fail("the log publisher never reached the subscriber")


def next_record(sub: zmq.Socket[Any], *, skip: bytes = b"probe-") -> list[bytes]:
    """The next published record that is not a connection probe."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if sub.poll(100, zmq.POLLIN):
            frames: list[bytes] = sub.recv_multipart()
            if skip not in frames[-1]:
                return frames
    pytest.fail("no record arrived")


# --- connect_logger ----------------------------------------------------------------


def test_connect_logger_publishes_records(
    context: zmq.Context[Any], collector: tuple[zmq.Socket[Any], str], logger_name: str
) -> None:
    """Records reach a real SUB socket as [b'<root>.<LEVEL>', message] frames."""
    sub, url = collector
    sub.subscribe(b"")
    handler = connect_logger(logger_name, context, url, root="hub")
    assert isinstance(handler, PUBLogHandler)
    log = logging.getLogger(logger_name)
    wait_connected(log, sub)

    log.info("engine %d registered", 3)
    assert next_record(sub) == [b"hub.INFO", b"engine 3 registered"]
    log.warning("disk almost full")
    topic, message = next_record(sub)
    assert topic == b"hub.WARNING"
    assert message.startswith(b"WARNING test_logging.py:")
    assert message.endswith(b" - disk almost full")


def test_connect_logger_default_root_and_level(
    context: zmq.Context[Any], collector: tuple[zmq.Socket[Any], str], logger_name: str
) -> None:
    """The default root topic is 'ip', and logger and handler are set to DEBUG."""
    sub, url = collector
    sub.subscribe(b"ip.")
    handler = connect_logger(logger_name, context, url)
    log = logging.getLogger(logger_name)
    assert log.level == logging.DEBUG
    assert handler.level == logging.DEBUG
    wait_connected(log, sub)
    log.debug("details")
    assert next_record(sub)[0] == b"ip.DEBUG"


def test_connect_logger_subscription_filters_levels(
    context: zmq.Context[Any], collector: tuple[zmq.Socket[Any], str], logger_name: str
) -> None:
    """A SUB subscribed to b'ip.ERROR' gets errors and not warnings."""
    sub, url = collector
    sub.subscribe(b"ip.ERROR")
    connect_logger(logger_name, context, url)
    log = logging.getLogger(logger_name)
    wait_connected(log, sub, logging.ERROR)
    log.warning("not for you")
    log.error("for you")
    assert next_record(sub)[1].endswith(b" - for you")


def test_connect_logger_sends_tracebacks(
    context: zmq.Context[Any], collector: tuple[zmq.Socket[Any], str], logger_name: str
) -> None:
    """log.exception publishes the traceback in the message frame."""
    sub, url = collector
    sub.subscribe(b"")
    connect_logger(logger_name, context, url, loglevel="info")
    log = logging.getLogger(logger_name)
    wait_connected(log, sub)
    try:
        1 / 0  # noqa: B018 - raise on purpose
    except ZeroDivisionError:
        log.exception("task failed")
    topic, message = next_record(sub)
    assert topic == b"ip.ERROR"
    assert b"task failed" in message
    assert b"Traceback" in message
    assert b"ZeroDivisionError" in message


def test_connect_logger_respects_loglevel(
    context: zmq.Context[Any], collector: tuple[zmq.Socket[Any], str], logger_name: str
) -> None:
    """With loglevel='WARNING', debug and info records are not sent."""
    sub, url = collector
    sub.subscribe(b"")
    connect_logger(logger_name, context, url, loglevel="WARNING")
    log = logging.getLogger(logger_name)
    wait_connected(log, sub, logging.WARNING)
    log.debug("hidden")
    log.info("hidden")
    log.warning("shown")
    assert next_record(sub)[0] == b"ip.WARNING"


def test_connect_logger_adds_one_handler(
    context: zmq.Context[Any], collector: tuple[zmq.Socket[Any], str], logger_name: str
) -> None:
    """A second call returns the existing handler instead of adding one."""
    _, url = collector
    first = connect_logger(logger_name, context, url)
    second = connect_logger(logger_name, context, url, root="other")
    assert second is first
    assert logging.getLogger(logger_name).handlers == [first]
    assert first.root_topic == "ip"


def test_connect_logger_rejects_bad_url(context: zmq.Context[Any], logger_name: str) -> None:
    """A malformed url raises ValueError naming it, and no handler is added."""
    with pytest.raises(ValueError, match=re.escape("'tcp://127.0.0.1'")):
        connect_logger(logger_name, context, "tcp://127.0.0.1")
    assert logging.getLogger(logger_name).handlers == []


def test_handler_close_closes_owned_socket(
    context: zmq.Context[Any], collector: tuple[zmq.Socket[Any], str], logger_name: str
) -> None:
    """close() closes the PUB socket that connect_logger created."""
    _, url = collector
    handler = connect_logger(logger_name, context, url)
    logging.getLogger(logger_name).removeHandler(handler)
    handler.close()
    assert handler.socket.closed


def test_handler_with_borrowed_socket(
    make_socket: SocketFactory, collector: tuple[zmq.Socket[Any], str], logger_name: str
) -> None:
    """A PUBLogHandler on the caller's socket uses a set formatter and leaves the socket open."""
    sub, url = collector
    sub.subscribe(b"")
    pub = make_socket(zmq.PUB)
    pub.connect(url)
    handler = PUBLogHandler(pub)
    handler.setFormatter(logging.Formatter("<%(name)s> %(message)s"))
    log = logging.getLogger(logger_name)
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    wait_connected(log, sub)
    log.info("hi")
    assert next_record(sub) == [b"INFO", f"<{logger_name}> hi".encode()]
    log.removeHandler(handler)
    handler.close()
    assert not pub.closed


class _SentFrames:
    """Stands in for a PUB socket: keeps what is sent (so a test can count sends)."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.closed = False

    def send_multipart(self, frames: list[bytes]) -> None:
        self.sent.append(frames)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_handler_in_a_forked_child_sends_nothing(logger_name: str) -> None:
    """A record logged in a forked child never touches the parent's socket (libzmq's
    rule); the parent's records still go."""
    sock = _SentFrames()
    handler = PUBLogHandler(cast("zmq.Socket[Any]", sock))
    log = logging.getLogger(logger_name)
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process
        pid = os.fork()
    if pid == 0:  # the child: its exit status says how many records it sent
        code = 99
        try:
            log.error("from the child")
            code = len(sock.sent)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    log.error("from the parent")
    assert [frames[0] for frames in sock.sent] == [b"ERROR"]


# --- connect_engine_logger ---------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level restored after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for h in list(root.handlers):
            # Only ours: pytest's own capture handlers come and go around each phase.
            if isinstance(h, PUBLogHandler) and h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)


@dataclass
class FakeEngine:
    """Stands for an engine object: only its id is read."""

    id: int | None = None


def test_connect_engine_logger_topics(
    context: zmq.Context[Any],
    collector: tuple[zmq.Socket[Any], str],
    root_logger: logging.Logger,
) -> None:
    """Root-logger records carry engine.<id>.<LEVEL>, with the id read at each record."""
    sub, url = collector
    sub.subscribe(b"engine")
    engine = FakeEngine()
    handler = connect_engine_logger(context, url, engine, loglevel=logging.INFO)
    assert handler in root_logger.handlers
    log = logging.getLogger(f"shoal.test.engine.{uuid.uuid4().hex}")
    wait_connected(log, sub)
    log.warning("before registration")
    assert next_record(sub)[0] == b"engine.WARNING"
    engine.id = 3
    log.info("registered")
    assert next_record(sub) == [b"engine.3.INFO", b"registered"]


def test_connect_engine_logger_with_int_id(
    context: zmq.Context[Any],
    collector: tuple[zmq.Socket[Any], str],
    root_logger: logging.Logger,
) -> None:
    """An int engine id gives topics engine.<id>.<LEVEL>."""
    sub, url = collector
    sub.subscribe(b"engine.5.")
    connect_engine_logger(context, url, 5)
    log = logging.getLogger(f"shoal.test.engine.{uuid.uuid4().hex}")
    wait_connected(log, sub)
    log.error("oops")
    assert next_record(sub)[0] == b"engine.5.ERROR"


# --- local_logger ------------------------------------------------------------------


def test_local_logger_writes_to_stderr(
    logger_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records go to stderr as '<date> <time>.<ms> [<L> <name>] <message>'."""
    log = local_logger(logger_name, "info")
    assert log is logging.getLogger(logger_name)
    assert log.level == logging.INFO
    log.debug("not shown")
    log.info("shown")
    err = capsys.readouterr().err
    assert f"[I {logger_name}] shown" in err
    assert "not shown" not in err


def test_local_logger_adds_one_handler(logger_name: str) -> None:
    """Calling local_logger twice adds one stream handler only."""
    local_logger(logger_name)
    local_logger(logger_name, logging.WARNING)
    assert len(logging.getLogger(logger_name).handlers) == 1


# --- integer_loglevel --------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", 10),
        ("DEBUG", 10),
        ("Info", 20),
        ("warn", 30),
        ("warning", 30),
        ("critical", 50),
        ("notset", 0),
        pytest.param("10", 10, id="str-10"),
        pytest.param(" 25 ", 25, id="str-25-spaces"),
        pytest.param(10, 10, id="int-10"),
        pytest.param(0, 0, id="int-0"),
        pytest.param(logging.ERROR, 40, id="int-ERROR"),
    ],
)
def test_integer_loglevel(level: str | int, expected: int) -> None:
    """Names in any case, digit strings and ints all give the numeric level."""
    assert integer_loglevel(level) == expected


def test_integer_loglevel_custom_name() -> None:
    """A name registered with logging.addLevelName works too."""
    logging.addLevelName(7, "SHOALTRACE")
    assert integer_loglevel("shoaltrace") == 7


@pytest.mark.parametrize("level", ["verbose", "", "-10", "1.5", -1])
def test_integer_loglevel_rejects_bad_values(level: str | int) -> None:
    """A bad level raises ValueError naming it and the accepted values."""
    with pytest.raises(ValueError, match="invalid loglevel") as info:
        integer_loglevel(level)
    assert repr(level) in str(info.value)
    assert "CRITICAL, ERROR, WARNING, INFO, DEBUG, NOTSET" in str(info.value)


@pytest.mark.parametrize("level", [None, 10.0, True, b"DEBUG"])
def test_integer_loglevel_rejects_bad_types(level: Any) -> None:
    """A level that is neither str nor int raises TypeError."""
    with pytest.raises(TypeError, match="must be a str or an int"):
        integer_loglevel(level)
