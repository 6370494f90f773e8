"""Shared memory transport: segments, their reuse and cleanup, through the Codec too."""

from __future__ import annotations

import gc
import mmap
import os
import random
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal.wire import (
    AuthenticationError,
    Codec,
    MalformedMessageError,
    Message,
    SharedMemory,
    SharedMemoryLost,
    copy_buffer,
    generate_key,
    new_header,
    shared_memory_enabled,
    sweep_shared_memory,
)
from shoal.wire._shm import SHM_DIR

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")


NS = f"shoaltest{uuid.uuid4().hex[:8]}"  # out of the way of clusters sweeping "shoal-*"


def _shm(**kw: Any) -> SharedMemory:
    return SharedMemory(namespace=NS, **kw)


@pytest.fixture(autouse=True, scope="module")
def _clean_namespace() -> Iterator[None]:
    yield
    sweep_shared_memory(free=True, namespace=NS)
    for name in os.listdir(SHM_DIR):  # what living processes of this module still hold
        if name.startswith(f"{NS}-"):
            os.unlink(os.path.join(SHM_DIR, name))


def _size() -> int:
    """An unusual size, so that parallel tests do not claim each other's free segments."""
    return (1 << 20) + random.randrange(1, 256) * 4096 + 123


def _segments(pattern: str) -> list[str]:
    pattern = pattern.replace("shoal-", f"{NS}-", 1)
    return [n for n in os.listdir(SHM_DIR) if n.startswith(pattern)]


def test_a_buffer_travels_through_a_segment_that_is_then_reused() -> None:
    shm = _shm(threshold=1024)
    data = np.random.default_rng(1).integers(0, 255, _size(), dtype=np.uint8)
    handle = shm.export(data)
    assert len(handle) < 100
    pid, token, size, length = handle.decode().split(":")
    assert int(pid) == os.getpid()
    assert int(length) == data.nbytes
    view = shm.open(handle)
    assert not view.readonly
    received = np.frombuffer(view, dtype=np.uint8)
    assert np.array_equal(received, data)
    received[0] ^= 0xFF  # the receiver's own pages: writable
    assert _segments(f"shoal-u-{os.getpid()}-{token}")
    del view, received
    gc.collect()
    assert _segments(f"shoal-f-{size}-{token}")  # free for the next transfer
    created = shm.created
    again = shm.export(data[:-50])  # fits the free segment: claimed, not created
    assert again.split(b":")[1].decode() == token
    assert shm.created == created
    shm.close()
    assert not _segments(f"shoal-u-{os.getpid()}-{token}")


@pytest.mark.parametrize("nbytes", [0, 1000, (24 << 20) + 4099])
def test_copy_buffer_copies_every_byte(nbytes: int) -> None:
    """Large copies are split among threads: every byte lands, at its place."""
    source = np.random.default_rng(nbytes).integers(0, 255, nbytes, dtype=np.uint8)
    target = np.zeros(nbytes, dtype=np.uint8)
    copy_buffer(target, source)
    assert np.array_equal(target, source)
    readonly = source.copy()
    readonly.flags.writeable = False  # ctypes cannot address it: copied in one piece
    target[:] = 0
    copy_buffer(target, readonly)
    assert np.array_equal(target, source)
    if nbytes:  # into a fresh mapping, whose page tables the copy fills in first
        fresh = mmap.mmap(-1, nbytes)
        copy_buffer(memoryview(fresh)[100:], source[100:], populate=True)
        assert np.array_equal(np.frombuffer(fresh, np.uint8)[100:], source[100:])
        fresh.close()


def test_copy_buffer_refuses_buffers_of_other_sizes() -> None:
    with pytest.raises(ValueError, match="cannot copy 10 bytes into a buffer of 9"):
        copy_buffer(bytearray(9), bytes(10))


