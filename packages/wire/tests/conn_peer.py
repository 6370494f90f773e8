"""A process unrelated to the test: ``python conn_peer.py MODE ADDRESS``.

The authkey comes in the environment variable SHOAL_TEST_AUTHKEY (hex). ADDRESS is a zmq
url, or ``host:port`` for a ``(host, port)`` tuple. Modes:

* ``echo``: connect as a Client and send back every object until the listener closes.
* ``block``: connect, send "ready", then wait forever (the test kills the process).
"""

from __future__ import annotations

import os
import sys

from shoal.wire._connection import Address, Client


def main() -> None:
    mode, text = sys.argv[1], sys.argv[2]
    address: Address = text
    if "://" not in text:
        host, _, port = text.rpartition(":")
        address = (host, int(port))
    conn = Client(address, authkey=bytes.fromhex(os.environ["SHOAL_TEST_AUTHKEY"]))
    if mode == "echo":
        while True:
            try:
                obj = conn.recv()
            except EOFError:
                break
            conn.send(obj)
    else:
        conn.send("ready")
        conn.recv()
    conn.close()


if __name__ == "__main__":
    main()
