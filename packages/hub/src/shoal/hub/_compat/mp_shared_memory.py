"""``multiprocess.shared_memory`` for the cluster context: named segments of one host.

Theory of operation
-------------------
:class:`SharedMemory`, :class:`ShareableList` and :class:`SharedMemoryManager` keep the
standard library's API and semantics (``multiprocessing.shared_memory``): a segment has
a name; any process *of the same host* attaches to it by that name and sees the same
bytes; it lives until someone calls :meth:`SharedMemory.unlink`, whoever created it.

Segments are files in ``/dev/shm`` named as the caller chose, or ``psm_<hex>``, mode
0600: the same files ``shm_open`` makes, so ``multiprocessing.shared_memory`` or
``multiprocess.shared_memory`` attaches to a shoal segment by name and back.

Why not on shoal's segment pool (:class:`shoal.wire.SharedMemory`): the pool hands a
segment from one process to the next. Its files are *renamed* to the process that holds
them (``shoal-u-<pid>-...``), go back to a host-wide free list when the last view of
them is freed, and are removed when their holder exits or a hub sweeps. The standard
semantics need the opposite: a fixed name that several processes open at once, and a
lifetime set by ``unlink`` alone. So these segments sit beside the pool, in files the
pool's names and sweeps never match.

Passing one to a task: a :class:`SharedMemory` or :class:`ShareableList` pickles as its
name and its host (:func:`shoal.wire.this_host`). An engine of the same host attaches to
the segment by name; an engine of another host refuses it with
:class:`SharedMemoryHostError`, which names both hosts: shared memory is one host's by
nature, so data for other hosts travels as the data itself.

What differs from multiprocess, and why:

* No resource-tracker process. The process that *created* a segment unlinks it when it
  exits normally, if nobody did (multiprocess's tracker does the same, with a warning,
  and also after a creator was killed: here a killed creator leaves its segments). A
  process that only attached never unlinks it (on Python 3.11 multiprocess's tracker
  does, which breaks segments shared with longer-lived processes: an engine outlives
  its tasks).
* :class:`SharedMemoryManager` runs no server process: it lives in the process that made
  it and remembers the segments made through it, which :meth:`~SharedMemoryManager.shutdown`
  unlinks. So it takes no ``address``/``authkey``, and has no ``get_server``/``connect``.
  Misuse (starting twice, using it before ``start`` or after ``shutdown``) raises the
  standard library's ``ProcessError``, as shoal's managers do.
* :class:`ShareableList` refuses an item of a type it cannot store with a ``TypeError``
  naming the item (the standard library raises a bare ``KeyError``).
* ``buf`` of a closed segment raises ``ValueError`` naming it (the standard library's
  is ``None``, which fails later, far from the cause).
* Linux (and other systems with ``/dev/shm``) only, like the rest of shoal's shared memory.
"""

from __future__ import annotations

import atexit
import contextlib
import mmap
import multiprocessing.shared_memory as _std
import os
import secrets
import struct
import threading
from collections.abc import Iterable, Iterator
from multiprocessing import ProcessError
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from shoal.wire import this_host

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = [
    "ShareableList",
    "SharedMemory",
    "SharedMemoryHostError",
    "SharedMemoryManager",
]

_SHM_DIR: Final = "/dev/shm"  # noqa: S108 - the host's shared memory; files made 0600
_PREFIX: Final = "psm_"  # as multiprocess names its segments
_MODE: Final = 0o600
_T = TypeVar("_T", int, float, bool, str, bytes, None)  # as typeshed says of the stdlib's


class SharedMemoryHostError(OSError):
    """A shared memory segment reached a process of another host than its own.

    Raised when a :class:`SharedMemory` or :class:`ShareableList` is unpickled (passed to
    a task, or returned by one) on a host other than the one where its segment lives.
    Shared memory is one host's: send the data itself (``bytes(shm.buf)``, a list, an
    array) to engines of other hosts, or run the task on an engine of the segment's host.
    """

    def __init__(self, name: str, host: str, here: str) -> None:
        super().__init__(
            f"shared memory segment {name!r} lives on host {host!r}, and this process runs"
            f" on host {here!r}: shared memory is one host's; send the data itself to"
            f" engines of other hosts, or run the task on an engine of {host!r}"
        )
        self.name = name
        self.host = host
        self.here = here


