"""The demo (the README's first command) runs to the end and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().with_name("demo.py")


def test_demo_runs_and_reports_each_step() -> None:
    """demo.py exits 0 and prints every step: pong, closure, zero copy, error, drop, bye."""
    pytest.importorskip("numpy")
    try:
        proc = subprocess.run(
            [sys.executable, str(DEMO)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"demo.py did not finish within 120 s; output so far:\n{exc.stdout}")
    out = proc.stdout
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{out}\n{proc.stderr}"
    expected = [
        "1. ping/pong:  median round trip",
        "-> [3.5, 6.5, 9.5]",
        "_parse_ratio('22/7') -> 3.142857",
        "(zero copy): yes",
        "4. remote error: ZeroDivisionError: division by zero",
        "| ZeroDivisionError: division by zero",
        "dropped {'AuthenticationError': 1}",
        "said 'bye' and exited with code 0",
        "no process left behind",
    ]
    missing = [line for line in expected if line not in out]
    assert not missing, f"missing from the demo's output: {missing}\n{out}"
