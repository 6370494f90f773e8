"""A partition between hosts: a link of the network namespaces ``.ci/hosts.sh`` makes
goes down for 10 s while tasks run (see ``test_multihost.py``).

It holds the test hosts alone (``hosts_lock(exclusive=True)``): the other multi-host
tests, in other pytest-xdist workers, wait for it, and it for them.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from multihost import Hosts, NetnsHub, hosts_lock, require_hosts

from shoal.hub import Client
from shoal.hub.testing import engine_pids, process_alive, wait_until

pytestmark = pytest.mark.timeout(300)


def _hub_args(hosts: Hosts) -> list[str]:
    spread = ",".join(f"{h}:2" for h in sorted(hosts.engine_hosts))
    return ["--ip", hosts.hub_ip, "--engines", "ssh", "--hosts", spread, "--ssh", hosts.ssh]


def test_a_link_down_for_10_s_is_noticed_on_both_sides_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """nodea's link goes down for 10 s while load-balanced tasks (with retries) run: the
    hub declares its engines lost and tells the client, and the engines end themselves,
    each within 2.5 s; every task's result arrives once, and none runs twice but those
    that were cut off mid-run (retried elsewhere)."""
    hosts = require_hosts()
    link = hosts.veths["nodea"]
    runs = tmp_path / "runs"
    runs.mkdir()
    with hosts_lock(exclusive=True), NetnsHub(hosts, tmp_path / "hub", _hub_args(hosts)) as hub:
        rc = Client(url_file=str(hub.client_file))
        try:
            rc.wait_for_engines(4, timeout=60)
            where = dict(zip(rc.ids, rc[:].apply_sync(socket.gethostname), strict=True))
            cut = [e for e, name in where.items() if name == "nodea"]
            cut_pids = [engine_pids(rc)[e] for e in cut]
            lview = rc.load_balanced_view()
            lview.retries = 2

            def task(i: int, folder: str) -> int:
                import socket
                import time

                with open(f"{folder}/{i}", "a") as f:  # the hosts share /tmp
                    f.write(f"run {socket.gethostname()} {time.monotonic():.2f}\n")
                time.sleep(0.2)
                return i * i

            # One task per item (a map's chunk would run again whole).
            pending = [lview.apply_async(task, i, str(runs)) for i in range(40)]
            wait_until(lambda: len(list(runs.iterdir())) >= 6, timeout=60)
            down = time.monotonic()
            _set_link(link, "down")
            try:
                wait_until(lambda: not set(cut) & set(rc.ids), timeout=10)
                told = time.monotonic() - down
                wait_until(lambda: not any(process_alive(p) for p in cut_pids), timeout=10)
                ended = time.monotonic() - down
                print(f"link down: client told after {told:.2f} s, engines ended {ended:.2f} s")
                assert told <= 2.5, f"the client was told after {told:.2f} s"
                assert ended <= 2.5, f"the cut-off engines ended after {ended:.2f} s"
                wait_until(lambda: time.monotonic() - down >= 10, timeout=20, interval=0.2)
            finally:
                _set_link(link, "up")
            assert [p.get(120) for p in pending] == [i * i for i in range(40)]
            runs_per_task = {int(p.name): p.read_text().count("run") for p in runs.iterdir()}
            assert sorted(runs_per_task) == list(range(40))
            # Only the tasks the cut-off engines held (hwm=2 each: running and queued)
            # run again.
            assert sum(n - 1 for n in runs_per_task.values()) <= 2 * len(cut), {
                p.name: p.read_text() for p in runs.iterdir() if p.read_text().count("run") > 1
            } | {"down": f"{down:.2f}"}
            assert all(len(p.msg_ids) == 1 for p in pending)  # one result each
            # The link is back: new engines on nodea register and work.
            rc.add_engines(2)
            wait_until(lambda: len(rc.ids) == 4, timeout=60)
            assert sorted(rc[:].apply_sync(socket.gethostname)) == ["nodea"] * 2 + ["nodeb"] * 2
        finally:
            rc.close()


def _set_link(veth: str, state: str) -> None:
    subprocess.run(["ip", "link", "set", veth, state], check=True, timeout=30)
