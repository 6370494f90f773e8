"""Large buffers between processes of one host through shared memory (``/dev/shm``).

Theory of operation
-------------------
zmq copies a message at least twice between two local processes and reaches about
1.3 GB/s here, where memcpy runs at 8 GB/s and more. A buffer of ``threshold`` bytes or
more can instead be copied once into a *segment*, a file in ``/dev/shm``, while the
message carries only its handle; the receiver maps the same pages.

What makes this fast is not having the kernel allocate fresh pages for every transfer
(on this machine a new 512 MiB segment costs 0.3 s of page faults, slower than zmq).
So segments are **reused, host-wide**, with the file system as the free list:

* A segment in use is named ``shoal-u-<pid>-<token>``: ``pid`` is the process that holds
  it now. A free one is ``shoal-f-<size>-<token>``.
* **Sending** claims a free segment of a fitting size by renaming it to its own in-use
  name (``rename`` is atomic: of two claimants one wins), or creates one; copies the
  buffer in; and sends the handle ``pid:token:size:length``.
* **Receiving** claims the segment by renaming it to its own in-use name, maps it, and
  hands out a memoryview of it. When the last object using that memoryview is freed, the
  segment is renamed free again, for any process on the host to reuse; or unlinked when
  the free segments already hold ``max_free`` bytes.
* A sender keeps its mappings of the segments it sent (up to ``max_free`` bytes, least
  recently used first out), and claims those first, so a segment that comes back free
  is not mapped again (a fresh mapping's page tables cost about as much as the copy). A
  receiver maps lazily, and unmaps a segment when it releases it unless it wrote that
  segment itself before: a freed array's memory leaves the process that used it (the
  pool keeps the pages for the next transfer). A mapping kept of a segment that is gone
  is dropped at the next claim, so that it does not keep the pages alive.
* Copies into a segment are shared among threads (:func:`copy_buffer`).
* **No copy at all** when the buffer already lies in a segment this process holds (an
  array it received, or made on :meth:`SharedMemory.allocate`): the sender remaps its
  own mapping of the segment copy-on-write in place (same address, same bytes), links
  the file under a new name for the receiver, and sends ``pid:token:size:length:offset:c``;
  the receiver maps it copy-on-write too. The file is frozen from then on: each side's
  writes go to its own pages. The same buffer is shared again later only if the kernel's
  pagemap shows that this process wrote none of its pages since; otherwise it is copied.
  A segment with several names goes back to the pool when its last name is given up.
* A process that dies holding segments leaves ``shoal-u-<pid>-*`` files behind:
  :func:`sweep` removes those of dead processes (a hub runs it when it starts and when it
  stops), and every process removes its own when it exits.

The receiver gets its own pages: writable, and nobody else's writes reach them.
Segments are files of this user, mode 0600: shared memory is trusted like the user's
other files, so the handle is signed with the message and the contents are not hashed
(which is also what lets this path go faster than the signed zmq frames).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import mmap
import os
import re
import socket
import threading
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Buffer as BufferProtocol

__all__ = [
    "SharedHandle",
    "copy_buffer",
    "SharedMemory",
    "default_shared_memory",
    "shared_memory_enabled",
    "sweep",
    "this_host",
]

SHM_DIR = "/dev/shm"  # noqa: S108 - the host's shared memory, files made 0600
NAMESPACE = "shoal"


def _patterns(namespace: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The names of segments in use, and of free ones, in ``namespace``."""
    ns = re.escape(namespace)
    return (
        re.compile(rf"{ns}-u-(\d+)-([0-9a-f]{{32}})$"),
        re.compile(rf"{ns}-f-(\d+)-([0-9a-f]{{32}})$"),
    )


_PAGE = mmap.PAGESIZE
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_BACKGROUND_BYTES = 16 << 20  # a mapping this large is unmapped by a thread
# A pagemap entry's top byte: 0x80 present, 0x40 swapped, 0x20 a file page. A page of a
# copy-on-write mapping that is present but not the file's, or swapped, was written.
_WRITTEN = bytes(int(b & 0x40 != 0 or (b & 0xA0) == 0x80) for b in range(256))
_MAP_FIXED = 0x10  # Linux's value (mmap does not export it)
_MADV_POPULATE_READ = 22  # Linux 5.14+: fills page tables (writable ones, on a shared map)
try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
    _madvise = _libc.madvise
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _libc_mmap = _libc.mmap
    _libc_mmap.restype = ctypes.c_void_p
    _libc_mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