def test_a_mapping_kept_for_reuse_goes_when_its_segment_is_unlinked() -> None:
    """A sender keeps mappings of what it sent; one of a segment removed meanwhile would
    keep its pages alive, so the next claim lets go of it."""
    shm = _shm(threshold=1024)
    handle = shm.export(b"x" * _size())
    token = handle.split(b":")[1].decode()
    assert token in shm._maps
    (name,) = _segments(f"shoal-u-{os.getpid()}-{token}")
    os.unlink(os.path.join(SHM_DIR, name))  # as a sweep or a full pool would
    shm.export(b"y" * _size())
    assert token not in shm._maps
    shm.close()


def test_an_array_freed_while_the_pool_is_busy_is_released_after() -> None:
    """Freeing an array runs the pool's release wherever that happens, even inside the
    pool's own locked sections (a garbage collection there): it must not wait for the
    lock its own thread holds, and the segment still goes back once the lock is free."""
    shm = _shm(threshold=1024)
    buf = shm.allocate(_size())
    (token,) = shm._held
    with shm._lock:
        del buf
        gc.collect()  # the release runs now, in this thread, which holds the lock
        assert token in shm._held
    deadline = time.monotonic() + 10
    while token in shm._held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert token not in shm._held
    assert not _segments(f"shoal-u-{os.getpid()}-{token}")
    shm.close()


def test_without_room_in_the_pool_a_released_segment_is_unlinked() -> None:
    shm = _shm(threshold=1024, max_free=0)
    handle = shm.export(b"x" * _size())
    token = handle.split(b":")[1].decode()
    view = shm.open(handle)
    assert bytes(view[:3]) == b"xxx"
    del view
    gc.collect()
    assert not [n for n in os.listdir(SHM_DIR) if token in n]