# -- the segments this process created and nobody unlinked yet --------------------------
_created: set[str] = set()
_created_lock = threading.Lock()
_created_pid = os.getpid()


def _track(name: str) -> None:
    global _created_pid  # noqa: PLW0603 - one record per process
    with _created_lock:
        if _created_pid != os.getpid():  # a forked child: its parent's are not its own
            _created.clear()
            _created_pid = os.getpid()
        _created.add(name)


def _untrack(name: str) -> None:
    with _created_lock:
        _created.discard(name)


@atexit.register
def _unlink_leftovers() -> None:
    """What multiprocess's resource tracker does at exit: the segments this process made
    and nobody unlinked are unlinked (a process exits; its segments should not stay)."""
    if _created_pid != os.getpid():
        return
    with _created_lock:
        leftover = list(_created)
        _created.clear()
    for name in leftover:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(_SHM_DIR, name))


def _file_name(name: str) -> str:
    """The file in ``/dev/shm`` for a segment name (``shm_open``'s leading ``/`` dropped)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}: {name!r}")
    bare = name[1:] if name.startswith("/") else name
    if not bare or "/" in bare or bare in (".", "..") or "\0" in bare:
        raise ValueError(
            f"name must be a segment name without '/' (one leading '/' allowed), got {name!r}"
        )
    if len(bare.encode()) > 255:
        raise ValueError(f"name must be at most 255 bytes long, got {len(bare.encode())}")
    return bare


class SharedMemory:
    """A named block of shared memory of this host, as ``multiprocessing``'s.

    Parameters
    ----------
    name : str, optional
        The segment's name. ``None`` (with ``create=True``): a new unique name.
    create : bool
        Make a new segment (``FileExistsError`` if ``name`` is taken); otherwise attach
        to the existing one (``FileNotFoundError`` if there is none).
    size : int
        Bytes of a new segment. When attaching, the segment's own size is used.

    Shared memory belongs to one host: a ``SharedMemory`` passed to a task attaches by
    name on an engine of this host, and raises :class:`SharedMemoryHostError` on an
    engine of another host. The creating process unlinks the segment when it exits if
    nobody did; attaching processes never do.

    Examples
    --------
    >>> shm = SharedMemory(create=True, size=16)  # doctest: +SKIP
    >>> shm.buf[:5] = b"hello"                     # doctest: +SKIP
    >>> rc[0].apply_sync(lambda s: bytes(s.buf[:5]), shm)  # doctest: +SKIP
    b'hello'
    >>> shm.close(); shm.unlink()                  # doctest: +SKIP

    .. versionadded:: 0.6
    """

    _mmap: mmap.mmap | None = None
    _buf: memoryview | None = None

    def __init__(self, name: str | None = None, create: bool = False, size: int = 0) -> None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be an int, got {type(size).__name__}: {size!r}")
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create and size == 0:
            raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        self._host = this_host()
        bare = ""
        if name is None:
            while True:  # a fresh name; another process may take the same: try again
                bare = _PREFIX + secrets.token_hex(8)
                try:
                    fd = self._open(bare, create=True)
                except FileExistsError:
                    continue
                break
            self._name = bare
        else:
            bare = _file_name(name)
            fd = self._open(bare, create=create)
            self._name = name
        self._file = bare
        try:
            if create:
                os.ftruncate(fd, size)
            size = os.fstat(fd).st_size
            if size == 0:  # mmap cannot map nothing: say what is wrong, not mmap's words
                raise ValueError(f"shared memory segment {self._name!r} is empty")
            self._mmap = mmap.mmap(fd, size)
        except BaseException:
            if create:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(_SHM_DIR, bare))
            raise
        finally:
            os.close(fd)
        if create:
            _track(bare)
        self._size = size
        self._buf = memoryview(self._mmap)

    @staticmethod
    def _open(bare: str, *, create: bool) -> int:
        path = os.path.join(_SHM_DIR, bare)
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), _MODE)

    @property
    def name(self) -> str:
        """The segment's name, as other processes attach to it."""
        return self._name

    @property
    def size(self) -> int:
        """Its size in bytes."""
        return self._size

    @property
    def buf(self) -> memoryview:
        """A writable view of its bytes (``ValueError`` once closed)."""
        if self._buf is None:
            raise ValueError(f"shared memory segment {self._name!r} is closed in this process")
        return self._buf

    @property
    def host(self) -> str:
        """The host whose memory the segment is (:func:`shoal.wire.this_host`)."""
        return self._host

    def close(self) -> None:
        """Stop using the segment here; it stays for other processes (see :meth:`unlink`).

        ``BufferError`` while views of :attr:`buf` taken here are still in use.
        """
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def unlink(self) -> None:
        """Remove the segment's name from the host: once every process closed it, its
        memory is freed. Call it once, from one process (``FileNotFoundError`` after)."""
        os.unlink(os.path.join(_SHM_DIR, self._file))
        _untrack(self._file)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, BufferError, AttributeError):
            self.close()

    def __reduce__(self) -> tuple[object, ...]:
        return (_attach, (type(self), self._name, self._host))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r}, size={self._size})"


