"""A class defined in a client's ``__main__`` comes back from the engines as itself.

The client is a script run as ``__main__`` in a process of its own (a test module is
not ``__main__``): it starts a cluster, sends instances of its classes to the engines
in every way a client can, and checks what comes back (shoal issue 18).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from shoal.hub.testing import process_alive, wait_processes_gone

SCRIPT = """
import signal
import sys
from pathlib import Path

from shoal.hub import Pool, gather, scatter
from shoal.hub.testing import running_cluster

# SIGTERM from the test (on its timeout) ends the cluster block, which stops the cluster.
signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))


class Counter:
    def __init__(self, n=0):
        self.n = n

    def inc(self):
        self.n += 1
        return self


class Big(Counter):
    def inc(self):
        super().inc()
        self.n += 10
        return self


def make(n):
    return Counter(n)


folder = Path(sys.argv[1])
with running_cluster(folder / "hub", 2) as (proc, rc):
    (folder / "hub.pid").write_text(str(proc.pid))
    dv = rc[:]
    dv.push({"c": Counter(2)}, block=True)
    results = {
        "gather(scatter(obj))": [gather(scatter(Counter(1), split=False, client=rc))],
        "view.pull": dv.pull("c", block=True),
        "apply_sync(lambda: Counter())": [rc[0].apply_sync(lambda: Counter(3))],
        "apply_sync(Big.inc)": [rc[1].apply_sync(lambda c: c.inc(), Big(4))],
    }
    with Pool(client=rc) as pool:
        results["Pool.map"] = pool.map(make, range(4))
    wrong = {
        how: [type(x).__qualname__ for x in got if not isinstance(x, Counter)]
        for how, got in results.items()
    }
    wrong = {how: names for how, names in wrong.items() if names or not results[how]}
    classes = {type(x) for got in results.values() for x in got}
    assert not wrong, wrong
    assert classes == {Counter, Big}, classes
    assert [c.n for c in results["Pool.map"]] == [0, 1, 2, 3]
    assert results["apply_sync(Big.inc)"][0].n == 15
    assert results["view.pull"][0] is not results["view.pull"][1]
    print("IDENTITY OK", sorted(results), flush=True)
"""


def test_main_classes_come_back_from_engines_as_themselves(tmp_path: Path) -> None:
    """scatter/gather, pull, apply_sync and Pool.map return the client's own classes."""
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            out, err = proc.communicate(timeout=90)  # below pytest-timeout's 120 s
        except subprocess.TimeoutExpired:
            proc.terminate()  # the script stops its cluster on SIGTERM
            out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()[-3000:]
        assert b"IDENTITY OK" in out, out.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_cluster(tmp_path / "hub.pid")


def _kill_cluster(pid_file: Path) -> None:
    """Whatever became of the script, its hub and engines (one process group) end."""
    if not pid_file.exists():
        return
    hub = int(pid_file.read_text())
    if process_alive(hub):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(hub, signal.SIGKILL)
        wait_processes_gone([hub], timeout=30)