def test_another_process_receives_the_segment(tmp_path: Path) -> None:
    shm = _shm(threshold=1024)
    data = np.arange(_size() // 8, dtype=np.int64)
    handle = shm.export(data)
    token = handle.split(b":")[1].decode()
    script = tmp_path / "receive.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import gc, os, sys
            import numpy as np
            from shoal.wire import SharedMemory
            view = SharedMemory(namespace={NS!r}).open({handle!r})
            a = np.frombuffer(view, dtype=np.int64)
            print(int(a.sum()), os.path.exists("{SHM_DIR}/{NS}-u-%d-{token}" % os.getpid()))
            del a, view
            gc.collect()
            print(any("{token}" in n and n.startswith("{NS}-f-") for n in os.listdir("{SHM_DIR}")))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out == [str(int(data.sum())), "True", "True"]
    assert not _segments(f"shoal-u-{os.getpid()}-{token}")  # it moved to the receiver
    shm.close()


def test_a_held_segment_is_sent_without_a_copy_and_each_side_keeps_its_writes() -> None:
    """Bytes already in a segment this process uses are shared, not copied: from then on
    both sides map it copy-on-write, so neither sees what the other writes."""
    shm = _shm(threshold=1024)
    n = _size()
    mine = np.frombuffer(shm.allocate(n), dtype=np.uint8)
    mine[:] = np.arange(n) % 251
    expected = mine.copy()
    created = shm.created
    handle = shm.export(mine[100:])  # a view inside the segment: sent at its offset
    assert handle.endswith(b":c")
    assert (shm.shared, shm.created) == (1, created)
    theirs = np.frombuffer(shm.open(handle), dtype=np.uint8)
    assert np.array_equal(theirs, expected[100:])
    mine[100:200] = 7  # the sender's writes stay the sender's
    theirs[-50:] = 9  # and the receiver's the receiver's
    assert np.array_equal(theirs[:100], expected[100:200])
    assert np.array_equal(mine[-50:], expected[-50:])
    again = shm.export(mine[5000:])  # pages not written since: shared again
    assert again.endswith(b":c")
    assert shm.shared == 2
    copied = shm.export(mine[:1000])  # these were written: copied
    assert not copied.endswith(b":c")
    assert shm.shared == 2
    third = np.frombuffer(shm.open(again), dtype=np.uint8)
    assert np.array_equal(third, expected[5000:])
    np.frombuffer(shm.open(copied), dtype=np.uint8)  # taken, then let go
    token = handle.split(b":")[1].decode()
    del mine, theirs, third
    gc.collect()
    # Every name is given up, and the segment went back to the pool once.
    assert not [x for x in os.listdir(SHM_DIR) if x.startswith(f"{NS}-u-{os.getpid()}-")]
    assert not [x for x in os.listdir(SHM_DIR) if token in x]
    shm.close()


def test_another_process_shares_a_held_segment(tmp_path: Path) -> None:
    shm = _shm(threshold=1024)
    mine = np.frombuffer(shm.allocate(_size()), dtype=np.uint8)
    mine[:] = 3
    handle = shm.export(mine)
    assert handle.endswith(b":c")
    script = tmp_path / "receive.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import gc
            import numpy as np
            from shoal.wire import SharedMemory
            a = np.frombuffer(SharedMemory(namespace={NS!r}).open({handle!r}), dtype=np.uint8)
            total = int(a.sum())
            a[:] = 5  # its own copy-on-write pages
            print(total, int(a.sum()))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out == [str(3 * mine.size), str(5 * mine.size)]
    assert int(mine.sum()) == 3 * mine.size
    del mine
    gc.collect()
    assert not [x for x in os.listdir(SHM_DIR) if x.startswith(f"{NS}-u-{os.getpid()}-")]
    shm.close()


def test_the_codec_sends_large_buffers_through_shared_memory() -> None:
    key = generate_key()
    sender = Codec(key, shm=_shm(threshold=1 << 20))
    receiver = Codec(key, shm=_shm())
    array = np.random.default_rng(2).random(_size() // 8)
    small = np.arange(10)
    frames = sender.encode(
        Message(new_header("push_request", "s", "u"), None, {}, {"a": array, "b": small})
    )
    assert sum(memoryview(f).nbytes for f in frames) < 10_000  # handles, not the data
    msg = receiver.decode(frames)
    assert np.array_equal(msg.content["a"], array)
    assert np.array_equal(msg.content["b"], small)
    msg.content["a"][0] = -1.0  # writable, its own memory
    assert array[0] != -1.0


def test_a_message_that_will_never_be_delivered_gives_its_segments_back() -> None:
    """A reply whose client is gone: the sender discards its frames, and the segments
    go back to the pool (a shared one only loses the name made for the receiver)."""
    shm = _shm(threshold=1 << 20)
    codec = Codec(generate_key(), shm=shm)
    held = np.frombuffer(shm.allocate(_size()), dtype=np.uint8)
    held[:] = 1
    content = {"copied": np.ones(_size() // 8), "shared": held}
    frames = codec.encode(Message(new_header("r", "s", "u"), None, {}, content))
    assert shm.shared == 1
    mine = _segments(f"shoal-u-{os.getpid()}-")
    assert len(mine) == 3  # the held one, the copy, and the receiver's name for the shared
    assert codec.discard(frames) == 2
    assert len(_segments(f"shoal-u-{os.getpid()}-")) == 1  # the held one
    assert codec.discard(frames) == 0  # nothing left to give back
    assert held.sum() == held.size
    del held, content
    gc.collect()
    assert not _segments(f"shoal-u-{os.getpid()}-")
    shm.close()


def test_a_tampered_or_missing_segment_is_refused_cleanly() -> None:
    key = generate_key()
    sender = Codec(key, shm=_shm(threshold=1024))
    frames = sender.encode(
        Message(new_header("push_request", "s", "u"), None, {}, {"a": b"y" * _size()})
    )
    handle = bytes(frames[-1])
    forged = list(frames)
    forged[-1] = handle.replace(handle.split(b":")[1], uuid.uuid4().hex.encode())
    with pytest.raises(AuthenticationError):
        Codec(key).decode(forged)  # the handle is signed
    token = handle.split(b":")[1].decode()
    os.unlink(f"{SHM_DIR}/{NS}-u-{os.getpid()}-{token}")  # e.g. swept after a crash
    with pytest.raises(MalformedMessageError, match="shared memory"):
        Codec(key, shm=_shm()).decode(frames)


def test_sweep_removes_the_segments_of_dead_processes_only() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale = f"{SHM_DIR}/{NS}-u-{dead_pid}-{uuid.uuid4().hex}"
    alive = f"{SHM_DIR}/{NS}-u-{os.getpid()}-{uuid.uuid4().hex}"
    for path in (stale, alive):
        with open(path, "wb") as f:
            f.write(b"z")
    try:
        assert sweep_shared_memory(namespace=NS) == 1
        assert not os.path.exists(stale)
        assert os.path.exists(alive)
    finally:
        for path in (stale, alive):
            if os.path.exists(path):
                os.unlink(path)


def test_a_setting_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_SHM", "0")
    assert shared_memory_enabled() is False
    monkeypatch.setenv("SHOAL_SHM", "1")
    assert shared_memory_enabled() is True
    with pytest.raises(ValueError, match="threshold"):
        _shm(threshold=0)
    with pytest.raises(ValueError, match="namespace"):
        SharedMemory(namespace="../x")


def test_a_broadcast_segment_is_shared_copy_on_write(tmp_path: Path) -> None:
    shm = _shm(threshold=1024)
    data = np.arange(_size() // 8, dtype=np.int64)
    handle = shm.share(data, readers=2)
    token = bytes(handle).split(b":")[1].decode()
    script = tmp_path / "reader.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import gc, sys
            import numpy as np
            from shoal.wire import SharedMemory
            a = np.frombuffer(
                SharedMemory(namespace={NS!r}).open({bytes(handle)!r}), dtype=np.int64
            )
            a[0] = 12345  # copy on write: the other reader does not see it
            print(int(a[0]), int(a[1:].sum()), flush=True)
            sys.stdin.readline()  # hold the array until told to let go
            del a
            gc.collect()
            """
        )
    )
    readers = [
        subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    try:
        outs = [r.stdout.readline().split() for r in readers if r.stdout is not None]
        assert outs == [[b"12345", str(int(data[1:].sum())).encode()]] * 2
        assert not _segments(f"shoal-u-{os.getpid()}-{token}")  # the last reader took it
        for r in readers:
            assert r.stdin is not None
            r.stdin.write(b"\n")
            r.stdin.flush()
            assert r.wait(60) == 0
    finally:
        for r in readers:
            r.kill()
            r.wait()
            for f in (r.stdin, r.stdout):
                if f is not None:
                    f.close()
    assert any(token in n for n in _segments("shoal-f-"))  # back in the pool
    assert data[0] == 0  # the sender's array was copied, never written
    shm.close()


def test_a_segment_left_by_a_dead_receiver_can_be_taken_over(tmp_path: Path) -> None:
    """A task retried after its engine died: the handle still names the sender, but
    the dead engine had taken the segment. The next receiver takes it from there."""
    shm = _shm(threshold=1024)
    data = np.arange(_size() // 8, dtype=np.int64)
    handle = shm.export(data)
    token = handle.split(b":")[1].decode()
    script = tmp_path / "die.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os
            from shoal.wire import SharedMemory
            view = SharedMemory(namespace={NS!r}).open({handle!r})
            print(os.getpid(), flush=True)
            os._exit(0)  # dies holding it, as a SIGKILLed engine would
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    dead = int(out.stdout)
    assert _segments(f"shoal-u-{dead}-{token}")
    view = _shm().open(handle)
    assert np.array_equal(np.frombuffer(view, dtype=np.int64), data)
    assert not _segments(f"shoal-u-{dead}-{token}")


def test_a_lost_segment_names_its_message() -> None:
    key = generate_key()
    sender = Codec(key, shm=_shm(threshold=1024))
    header = new_header("push_request", "s", "u")
    frames = sender.encode(Message(header, None, {}, {"a": b"q" * _size()}, (), (b"id",)))
    token = bytes(frames[-1]).split(b":")[1].decode()
    os.unlink(f"{SHM_DIR}/{NS}-u-{os.getpid()}-{token}")
    with pytest.raises(SharedMemoryLost) as lost:
        Codec(key, shm=_shm()).decode(frames)
    assert lost.value.header.msg_id == header.msg_id  # the receiver can answer it
    assert lost.value.identities == (b"id",)
