"""Attach a Jupyter client to a running engine: ``shoal engine connect-info`` writes the
connection file of the engine's Jupyter gateway, and jupyter_client (not shoal's own
client) and ``jupyter console`` drive the engine through it while the cluster goes on
using the same engine.

Requests the Kernel answers with Jupyter's shapes (complete, inspect, is_complete,
history) and IPython's rich display come from other work on the Kernel: while the Kernel
does not answer one, its test is skipped with "pending" in the reason.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

import zmq  # noqa: E402
from jupyter_client import BlockingKernelClient  # noqa: E402
from jupyter_client.session import Session  # noqa: E402

from shoal.hub import Client  # noqa: E402
from shoal.hub._cli.cli import main  # noqa: E402
from shoal.hub.testing import RunningCluster, running_cluster, wait_until  # noqa: E402

pytestmark = pytest.mark.xdist_group("attach")

_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def attached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    """A cluster of one engine of this module's own (its gateway stays open)."""
    with running_cluster(tmp_path_factory.mktemp("attach"), 1) as running:
        yield running


def _connect_info(cluster: RunningCluster, capsys: pytest.CaptureFixture[str]) -> Path:
    """Run ``shoal engine connect-info 0`` on the cluster; the file it printed."""
    code = main(["engine", "connect-info", "0", "--profile-dir", str(cluster.folder)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return Path(out.strip().splitlines()[-1])


@pytest.fixture
def kc(attached: RunningCluster, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """A jupyter_client BlockingKernelClient attached to engine 0."""
    client = BlockingKernelClient(connection_file=str(_connect_info(attached, capsys)))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=_TIMEOUT)
        yield client
    finally:
        client.stop_channels()


def _reply(kc: Any, msg_id: str) -> dict[str, Any]:
    """The shell reply to ``msg_id`` (other replies are skipped)."""
    while True:
        msg: dict[str, Any] = kc.get_shell_msg(timeout=_TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def _iopub_until_idle(kc: Any, msg_id: str) -> list[dict[str, Any]]:
    """The iopub messages of request ``msg_id``, up to its ``status: idle``."""
    got = []
    while True:
        msg: dict[str, Any] = kc.get_iopub_msg(timeout=_TIMEOUT)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        got.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return got


def _pending_unless_answered(reply: dict[str, Any], what: str) -> None:
    content = reply["content"]
    if content.get("status") == "error" and "unknown msg_type" in content.get("evalue", ""):
        pytest.skip(f"pending: the engine's Kernel does not answer {what} yet")


def test_connect_info_writes_a_private_connection_file(
    attached: RunningCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The CLI writes a 0600 Jupyter connection file (at --file too) and prints its path."""
    path = _connect_info(attached, capsys)
    assert path.parent == attached.folder
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    info = json.loads(path.read_text())
    assert info["signature_scheme"] == "hmac-sha256"
    assert info["transport"] == "tcp"
    assert info["ip"] == "127.0.0.1"
    assert len(info["key"]) == 64
    ports = [info[f"{c}_port"] for c in ("shell", "iopub", "stdin", "control", "hb")]
    assert len(set(ports)) == 5
    other = tmp_path / "sub" / "k.json"
    code = main(
        ["engine", "connect-info", "0", "--profile-dir", str(attached.folder), "--file", str(other)]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.strip() == str(other)
    assert json.loads(other.read_text()) == info  # the open gateway, not a second one


def test_connect_info_of_an_unknown_engine_fails(
    attached: RunningCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """An engine id not in the cluster is a one-line error naming the engines."""
    assert main(["engine", "connect-info", "7", "--profile-dir", str(attached.folder)]) == 1
    assert "engine 7 is not in the cluster" in capsys.readouterr().err


def test_gateway_refuses_bad_requests(attached: RunningCluster) -> None:
    """Unknown fields and a reachable address without ``insecure`` get clear errors."""
    with pytest.raises(Exception, match="unknown fields"):
        attached.client._control(0, "jupyter_gateway_request", {"port": 5}).get(_TIMEOUT)
    with pytest.raises(Exception, match="'ip' must be a non-empty str"):
        attached.client._control(0, "jupyter_gateway_request", {"ip": 5}).get(_TIMEOUT)
    wide = {"ip": "0.0.0.0"}  # noqa: S104 - what must be refused
    with pytest.raises(Exception, match="reachable from other hosts"):
        attached.client._control(0, "jupyter_gateway_request", wide).get(_TIMEOUT)


def test_kernel_info_and_execution_counts(kc: Any) -> None:
    """kernel_info answers; execute counts cells, streams output and publishes results."""
    info = _reply(kc, kc.kernel_info())["content"]
    assert info["status"] == "ok"
    assert info["language_info"]["name"] == "python"
    assert info["protocol_version"].startswith("5.")
    first = _reply(kc, msg_id := kc.execute("print('hi'); 6 * 7"))["content"]
    assert first["status"] == "ok"
    out = _iopub_until_idle(kc, msg_id)
    kinds = [m["msg_type"] for m in out]
    assert kinds[0] == "status"
    assert out[0]["content"]["execution_state"] == "busy"
    assert "execute_input" in kinds
    text = "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream")
    assert text == "hi\n"
    (result,) = [m["content"] for m in out if m["msg_type"] == "execute_result"]
    assert result["data"]["text/plain"] == "42"
    assert result["execution_count"] == first["execution_count"]
    second = _reply(kc, kc.execute("1"))["content"]
    assert second["execution_count"] == first["execution_count"] + 1
    silent = _reply(kc, kc.execute("2", silent=True))["content"]
    assert silent["execution_count"] == second["execution_count"]


def test_errors_in_jupyter_shape(kc: Any) -> None:
    """A failing cell gives an error reply and an ``error`` on iopub, traceback as lines."""
    reply = _reply(kc, msg_id := kc.execute("1 / 0"))["content"]
    assert reply["status"] == "error"
    assert reply["ename"] == "ZeroDivisionError"
    assert isinstance(reply["traceback"], list)
    assert any("ZeroDivisionError" in line for line in reply["traceback"])
    errors = [m for m in _iopub_until_idle(kc, msg_id) if m["msg_type"] == "error"]
    assert errors
    assert errors[0]["content"]["ename"] == "ZeroDivisionError"


def test_same_namespace_as_the_cluster(attached: RunningCluster, kc: Any) -> None:
    """What the console defines, cluster tasks see, and the other way round."""
    attached.client[0].execute("from_cluster = 'c'", block=True)
    assert _reply(kc, kc.execute("from_console = from_cluster * 2"))["content"]["status"] == "ok"
    assert attached.client[0].pull("from_console", block=True) == "cc"


def test_complete(kc: Any) -> None:
    """complete_request gives matches and the cursor range."""
    _reply(kc, kc.execute("alpha_value = 1"))
    reply = _reply(kc, kc.complete("alpha_v", 7))
    _pending_unless_answered(reply, "complete_request")
    content = reply["content"]
    assert content["status"] == "ok"
    assert "alpha_value" in content["matches"]
    assert (content["cursor_start"], content["cursor_end"]) == (0, 7)


def test_inspect(kc: Any) -> None:
    """inspect_request finds a name and sends a mime bundle."""
    reply = _reply(kc, kc.inspect("len", 3))
    _pending_unless_answered(reply, "inspect_request")
    content = reply["content"]
    assert content["status"] == "ok"
    assert content["found"] is True
    assert "text/plain" in content["data"]


def test_is_complete(kc: Any) -> None:
    """is_complete_request tells complete, incomplete and invalid code apart."""
    reply = _reply(kc, kc.is_complete("x = 1"))
    _pending_unless_answered(reply, "is_complete_request")
    assert reply["content"]["status"] == "complete"
    assert _reply(kc, kc.is_complete("for i in range(3):"))["content"]["status"] == "incomplete"


def test_history(kc: Any) -> None:
    """history_request's tail holds the cells run."""
    marker = f"history_marker_{uuid.uuid4().hex[:6]} = 1"
    _reply(kc, kc.execute(marker))
    reply = _reply(kc, kc.history(hist_access_type="tail", n=5, output=False, raw=True))
    _pending_unless_answered(reply, "history_request")
    assert any(entry[2] == marker for entry in reply["content"]["history"])


def test_input_answered_through_stdin(kc: Any) -> None:
    """``input()`` sends input_request on stdin, and the input_reply is its value."""
    msg_id = kc.execute("answer = input('name? ')", allow_stdin=True)
    request = kc.get_stdin_msg(timeout=_TIMEOUT)
    assert request["msg_type"] == "input_request"
    assert request["content"]["prompt"] == "name? "
    assert request["parent_header"]["msg_id"] == msg_id
    kc.input("shoal")
    assert _reply(kc, msg_id)["content"]["status"] == "ok"
    _iopub_until_idle(kc, msg_id)
    reply = _reply(kc, msg_id := kc.execute("answer"))
    (result,) = [m for m in _iopub_until_idle(kc, msg_id) if m["msg_type"] == "execute_result"]
    assert result["content"]["data"]["text/plain"] == "'shoal'"
    assert reply["content"]["status"] == "ok"


def test_input_without_allow_stdin_fails_clearly(kc: Any) -> None:
    """Without allow_stdin, ``input()`` raises at once, naming why."""
    reply = _reply(kc, kc.execute("input()", allow_stdin=False))["content"]
    assert reply["status"] == "error"
    assert "allow_stdin" in reply["evalue"] or "stdin" in reply["evalue"]


def test_display_html_arrives_as_html(kc: Any) -> None:
    """``display(HTML(...))`` reaches iopub as display_data with text/html."""
    code = "from IPython.display import HTML, display; display(HTML('<b>rich</b>'))"
    msg_id = kc.execute(code)
    reply = _reply(kc, msg_id)["content"]
    out = _iopub_until_idle(kc, msg_id)
    if reply["status"] == "error" and reply["ename"] == "ModuleNotFoundError":
        pytest.skip("IPython is not installed on the engine")
    displays = [m["content"] for m in out if m["msg_type"] == "display_data"]
    if not displays:
        pytest.skip("pending: the engine's Kernel does not send display_data yet")
    assert displays[0]["data"]["text/html"] == "<b>rich</b>"


def test_interrupt_while_true_and_cluster_tasks_around_it(
    attached: RunningCluster, kc: Any
) -> None:
    """A console's ``while True`` is interrupted from control; the cluster's task sent
    meanwhile waits in the engine's queue and runs after it, as do tasks before."""
    rc = attached.client
    assert rc[0].apply_sync(lambda: "before") == "before"
    msg_id = kc.execute("print('spinning')\nwhile True: pass")
    while True:  # its output says user code runs: an interrupt now lands in it
        msg = kc.get_iopub_msg(timeout=_TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    during = rc[0].apply_async(lambda: "during")
    assert not during.done()
    interrupt = kc.session.msg("interrupt_request", {})
    kc.control_channel.send(interrupt)
    control = kc.get_control_msg(timeout=_TIMEOUT)
    assert control["msg_type"] == "interrupt_reply"
    reply = _reply(kc, msg_id)["content"]
    assert reply["status"] == "error"
    assert reply["ename"] == "KeyboardInterrupt"
    assert during.get(_TIMEOUT) == "during"
    assert rc[0].apply_sync(lambda: "after") == "after"
    assert _reply(kc, kc.execute("'alive'"))["content"]["status"] == "ok"


def test_interrupt_spares_cluster_tasks(attached: RunningCluster, kc: Any) -> None:
    """An interrupt from the console while a cluster task runs does not touch it."""
    rc = attached.client
    gate = attached.folder / f"gate-{uuid.uuid4().hex[:6]}"

    def wait_for_gate(path: str) -> str:
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return "done"

    task = rc[0].apply_async(wait_for_gate, str(gate))
    wait_until(lambda: rc[0].status()["busy"], timeout=_TIMEOUT)
    kc.control_channel.send(kc.session.msg("interrupt_request", {}))
    assert kc.get_control_msg(timeout=_TIMEOUT)["msg_type"] == "interrupt_reply"
    gate.touch()
    assert task.get(_TIMEOUT) == "done"


def _raw_shell(info: dict[str, Any]) -> zmq.Socket[Any]:
    ctx = zmq.Context.instance()
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://{info['ip']}:{info['shell_port']}")
    return sock


def test_forged_and_replayed_messages_are_dropped(
    attached: RunningCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """A message signed with another key, or sent twice, is never acted on or answered."""
    info = json.loads(_connect_info(attached, capsys).read_text())
    honest = Session(key=info["key"].encode())
    forger = Session(key=b"not-the-key")
    sock = _raw_shell(info)
    try:
        name = f"forged_{uuid.uuid4().hex[:6]}"
        forged = forger.msg("execute_request", {"code": f"{name} = 1", "silent": False})
        forger.send(sock, forged)
        counter = f"count_{uuid.uuid4().hex[:6]}"
        honest.send(sock, honest.msg("execute_request", {"code": f"{counter} = 0"}))
        bump = honest.msg("execute_request", {"code": f"{counter} += 1"})
        frames = honest.serialize(bump)
        sock.send_multipart(frames)
        sock.send_multipart(frames)  # a replay: same signature
        last = honest.msg("execute_request", {"code": "'done'"})
        honest.send(sock, last)
        answered = []
        while True:
            assert sock.poll(int(_TIMEOUT * 1000)), "no reply from the gateway"
            _, reply = honest.feed_identities(sock.recv_multipart())
            msg = honest.deserialize(reply)
            answered.append(msg["parent_header"]["msg_id"])
            if msg["parent_header"]["msg_id"] == last["header"]["msg_id"]:
                break
        assert forged["header"]["msg_id"] not in answered
        assert answered.count(bump["header"]["msg_id"]) == 1
        rc = attached.client
        assert rc[0].pull(counter, block=True) == 1
        assert rc[0].apply_sync(lambda n: n in globals(), name) is False
        dropped = rc[0].status()["messages"]["jupyter"]["dropped"]
        assert dropped["bad signature"] >= 1
        assert dropped["replayed signature"] >= 1
    finally:
        sock.close(linger=0)


def test_shutdown_detaches_and_the_engine_runs_on(
    attached: RunningCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """shutdown_request detaches the gateway, restart is refused; the engine serves on
    and a new connect-info opens a gateway with a new key."""
    path = _connect_info(attached, capsys)
    key = json.loads(path.read_text())["key"]
    kc = BlockingKernelClient(connection_file=str(path))
    kc.load_connection_file()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=_TIMEOUT)
        kc.shutdown(restart=True)
        refused = kc.get_control_msg(timeout=_TIMEOUT)["content"]
        assert refused["status"] == "error"
        assert "cannot restart" in refused["evalue"]
        kc.shutdown()
        done = kc.get_control_msg(timeout=_TIMEOUT)["content"]
        assert done["status"] == "ok"
        assert done["engine_running"] is True
    finally:
        kc.stop_channels()
    assert attached.client[0].apply_sync(lambda: "still here") == "still here"

    def new_key() -> bool:
        return json.loads(_connect_info(attached, capsys).read_text())["key"] != key

    wait_until(new_key, timeout=_TIMEOUT)  # the old one closes as its thread ends


def test_jupyter_console_attaches(
    attached: RunningCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``jupyter console --existing FILE`` under a pseudo-terminal: ``1+1`` shows ``2``,
    and ``shoal engine interrupt`` stops its ``while True``."""
    pexpect = pytest.importorskip("pexpect")
    path = _connect_info(attached, capsys)
    env = {**os.environ, "TERM": "dumb", "JUPYTER_PLATFORM_DIRS": "1"}
    for name in ("IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        env[name] = str(tmp_path / name.lower())  # the console leaves the home folder alone
    child = pexpect.spawn(
        sys.executable,
        ["-m", "jupyter_console", "--existing", str(path), "--simple-prompt"],
        env=env,
        encoding="utf-8",
        timeout=_TIMEOUT,
    )
    try:
        child.expect(r"In \[\d+\]: ")
        child.sendline("1+1")
        child.expect(r"Out\[\d+\]: 2")
        child.expect(r"In \[\d+\]: ")
        child.sendline("print('from ' + 'the console')")
        child.expect("from the console")
        child.expect(r"In \[\d+\]: ")
        child.sendline("print('spin' + 'ning'); exec('while True: pass')")
        child.expect("spinning")
        folder = str(attached.folder)
        assert main(["engine", "interrupt", "0", "--profile-dir", folder]) == 0
        assert "interrupted what it ran" in capsys.readouterr().out
        child.expect("KeyboardInterrupt")
        child.expect(r"In \[\d+\]: ")
        child.sendeof()
        child.expect(r"really want to exit")
        child.sendline("y")
        child.expect(pexpect.EOF)  # the console ends; the engine does not
    finally:
        child.close(force=True)
    client = Client(url_file=attached.url_file)
    try:
        assert client[0].apply_sync(lambda: "served") == "served"
    finally:
        client.close()


def test_drops_are_never_answered_even_when_empty(
    attached: RunningCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Frames without the delimiter or signature get no answer and break nothing."""
    info = json.loads(_connect_info(attached, capsys).read_text())
    sock = _raw_shell(info)
    try:
        sock.send_multipart([b"garbage"])
        sock.send_multipart([b"<IDS|MSG>", b"00", b"{}", b"{}", b"{}", b"{}"])
        honest = Session(key=info["key"].encode())
        ok = honest.msg("kernel_info_request", {})
        honest.send(sock, ok)
        assert sock.poll(int(_TIMEOUT * 1000))
        _, frames = honest.feed_identities(sock.recv_multipart())
        assert honest.deserialize(frames)["parent_header"]["msg_id"] == ok["header"]["msg_id"]
        assert not sock.poll(0)  # the two before it, on the same connection: no answer
    finally:
        sock.close(linger=0)
