"""The demo (the README's first command) runs to the end and shows what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().with_name("demo.py")


def test_demo_runs_and_reports_each_step(tmp_path: Path) -> None:
    """demo.py exits 0 and prints every step, ending with no process left behind."""
    pytest.importorskip("numpy")
    env = {**os.environ, "SHOAL_DIR": str(tmp_path)}
    try:
        proc = subprocess.run(
            [sys.executable, str(DEMO)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"demo.py did not finish within 120 s; output so far:\n{exc.stdout}")
    out = proc.stdout
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{out}\n{proc.stderr}"
    expected = [
        "1. cluster: a hub and",
        "a closure gave [42",
        "3. load-balanced map of 40 tasks of 50 ms: sum 20540",
        "longest Collatz chain 278 steps (from 17647)",
        "5. remote error from engine 0: ZeroDivisionError: float division by zero",
        "| ZeroDivisionError: float division by zero",
        "equal: True",
        "7. a RemoteDict on engine 0: 3 keys, gathered {'apples': 3, 'pears': 5, 'plums': 2}",
        "sin^2 + cos^2 summed to 16777216 in",
        "no process left behind",
    ]
    missing = [line for line in expected if line not in out]
    assert not missing, f"missing from the demo's output: {missing}\n{out}"
