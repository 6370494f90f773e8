"""Engines' log records reach the hub's ``engines.log`` and ``shoal logs``; what arrives
on the hub's log socket unsigned is written as bounded, escaped text, never acted on.

Real processes: a hub with its engines, the ``shoal`` command, raw zmq sockets.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq

from shoal.hub._cli.cli import main
from shoal.hub._server.logs import LOG_FRAME_BYTES, LOG_RECORD_BYTES
from shoal.hub.testing import ClusterStarter, wait_until
from shoal.util import connect_logger
from shoal.wire import ConnectionInfo, generate_key, read_connection_file, write_connection_file

pytestmark = pytest.mark.timeout(180)

CLI = [sys.executable, "-m", "shoal.hub._cli.cli"]
DEADLINE_S = 60.0  # generous: a loaded 2-core machine; every wait ends as soon as it can
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def _log_warning(marker: str) -> int:
    """Run on an engine: log a warning as user code does; return the engine's pid."""
    import logging  # runs on the engine
    import os

    logging.getLogger("shoal.test.user").warning("look: %s", marker)
    return os.getpid()


@contextmanager
def _following(folder: Path) -> Iterator[Callable[[str], None]]:
    """``shoal logs -f`` running; yields ``expect(text)``, which waits until the command
    printed a line holding ``text``. The command is killed when the block ends."""
    proc = subprocess.Popen(
        [*CLI, "logs", "-f", "-n", "1000", "--profile-dir", str(folder)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    out = proc.stdout
    selector = selectors.DefaultSelector()
    selector.register(out, selectors.EVENT_READ)
    printed = bytearray()

    def expect(text: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while text.encode() not in printed:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                pytest.fail(f"`shoal logs -f` did not print {text!r}; it printed:\n{printed!r}")
            if selector.select(min(left, 0.5)):
                printed.extend(os.read(out.fileno(), 65536))  # what is there, at most this

    try:
        yield expect
    finally:
        selector.close()
        proc.kill()
        proc.wait()
        out.close()


def test_engine_logs_reach_engines_log_and_shoal_logs(tmp_path: Path, hub: ClusterStarter) -> None:
    """A warning logged by a task on each engine is written to engines.log with the
    engine's id, pid, level and logger name, and printed by `shoal logs` (and `-f`)."""
    folder = tmp_path / "hub"
    with hub(folder, 2) as (proc, rc), _following(folder) as expect:
        marker = uuid.uuid4().hex
        pids = rc[:].apply_sync(_log_warning, marker)
        engines_log = folder / "engines.log"
        wait_until(
            lambda: _read(engines_log).count(marker) == 2,
            DEADLINE_S,
            message=lambda: f"engines.log lacks the records:\n{_read(engines_log)}",
        )
        found = re.findall(
            rf"^{STAMP} engine (\d+) \(pid (\d+)\) WARNING shoal\.test\.user: look: {marker}$",
            _read(engines_log),
            re.MULTILINE,
        )
        assert sorted(found) == sorted((str(i), str(p)) for i, p in zip(rc.ids, pids, strict=True))
        expect(marker)  # -f: the lines shown first, or those that came after
        later = uuid.uuid4().hex
        rc[rc.ids[0]].apply_sync(_log_warning, later)
        expect(later)  # -f: a record written while it follows

        shown = subprocess.run(
            [*CLI, "logs", "--profile-dir", str(folder), "-n", "5"],
            capture_output=True,
            text=True,
            check=False,
            timeout=DEADLINE_S,
        )
        assert shown.returncode == 0, shown.stderr
        assert marker in shown.stdout
        assert later in shown.stdout.splitlines()[-1]
        hub_log = subprocess.run(
            [*CLI, "logs", "--hub", "--profile-dir", str(folder)],
            capture_output=True,
            text=True,
            check=False,
            timeout=DEADLINE_S,
        )
        assert hub_log.returncode == 0, hub_log.stderr
        assert "shoal hub ready" in hub_log.stdout
        assert proc.poll() is None


def test_shoal_logs_without_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`shoal logs` on a folder where no hub ran says so, with status 1; -n < 0 is 2."""
    assert main(["logs", "--profile-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no engines' log" in err
    assert "shoal cluster start" in err
    assert main(["logs", "--profile-dir", str(tmp_path), "-n", "-1"]) == 2


class _Publisher:
    """A raw PUB socket on the hub's log socket: what any local process could send."""

    def __init__(self, folder: Path) -> None:
        self.url = read_connection_file(folder / "hub-engine.json").urls["log"]
        self.context: zmq.Context[Any] = zmq.Context()
        self.sock = self._connect()

    def _connect(self) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(zmq.PUB)
        sock.linger = 0
        sock.sndhwm = 0
        sock.connect(self.url)
        return sock

    def reconnect(self) -> None:
        self.sock.close(linger=0)
        self.sock = self._connect()

    def send_until_written(self, path: Path, topic: bytes, text: str) -> None:
        """Send ``[topic, text]`` again and again until ``path`` holds ``text`` (a PUB
        drops what it sends before the subscription reaches it)."""

        def written() -> bool:
            if text in _read(path):
                return True
            self.sock.send_multipart([topic, text.encode()])
            return False

        wait_until(
            written,
            DEADLINE_S,
            interval=0.05,
            message=lambda: f"{text!r} to reach {path}; it holds:\n{_read(path)}",
        )

    def close(self) -> None:
        self.sock.close(linger=0)
        self.context.term()


def _log_through_connect_logger(pub: _Publisher, engines_log: Path) -> None:
    """A process of the user's own publishes with shoal.util.connect_logger: its records
    are written under the root it chose."""
    name = f"shoal.test.{uuid.uuid4().hex}"
    log = logging.getLogger(name)
    handler = connect_logger(name, pub.context, pub.url, root="mytool", loglevel="INFO")
    try:
        marker = uuid.uuid4().hex
        line = re.compile(rf"^{STAMP} mytool WARNING .*careful {marker}$", re.MULTILINE)

        def written() -> bool:
            if line.search(_read(engines_log)):
                return True
            log.warning("careful %s", marker)
            return False

        wait_until(
            written,
            DEADLINE_S,
            interval=0.05,
            message=lambda: f"connect_logger's records in engines.log:\n{_read(engines_log)}",
        )
    finally:
        log.removeHandler(handler)
        handler.close()


def test_malformed_records_are_dropped_or_defused(tmp_path: Path, hub: ClusterStarter) -> None:
    """Malformed, hostile and oversized messages on the log socket: the hub goes on, drops
    and counts what is not [topic, text], and writes the rest as bounded, escaped text
    in which only the hub starts a line."""
    folder = tmp_path / "hub"
    engines_log = folder / "engines.log"
    with hub(folder, 1) as (proc, rc):
        pub = _Publisher(folder)
        try:
            pub.send_until_written(engines_log, b"engine.0.INFO", f"probe {uuid.uuid4().hex}")
            dropped_before = sum(rc.hub_statistics()["log"]["dropped"].values())
            malformed = [
                [b"engine.0.WARNING"],  # no text
                [b"engine.0.WARNING", b"extra-one", b"extra-two"],  # a frame too many
                [b"engine.0.WARN\nING", b"forged level"],
                [b"\x00\xff.ERROR", b"binary topic"],
                [b"a." * 200 + b"ERROR", b"long topic"],
            ]
            hostile = (
                b"evil \x1b[2J\r\n2099-01-01 00:00:00.000 engine 0 (pid 1) CRITICAL forged"
                b"\x00 \xe2\x80\xae rlo \xff"
            )
            big = b"H" * 8 + b"M" * 100_000 + b"TAIL"
            for frames in [
                *malformed,
                [b"engine.0.ERROR", hostile],
                [b"engine.7.ERROR", b"from an engine the hub does not know"],
                [b"engine.ERROR", b"before registration"],
                [b"engine.0.ERROR", big],
            ]:
                pub.sock.send_multipart(frames)
            pub.send_until_written(engines_log, b"engine.0.INFO", f"after {uuid.uuid4().hex}")
            # Past the frame cap zmq drops the sender's connection, unread.
            pub.sock.send_multipart([b"engine.0.ERROR", b"X" * (LOG_FRAME_BYTES + 1)])
            pub.reconnect()
            pub.send_until_written(engines_log, b"engine.0.INFO", f"later {uuid.uuid4().hex}")
            _log_through_connect_logger(pub, engines_log)
        finally:
            pub.close()

        assert proc.poll() is None
        assert rc[:].apply_sync(lambda: 7) == [7]  # the hub still serves
        dropped = rc.hub_statistics()["log"]["dropped"]
        assert sum(dropped.values()) - dropped_before == len(malformed), dropped

        text = _read(engines_log)
        pid = rc[0].apply_sync(os.getpid)
        for line in text.splitlines():
            assert re.match(rf"{STAMP} \S", line) or line.startswith("    "), line
            assert len(line.encode()) < LOG_RECORD_BYTES + 200
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u202e]", text), "control characters"
        assert "\\x1b[2J\\r" in text  # shown escaped
        assert "\\u202e rlo \ufffd" in text
        assert re.search(rf"^{STAMP} engine 0 \(pid {pid}\) ERROR evil ", text, re.MULTILINE)
        assert re.search(
            r"^    2099-01-01 00:00:00\.000 engine 0 \(pid 1\) CRITICAL forged", text, re.M
        )
        assert re.search(rf"^{STAMP} engine 7 \(not an engine of this hub\) ERROR from", text, re.M)
        assert re.search(rf"^{STAMP} engine \? ERROR before registration$", text, re.M)
        assert re.search(r"HHHHHHHHM+ \[\.\.\. \d+ bytes cut \.\.\.\] M+TAIL$", text, re.M)
        for absent in ("forged level", "binary topic", "long topic", "extra-", "XXXX"):
            assert absent not in text
        assert os.stat(engines_log).st_mode & 0o077 == 0  # private, as the hub's files


def test_hub_refuses_a_malformed_ip(tmp_path: Path) -> None:
    """`shoal hub --ip` with a url, an IPv6 address or garbage is a usage error that says
    what is wrong, before any socket is bound."""
    for ip, says in [
        ("tcp://127.0.0.1", "not a url"),
        ("::1", "IPv6"),
        ("bad host!", "is not '*', an IP address"),
    ]:
        result = subprocess.run(
            [*CLI, "hub", "--ip", ip, "--profile-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=DEADLINE_S,
        )
        assert result.returncode == 2, result.stderr
        assert says in result.stderr


def test_engine_refuses_a_malformed_url(tmp_path: Path) -> None:
    """An engine whose connection file holds a malformed url exits with a usage error
    naming it, instead of a zmq error once it runs."""
    urls = {"shell": "tcp://127.0.0.1:1", "control": "tcp://bad host:2", "heartbeat": "x"}
    path = tmp_path / "engine.json"
    write_connection_file(path, ConnectionInfo(urls, generate_key()))
    result = subprocess.run(
        [sys.executable, "-m", "shoal.engine", "--connection-file", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=DEADLINE_S,
    )
    assert result.returncode == 2, result.stderr
    assert "'tcp://bad host:2'" in result.stderr


def test_engine_log_level_accepts_numbers_and_names(tmp_path: Path, hub: ClusterStarter) -> None:
    """--engine-log-level takes a number or a name in any case; engines use it."""
    folder = tmp_path / "hub"
    with hub(folder, 1, "--engine-log-level", "info") as (_, rc):
        marker = uuid.uuid4().hex

        def info(m: str) -> None:
            import logging  # runs on the engine

            logging.getLogger("shoal.test.user").info("info %s", m)

        rc[0].apply_sync(info, marker)
        wait_until(
            lambda: f"INFO shoal.test.user: info {marker}" in _read(folder / "engines.log"),
            DEADLINE_S,
            message=lambda: f"the INFO record in engines.log:\n{_read(folder / 'engines.log')}",
        )
