"""Smoke test for shoal-wire installed alone: a Listener/Client exchange between two
processes, a signed Session message, and proof that no other shoal layer is present."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from shoal.wire import generate_key
from shoal.wire.connection import Client, Listener

for other in ("shoal.util", "shoal.engine", "shoal.hub", "shoal.arrays"):
    if importlib.util.find_spec(other) is not None:
        sys.exit(f"{other} is installed: this venv must hold shoal-wire alone")

key = generate_key()
CHILD = """
import sys
from shoal.wire.connection import Client
with Client(sys.argv[1], authkey=sys.argv[2].encode()) as conn:
    fn, arg = conn.recv()
    conn.send(fn(arg))
"""
with Listener("tcp://127.0.0.1:0", authkey=key) as listener:
    child = subprocess.Popen([sys.executable, "-c", CHILD, listener.address, key.decode()])
    try:
        with listener.accept() as conn:
            conn.send((lambda x: x * 2, 21))
            if not conn.poll(30):
                sys.exit("no answer from the child within 30 s")
            answer = conn.recv()
        if answer != 42:
            sys.exit(f"expected 42 from the child, got {answer!r}")
        if child.wait(timeout=30) != 0:
            sys.exit(f"child exited with {child.returncode}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
print("shoal-wire alone: Listener/Client exchange between two processes ok")