except (OSError, AttributeError):  # no way to remap here: held segments are copied too
    _libc_mmap = _madvise = None


@dataclass
class _Held:
    """A segment this process uses now, with its mapping."""

    mm: mmap.mmap
    base: int  # the address of its first byte here
    name: str  # its file: this process's name for it
    size: int
    private: bool  # mapped copy-on-write: the file is frozen, these pages may differ


_CHUNK_BYTES = 4 << 20  # the least a copy thread is given
_COPY_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def this_host() -> str:
    """The name of this host as shoal sees it: ``SHOAL_HOST`` if set, else the hostname.

    Processes that say the same name share ``/dev/shm``; between two names, large buffers
    travel as zmq frames. (The variable lets tests, or containers with their own
    ``/dev/shm``, say otherwise.)
    """
    return os.environ.get("SHOAL_HOST") or socket.gethostname()


def shared_memory_enabled() -> bool:
    """Whether to send large buffers through shared memory: this host has a writable
    ``/dev/shm`` and the environment does not say ``SHOAL_SHM=0``."""
    if os.environ.get("SHOAL_SHM", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


class SharedMemory:
    """One process's side of the host-wide segment pool (see the module docstring).

    Parameters
    ----------
    threshold : int
        Buffers of at least this many bytes travel through shared memory.
    max_free : int
        Bytes of free segments kept for reuse (host-wide, as far as this process sees),
        and of mappings this process keeps.
    namespace : str
        The prefix of segment names: processes share segments within a namespace only.
    """

    def __init__(
        self, threshold: int = 1 << 20, max_free: int = 2 << 30, namespace: str = NAMESPACE
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1 byte, got {threshold}")
        if not re.fullmatch(r"[A-Za-z0-9_]+", namespace):
            raise ValueError(f"namespace must be letters, digits and _, got {namespace!r}")
        self.namespace = namespace
        self._used_re, self._free_re = _patterns(namespace)
        self.threshold = threshold
        self.max_free = max_free
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()  # token -> mapping, LRU
        self._mapped = 0
        self._held: dict[str, _Held] = {}  # token -> a segment in use here
        self.sent = 0  # statistics: segments sent, received, created
        self.received = 0
        self.created = 0
        self.shared = 0  # segments sent without a copy (their pages shared copy-on-write)

    # -- sending ------------------------------------------------------------------------
    def export(self, buf: BufferProtocol) -> bytes:
        """A handle to ``buf``'s bytes in a segment for one receiver.

        ``buf`` is copied once into a segment, unless it lies in a segment this process
        uses already (an array received, or made on :meth:`allocate`): then no byte is
        copied. Both sides map that segment copy-on-write from then on, and each one's
        writes stay its own.
        """
        view = memoryview(buf).cast("B")
        handle = self._share_held(view)
        if handle is not None:
            return handle
        return self._copy_out(view)

    def _copy_out(self, view: memoryview) -> bytes:
        length = view.nbytes
        token, size = self._claim(length)
        # A segment new to this process: the copy threads fill its page tables, each
        # its own part, faster than MAP_POPULATE does in one thread.
        cold = token not in self._maps and _madvise is not None
        mm = self._map(token, size, self._used(self._pid, token), populate=not cold)
        copy_buffer(memoryview(mm)[:length], view, populate=cold)
        self.sent += 1
        return f"{self._pid}:{token}:{size}:{length}".encode()

    def allocate(self, nbytes: int) -> memoryview:
        """A writable buffer of ``nbytes`` on the pool's pages, for this process.

        Large allocations are slow here because the kernel faults in fresh pages; a
        segment from the pool has them already. The segment goes back to the pool when
        the last object using the buffer is freed.
        """
        if nbytes < 1:
            raise ValueError(f"nbytes must be at least 1, got {nbytes}")
        token, size = self._claim(nbytes)
        name = self._used(self._pid, token)
        mm = self._map(token, size, name)
        holder = (ctypes.c_char * nbytes).from_buffer(mm)
        self._hold(token, _Held(mm, ctypes.addressof(holder), name, size, private=False))
        weakref.finalize(holder, self._release, token, size, True)
        return memoryview(holder).cast("B")

    def share(self, buf: BufferProtocol, readers: int) -> SharedHandle:
        """Copy ``buf`` once into a segment for ``readers`` receivers (a broadcast).

        Each receiver maps the same pages copy-on-write: it may write to its array, and
        only the pages it writes are copied. The last receiver to let go of it returns
        the segment to the pool.
        """
        if readers < 1:
            raise ValueError(f"readers must be at least 1, got {readers}")
        handle = self._copy_out(memoryview(buf).cast("B"))
        return SharedHandle(handle + f":{readers}".encode())

    def _share_held(self, view: memoryview) -> bytes | None:
        """A handle sharing ``view``'s pages, if they lie in a segment held here.

        The first time, this process's mapping of the segment becomes copy-on-write
        (remapped in place: same address, same bytes), so that the file stays as it is
        now whatever either side writes later. Later, the pages are shared again only if
        this process has not written them since (the kernel's pagemap says).
        """
        if view.readonly or _libc_mmap is None or not self._held:
            return None
        n = view.nbytes
        at = ctypes.addressof(ctypes.c_char.from_buffer(view))
        with self._lock:
            found = [
                (t, h) for t, h in self._held.items() if h.base <= at and at + n <= h.base + h.size
            ]
            if not found:
                return None
            token, held = found[0]
            if held.private:
                if _written(at, n):
                    return None  # these pages are no longer the file's: copy them
            elif not self._make_private(token, held):
                return None
        transit = uuid.uuid4().hex
        os.link(held.name, self._used(self._pid, transit))  # the receiver renames it
        self.sent += 1
        self.shared += 1
        return f"{self._pid}:{transit}:{held.size}:{n}:{at - held.base}:c".encode()

    def _make_private(self, token: str, held: _Held) -> bool:
        """Remap a held segment copy-on-write where it is (under ``self._lock``)."""
        fd = os.open(held.name, os.O_RDONLY)
        try:
            prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | _MAP_FIXED
            got = _libc_mmap(held.base, held.size, prot, flags, fd, 0)
        finally:
            os.close(fd)
        if got != held.base:
            return False
        held.private = True
        if self._maps.pop(token, None) is not None:  # never reused for writing now
            self._mapped -= held.size
        return True

    def _hold(self, token: str, held: _Held) -> None:
        with self._lock:
            self._held[token] = held

    def _claim(self, length: int) -> tuple[str, int]:
        """A segment of at least ``length`` bytes, now named as this process's."""
        want = -(-length // _PAGE) * _PAGE
        with contextlib.suppress(OSError):
            candidates = []
            names = os.listdir(SHM_DIR)
            self._forget_unlinked({name[-32:] for name in names})
            for name in names:
                m = self._free_re.match(name)
                if m and want <= int(m.group(1)) <= 2 * want:
                    candidates.append((int(m.group(1)), m.group(2), name))
            # Segments this process has mapped first: their page tables are ready.
            candidates.sort(key=lambda c: (c[1] not in self._maps, c[0]))
            for size, token, name in candidates:
                try:
                    os.rename(os.path.join(SHM_DIR, name), self._used(self._pid, token))
                except OSError:
                    continue  # another process claimed it first
                return token, size
        token = uuid.uuid4().hex
        fd = os.open(self._used(self._pid, token), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, want)
        finally:
            os.close(fd)
        self.created += 1
        return token, want

    # -- receiving ----------------------------------------------------------------------
    def open(self, handle: bytes | memoryview) -> memoryview:
        """Take over the segment named by ``handle``; a writable view of its bytes.

        The segment goes back to the pool when the last object holding the view (or an
        array made on it) is freed.

        Raises
        ------
        ValueError
            ``handle`` is not a segment handle.
        FileNotFoundError
            The segment is gone (its sender died and it was swept, or it was taken).
        """
        try:
            pid_s, token, size_s, length_s, *more = bytes(handle).decode("ascii").split(":")
            pid, size, length = int(pid_s), int(size_s), int(length_s)
            cow = more[1:] == ["c"]  # pages shared copy-on-write, at an offset
            offset = int(more[0]) if cow else 0
            readers = int(more[0]) if more and not cow else 0
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"not a shared memory handle: {bytes(handle)[:80]!r}") from exc
        if not re.fullmatch(r"[0-9a-f]{32}", token) or not 0 <= offset <= offset + length <= size:
            raise ValueError(f"not a shared memory handle: {bytes(handle)[:80]!r}")
        if readers:
            return self._open_shared(pid, token, size, length, readers)
        mine = self._used(self._pid, token)
        source = self._used(pid, token)
        if source != mine or not os.path.exists(mine):
            try:
                os.rename(source, mine)
            except FileNotFoundError:
                # Taken by a receiver that died since (a task retried elsewhere after its
                # engine died): its pages still hold the message, take them over.
                os.rename(self._dead_holder(token, pid), mine)
        if cow:
            mm = _map_private(mine, size)
        else:
            warm = token in self._maps  # this process sent it before: keep its mapping
            mm = self._map(token, size, mine, populate=False)
        holder = (ctypes.c_char * length).from_buffer(mm, offset)
        base = ctypes.addressof(holder) - offset
        self._hold(token, _Held(mm, base, mine, size, private=cow))
        weakref.finalize(holder, self._release, token, size, not cow and warm)
        self.received += 1
        return memoryview(holder).cast("B")

    def discard(self, handle: bytes | memoryview) -> bool:
        """Give back the segment of a handle whose message will never be opened (its
        receiver is gone); whether there was one to give back. Any process may do it
        (a hub for a reply it cannot deliver). A broadcast's segment is left alone: its
        other receivers may still open it."""
        try:
            pid_s, token, size_s, _, *more = bytes(handle).decode("ascii").split(":")
            name, size = self._used(int(pid_s), token), int(size_s)
        except (UnicodeDecodeError, ValueError):
            return False
        if (more and more[-1] != "c") or not re.fullmatch(r"[0-9a-f]{32}", token):
            return False
        if not os.path.exists(name):
            return False
        self._let_go(name, token, size)
        return True

    def _open_shared(
        self, pid: int, token: str, size: int, length: int, readers: int
    ) -> memoryview:
        """A broadcast segment: a link of this process's own (so a sweep finds it if this
        process dies), mapped copy-on-write; the last of ``readers`` removes the
        sender's name."""
        original = self._used(pid, token)
        mine = self._used(self._pid, uuid.uuid4().hex)
        os.link(original, mine)  # one name per receiver: each lets go of its own
        with contextlib.suppress(OSError):
            if os.stat(mine).st_nlink >= readers + 1:
                os.unlink(original)
        holder = (ctypes.c_char * length).from_buffer(_map_private(mine, size))
        weakref.finalize(holder, self._let_go, mine, token, size)
        self.received += 1
        return memoryview(holder).cast("B")

    def _let_go(self, name: str, token: str, size: int) -> None:
        """Give up this process's name for a segment: the last name left goes back to the
        pool (under ``token``: for a broadcast the segment's own, so that its sender's
        mapping still fits), or is unlinked past ``max_free``."""
        with contextlib.suppress(OSError):
            if os.stat(name).st_nlink == 1 and self._free_bytes() + size <= self.max_free:
                os.rename(name, self._free(size, token))
            else:
                os.unlink(name)

    def _dead_holder(self, token: str, pid: int) -> str:
        for name in os.listdir(SHM_DIR):
            m = self._used_re.match(name)
            if m and m.group(2) == token and not _alive(int(m.group(1))):
                return os.path.join(SHM_DIR, name)
        raise FileNotFoundError(f"segment {token} sent by process {pid} is gone")

    def _release(self, token: str, size: int, keep_mapping: bool = False) -> None:
        """The segment's last user is gone: free it for reuse, or unlink it.

        A receiver unmaps it, so its memory leaves the process (the pool keeps it). A
        process that wrote the segment itself keeps its mapping with its sent ones.

        This runs when an array is freed, which may happen anywhere - even inside this
        object's own locked sections (a garbage collection there). So it takes the lock
        only if it is free at once; otherwise a thread does the work when it is.
        """
        if not self._lock.acquire(blocking=False):
            _later.submit(self._release_locked, token, size, keep_mapping, self._lock)
            return
        try:
            self._release_locked(token, size, keep_mapping)
        finally:
            self._lock.release()

    def _release_locked(self, token: str, size: int, keep_mapping: bool) -> None:
        held = self._held.pop(token, None)
        if held is not None and held.private:  # not in the cache: its pages may differ
            _close_later(held.mm)
        elif not keep_mapping:
            self._unmap_locked(token)
        self._let_go(self._used(os.getpid(), token), token, size)  # others may share it

    # -- bookkeeping --------------------------------------------------------------------
    def _used(self, pid: int, token: str) -> str:
        return os.path.join(SHM_DIR, f"{self.namespace}-u-{pid}-{token}")

    def _free(self, size: int, token: str) -> str:
        return os.path.join(SHM_DIR, f"{self.namespace}-f-{size}-{token}")

    def _map(self, token: str, size: int, path: str, *, populate: bool = True) -> mmap.mmap:
        """This process's mapping of a segment, reused while cached.

        A fresh mapping's page tables cost about as much as a copy (40 ms for 512 MiB
        here). The writer of a segment has them filled in one call (``MAP_POPULATE``: a
        fault per page written costs three times that). A receiver maps lazily
        (``populate=False``): it pays for the pages it reads, when it reads them (reads
        fault in 16 pages at a time, and leave them writable). Filling them in a thread
        instead would stall the receiver's own allocations on the kernel's map lock.
        """
        with self._lock:
            mm = self._maps.get(token)
            if mm is not None:
                self._maps.move_to_end(token)
                return mm
        fd = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | (_POPULATE if populate else 0))
        finally:
            os.close(fd)
        with self._lock:
            self._maps[token] = mm
            self._mapped += size
            while self._mapped > self.max_free and len(self._maps) > 1:
                _, old_mm = self._maps.popitem(last=False)
                self._mapped -= len(old_mm)
                _close_later(old_mm)
        return mm

    def _forget_unlinked(self, present: set[str]) -> None:
        """Unmap cached segments whose files are gone: a mapping would keep their pages."""
        with self._lock:
            gone = [token for token in self._maps if token not in present]
        for token in gone:
            self._unmap(token)

    def _unmap(self, token: str) -> None:
        with self._lock:
            self._unmap_locked(token)

    def _unmap_locked(self, token: str) -> None:
        mm = self._maps.pop(token, None)
        if mm is not None:
            self._mapped -= len(mm)
            _close_later(mm)

    def _free_bytes(self) -> int:
        total = 0
        with contextlib.suppress(OSError):
            for name in os.listdir(SHM_DIR):
                m = self._free_re.match(name)
                if m:
                    total += int(m.group(1))
        return total

    def close(self) -> None:
        """Remove the segments this process holds and drop its mappings."""
        sweep(pids=[self._pid], namespace=self.namespace)
        with self._lock:
            maps, self._maps = self._maps, OrderedDict()
            self._mapped = 0
        for mm in maps.values():
            _close_later(mm)


class SharedHandle(bytes):
    """A frame that already is a shared memory handle (made by :meth:`SharedMemory.share`):
    a codec sends it as it is."""


def copy_buffer(target: object, source: object, *, populate: bool = False) -> None:
    """Copy the bytes of ``source`` into ``target`` (contiguous buffers of one size).

    Both are objects with the buffer protocol (``target`` writable), numpy arrays
    included; anything else raises ``TypeError``. They are typed ``object`` because
    numpy's stubs declare ``ndarray.__buffer__`` only for Python 3.12 and later.

    A large copy is shared among up to 4 threads, one per core: one core alone reaches
    about half the memory bandwidth here. ctypes' memmove lets go of the GIL.
    ``populate``: ``target`` is a fresh mapping; each thread fills in the page tables
    of its part first (faulting them in one write at a time costs three times more).
    """
    # Typed object (see the docstring): memoryview() checks the buffer protocol here.
    dst = memoryview(target).cast("B")  # type: ignore[arg-type]
    src = memoryview(source).cast("B")  # type: ignore[arg-type]
    n = dst.nbytes
    if src.nbytes != n:
        raise ValueError(f"cannot copy {src.nbytes} bytes into a buffer of {n}")
    if n == 0:
        return
    dst_at = ctypes.addressof(ctypes.c_char.from_buffer(dst))
    populate = populate and _madvise is not None
    parts = min(_COPY_THREADS, n // _CHUNK_BYTES)
    if parts < 2 or src.readonly:  # ctypes cannot address a read-only buffer
        if populate:
            _madvise(dst_at - dst_at % _PAGE, n + dst_at % _PAGE, _MADV_POPULATE_READ)
        dst[:] = src
        return
    src_at = ctypes.addressof(ctypes.c_char.from_buffer(src))
    step = -(-n // parts // _PAGE) * _PAGE

    def part(at: int) -> None:
        size = min(step, n - at)
        if populate:  # from the page holding its first byte
            start = dst_at + at
            _madvise(start - start % _PAGE, size + start % _PAGE, _MADV_POPULATE_READ)
        ctypes.memmove(dst_at + at, src_at + at, size)

    threads = [threading.Thread(target=part, args=(a,), daemon=True) for a in range(step, n, step)]
    for t in threads:
        t.start()
    part(0)
    for t in threads:
        t.join()


def _map_private(path: str, size: int) -> mmap.mmap:
    """A copy-on-write mapping of a segment (no MAP_POPULATE: that would copy every page)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _written(at: int, n: int) -> bool:
    """Whether a page of ``[at, at + n)`` in a copy-on-write mapping was written here."""
    first, last = at // _PAGE, (at + n - 1) // _PAGE
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            f.seek(first * 8)
            entries = f.read((last - first + 1) * 8)
    except OSError:
        return True  # cannot tell: take it as written
    return b"\x01" in entries[7::8].translate(_WRITTEN)


class _Later:
    """One thread that runs, in order, what could not run where it was asked for (see
    :meth:`SharedMemory._release`): each call under the lock it names."""

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def submit(self, fn: Any, *args: Any) -> None:
        self._queue.append((fn, *args))  # deque.append: safe from any context
        if self._thread is None or self._pid != os.getpid():  # (a forked child: anew)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="shoal-shm", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._queue:
                fn, *args, lock = self._queue.popleft()
                with lock, contextlib.suppress(Exception):
                    fn(*args)


_later = _Later()


def _close_later(mm: mmap.mmap) -> None:
    """Unmap, or leave it to the garbage collector while views of it are alive.

    Unmapping a large segment takes a while (12 ms for 512 MiB here), so a thread does it
    (``mmap.close`` lets go of the GIL) and the caller goes on.
    """
    if len(mm) >= _BACKGROUND_BYTES:
        threading.Thread(target=_close_quietly, args=(mm,), daemon=True).start()
    else:
        _close_quietly(mm)


def _close_quietly(mm: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):
        mm.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(pids: list[int] | None = None, *, free: bool = False, namespace: str = NAMESPACE) -> int:
    """Remove segments left by dead processes; return how many were removed.

    ``pids``: remove those processes' segments whether they live or not. ``free``: also
    remove the free segments kept for reuse (nobody holds them).
    """
    used_re, free_re = _patterns(namespace)
    removed = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(SHM_DIR):
            m = used_re.match(name)
            stale = m is not None and (
                int(m.group(1)) in pids if pids is not None else not _alive(int(m.group(1)))
            )
            if stale or (free and free_re.match(name)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(SHM_DIR, name))
                    removed += 1
    return removed


_default: SharedMemory | None = None
_default_lock = threading.Lock()


def default_shared_memory() -> SharedMemory:
    """This process's pool, created on first use; its segments go when the process exits."""
    global _default  # noqa: PLW0603 - one pool per process
    with _default_lock:
        if _default is None or _default._pid != os.getpid():  # a forked child gets its own
            _default = SharedMemory()
            atexit.register(_default.close)
        return _default