def _attach(cls: type[SharedMemory], name: str, host: str) -> SharedMemory:
    """Unpickling: attach to the segment by name, on its own host only."""
    here = this_host()
    if host != here:
        raise SharedMemoryHostError(name, host, here)
    return cls(name)


class ShareableList(_std.ShareableList[_T], Generic[_T]):
    """A fixed-length list of ``int``, ``float``, ``bool``, ``str``, ``bytes`` and ``None``
    in one :class:`SharedMemory` segment, as ``multiprocessing``'s (same layout: either
    attaches to the other's by name).

    Parameters
    ----------
    sequence : iterable, optional
        The items of a new list (a new segment, named ``name`` if given).
    name : str, optional
        Without ``sequence``: the name of an existing list's segment to attach to.

    Like :class:`SharedMemory`, a ShareableList passed to a task attaches by name on an
    engine of this host and raises :class:`SharedMemoryHostError` on another host.

    .. versionadded:: 0.6
    """

    shm: SharedMemory  # type: ignore[assignment]

    def __init__(self, sequence: Iterable[_T] | None = None, *, name: str | None = None) -> None:
        # The layout's helpers are the standard library's, which typeshed does not declare.
        me: Any = self
        if name is not None and sequence is None:
            self.shm = SharedMemory(name)
            self._list_len = len(self)  # the count at offset 0
            self._allocated_offsets = list(
                struct.unpack_from(me._format_size_metainfo, self.shm.buf, 8)
            )
            return
        items = list(sequence or ())
        formats = [self._format_of(i, item) for i, item in enumerate(items)]
        self._list_len = len(formats)
        offsets = [0]
        for fmt in formats:
            offsets.append(offsets[-1] + (int(fmt[:-1]) if fmt.endswith("s") else me._alignment))
        self._allocated_offsets = offsets
        codes = [me._extract_recreation_code(item) for item in items]
        size = struct.calcsize(
            "q"
            + me._format_size_metainfo
            + "".join(formats)
            + me._format_packing_metainfo
            + me._format_back_transform_codes
        )
        self.shm = SharedMemory(name, create=True, size=size)
        buf = self.shm.buf
        struct.pack_into("q" + me._format_size_metainfo, buf, 0, self._list_len, *offsets)
        values = [v.encode("utf8") if isinstance(v, str) else v for v in items]
        struct.pack_into("".join(formats), buf, me._offset_data_start, *values)
        struct.pack_into(
            me._format_packing_metainfo,
            buf,
            me._offset_packing_formats,
            *(f.encode("utf8") for f in formats),
        )
        struct.pack_into(
            me._format_back_transform_codes, buf, me._offset_back_transform_codes, *codes
        )

    def __iter__(self) -> Iterator[_T]:
        # The standard library's iterates through __getitem__; typeshed cannot see that.
        for i in range(len(self)):
            yield self[i]

    def _format_of(self, index: int, item: object) -> str:
        """The struct format of one item: 8 bytes, or a str/bytes padded to 8."""
        me: Any = self
        kind = type(item)
        if kind not in me._types_mapping:
            raise TypeError(
                f"sequence[{index}] must be an int, float, bool, str, bytes or None to be"
                f" stored in a ShareableList, got {kind.__name__}: {item!r}"
            )
        fmt: str = me._types_mapping[kind]
        align: int = me._alignment
        if isinstance(item, str):
            return fmt % (align * (len(item.encode("utf8")) // align + 1))
        if isinstance(item, bytes):
            return fmt % (align * (len(item) // align + 1))
        return fmt

    def __reduce__(self) -> tuple[object, ...]:  # type: ignore[override]
        return (_attach_list, (type(self), self.shm.name, self.shm.host))


def _attach_list(cls: type[ShareableList[_T]], name: str, host: str) -> ShareableList[_T]:
    """Unpickling: attach to the list's segment by name, on its own host only."""
    here = this_host()
    if host != here:
        raise SharedMemoryHostError(name, host, here)
    return cls(name=name)


class SharedMemoryManager:
    """Makes :class:`SharedMemory` and :class:`ShareableList` objects and unlinks them
    all at :meth:`shutdown` (or at the end of a ``with`` block).

    Unlike multiprocess's, it starts no server process: it is a record, in the process
    that made it, of the segments made through it. The segments themselves are ordinary
    named ones, for any process of this host (engines included) to attach to.

    Examples
    --------
    >>> with SharedMemoryManager() as smm:                  # doctest: +SKIP
    ...     sl = smm.ShareableList([1, 2, 3])
    ...     rc[:].apply_sync(lambda s: sum(s), sl)
    [6, 6]

    .. versionadded:: 0.6
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "initial"
        self._segments: list[SharedMemory] = []

    def start(self) -> None:
        """Start tracking (``ProcessError`` if started already, or shut down)."""
        with self._lock:
            if self._state == "started":
                raise ProcessError("Already started server")
            if self._state == "shutdown":
                raise ProcessError("Manager has shut down")
            self._state = "started"

    def _keep(self, shm: SharedMemory) -> None:
        with self._lock:
            if self._state != "started":
                shm.close()
                shm.unlink()
                raise ProcessError(
                    f"SharedMemoryManager is {self._state}, not started: call start() or"
                    " use it in a with block"
                )
            self._segments.append(shm)

    def SharedMemory(self, size: int) -> SharedMemory:  # multiprocess's name
        """A new segment of ``size`` bytes, unlinked at :meth:`shutdown`."""
        shm = SharedMemory(None, create=True, size=size)
        self._keep(shm)
        return shm

    def ShareableList(self, sequence: Iterable[_T]) -> ShareableList[_T]:
        """A new ShareableList of ``sequence``'s items, unlinked at :meth:`shutdown`."""
        sl = ShareableList(sequence)
        self._keep(sl.shm)
        return sl

    def shutdown(self) -> None:
        """Unlink every segment made through this manager (those already unlinked are
        skipped). Views of them stay valid where they are open; the names are gone."""
        with self._lock:
            if self._state == "shutdown":
                return
            self._state = "shutdown"
            segments, self._segments = self._segments, []
        for shm in segments:
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()

    def __enter__(self) -> Self:
        if self._state == "initial":
            self.start()
        elif self._state == "shutdown":
            raise ProcessError("Manager has shut down")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state}, {len(self._segments)} segments>"
