"""A receiver in a process of its own: ``python identity_peer.py IN OUT``.

IN holds a plain pickle of a list of messages, each a list of frames (bytes) made by
``Serializer.dumps`` of ``{"run": f, "args": (...)}``. The messages are loaded one by
one, in order, and each ``f(memory, *args)`` is called, ``memory`` being a dict that
lives as long as this process (what one message leaves for the next). OUT receives the
frames of ``Serializer.dumps`` of the list of what the calls returned.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from shoal.wire import Serializer


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    serializer = Serializer()
    memory: dict[str, object] = {}
    results = []
    for frames in pickle.loads(source.read_bytes()):
        message = serializer.loads(frames)
        assert isinstance(message, dict), message
        results.append(message["run"](memory, *message["args"]))
    reply = [bytes(memoryview(frame)) for frame in serializer.dumps(results)]
    target.write_bytes(pickle.dumps(reply))


if __name__ == "__main__":
    main()
