"""Private key and connection files: 0600, atomic, and refused when unsafe."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.wire import (
    ConnectionFileError,
    ConnectionInfo,
    CurveKeys,
    InvalidKeyError,
    generate_key,
    read_connection_file,
    read_private_file,
    write_connection_file,
    write_private_file,
)

CURVE = CurveKeys(
    server_public=b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7",
    client_public=b"Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID",
    client_secret=b"D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs",
)


def mode_of(path: Path) -> int:
    """The permission bits of ``path`` (not following a symlink)."""
    return stat.S_IMODE(path.lstat().st_mode)


def sample_info(*, curve: CurveKeys | None = None) -> ConnectionInfo:
    """A ConnectionInfo with two urls, a fresh key and the given Curve keys."""
    return ConnectionInfo(
        urls={"registration": "tcp://127.0.0.1:5555", "control": "ipc:///tmp/shoal-ctl"},
        key=generate_key(),
        curve=curve,
    )


@pytest.fixture
def umask0() -> Iterator[None]:
    """Run the test with umask 0, so any mode not set explicitly would show."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask0")
def test_connection_file_is_0600_in_0700_folder(tmp_path: Path) -> None:
    """Even under umask 0 the file is 0600 and its new folder 0700, with no temp file left."""
    folder = tmp_path / "security"
    path = write_connection_file(folder / "cluster.json", sample_info())
    assert path == folder / "cluster.json"
    assert mode_of(path) == 0o600
    assert mode_of(folder) == 0o700
    assert [p.name for p in folder.iterdir()] == ["cluster.json"]


@pytest.mark.usefixtures("umask0")
def test_overwrite_is_atomic_replace(tmp_path: Path) -> None:
    """Writing over a 0644 file replaces it whole: new inode, 0600, old readers unaffected."""
    path = tmp_path / "key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    old_inode = path.stat().st_ino
    with path.open("rb") as reader:
        write_private_file(path, b"new")
        assert reader.read() == b"old"
    assert path.stat().st_ino != old_inode
    assert mode_of(path) == 0o600
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


@pytest.mark.usefixtures("umask0")
def test_file_is_never_visible_with_looser_mode(tmp_path: Path) -> None:
    """A watcher scanning the folder during many writes never sees a mode other than 0600."""
    folder = tmp_path / "watched"
    folder.mkdir(mode=0o700)
    done = threading.Event()
    seen: set[int] = set()
    scans = 0

    def watch() -> None:
        nonlocal scans
        while not done.is_set():
            for entry in os.scandir(folder):
                # a temp file may be renamed away between listing and stat
                with contextlib.suppress(FileNotFoundError):
                    seen.add(stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))
            scans += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(300):
            write_private_file(folder / f"f{i % 3}", b"x" * 4096)
    finally:
        done.set()
        watcher.join()
    assert scans > 0
    assert seen <= {0o600}
    assert sorted(p.name for p in folder.iterdir()) == ["f0", "f1", "f2"]


def test_failed_write_leaves_target_and_no_temp(tmp_path: Path) -> None:
    """When writing fails the old file stays intact and the temp file is removed."""
    path = write_private_file(tmp_path / "key", b"old")
    with pytest.raises(TypeError):
        write_private_file(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


@pytest.mark.parametrize("curve", [None, CURVE], ids=["plain", "curve"])
def test_round_trip(tmp_path: Path, curve: CurveKeys | None) -> None:
    """write then read gives back an equal ConnectionInfo, with or without Curve keys."""
    info = sample_info(curve=curve)
    path = write_connection_file(tmp_path / "c.json", info)
    back = read_connection_file(path)
    assert back == info
    assert back.curve == curve
    assert dict(back.urls) == dict(info.urls)


def test_extra_fields_survive_a_round_trip(tmp_path: Path) -> None:
    """Unknown JSON fields from newer writers are kept in extra and written back."""
    path = tmp_path / "c.json"
    doc = {
        "urls": {"hub": "tcp://127.0.0.1:1"},
        "key": generate_key().decode(),
        "signature_scheme": "hmac-sha256",
        "engine_count": 8,
        "launcher": {"kind": "ssh", "hosts": ["a", "b"]},
    }
    write_private_file(path, json.dumps(doc).encode())
    info = read_connection_file(path)
    assert info.extra == {"engine_count": 8, "launcher": {"kind": "ssh", "hosts": ["a", "b"]}}
    write_connection_file(path, info)
    assert json.loads(path.read_text()) == doc


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_loose_mode_is_refused(tmp_path: Path, mode: int) -> None:
    """A file its group or others may read or write is refused with the chmod that fixes it."""
    path = write_connection_file(tmp_path / "c.json", sample_info())
    path.chmod(mode)
    with pytest.raises(ConnectionFileError, match="chmod 600") as info:
        read_connection_file(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, PermissionError)


def _unsafe_loose_mode(tmp_path: Path) -> tuple[Path, str]:
    path = write_connection_file(tmp_path / "c.json", sample_info())
    path.chmod(0o644)
    return path, f"{path} has mode 0644"


def _unsafe_symlink(tmp_path: Path) -> tuple[Path, str]:
    link = tmp_path / "link.json"
    link.symlink_to(write_connection_file(tmp_path / "real.json", sample_info()))
    return link, f"{link} is a symlink"


def _unsafe_bad_json(tmp_path: Path) -> tuple[Path, str]:
    path = write_private_file(tmp_path / "c.json", b"{not json")
    return path, f"{path} is not a valid shoal connection file"


@pytest.mark.parametrize("make", [_unsafe_loose_mode, _unsafe_symlink, _unsafe_bad_json])
def test_refusal_message_names_file_and_problem(
    tmp_path: Path, make: Callable[[Path], tuple[Path, str]]
) -> None:
    """The refusal message itself, not only its hint, names the file and what is wrong."""
    path, expected = make(tmp_path)
    with pytest.raises(ConnectionFileError) as info:
        read_connection_file(path)
    assert expected in str(info.value)
    assert info.value.args[0].startswith(expected)


def test_symlink_is_refused(tmp_path: Path) -> None:
    """A symlink to a private 0600 file is refused all the same."""
    target = write_connection_file(tmp_path / "real.json", sample_info())
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(ConnectionFileError, match="readlink"):
        read_connection_file(link)


def test_dangling_symlink_is_refused(tmp_path: Path) -> None:
    """A symlink to nowhere is refused as a symlink, not reported as a missing file."""
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "missing.json")
    with pytest.raises(ConnectionFileError, match="readlink"):
        read_private_file(link)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    """A missing file is FileNotFoundError, not a ConnectionFileError."""
    with pytest.raises(FileNotFoundError):
        read_connection_file(tmp_path / "nothing.json")


def test_directory_is_refused(tmp_path: Path) -> None:
    """A folder at the path is not read as a key file."""
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    with pytest.raises((ConnectionFileError, IsADirectoryError)):
        read_private_file(folder)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO at the path is refused at once instead of blocking until a writer comes."""
    fifo = tmp_path / "c.json"
    os.mkfifo(fifo, 0o600)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            read_private_file(fifo)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(5)
    blocked = reader.is_alive()
    if blocked:  # unblock it: opening the write end lets the reader's open() return
        os.close(os.open(fifo, os.O_WRONLY))
        reader.join()
    assert not blocked, "read_private_file blocked on a FIFO"
    assert len(errors) == 1
    assert isinstance(errors[0], ConnectionFileError)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[]",
        '"a string"',
        "\xff\xfe",
        '{"key": "abc"}',
        '{"urls": {"hub": "tcp://127.0.0.1:1"}}',
        '{"urls": ["tcp://127.0.0.1:1"], "key": "abc"}',
        '{"urls": {"hub": 5555}, "key": "abc"}',
        '{"urls": {}, "key": 12}',
        '{"urls": {}, "key": "abc", "curve": {"server_public": "x"}}',
        '{"urls": {}, "key": "abc", "curve": "keys"}',
    ],
    ids=[
        "empty",
        "bad-json",
        "list",
        "string",
        "not-utf8",
        "no-urls",
        "no-key",
        "urls-list",
        "url-not-str",
        "key-not-str",
        "curve-missing-keys",
        "curve-not-object",
    ],
)
def test_invalid_content_is_refused(tmp_path: Path, text: str) -> None:
    """Invalid JSON, a wrong shape or missing fields raise ConnectionFileError."""
    path = tmp_path / "c.json"
    data = b"\xff\xfe" if text == "\xff\xfe" else text.encode()
    write_private_file(path, data)
    with pytest.raises(ConnectionFileError, match="restarting the cluster") as info:
        read_connection_file(path)
    assert info.value.__cause__ is not None


def test_weak_signature_scheme_is_refused(tmp_path: Path) -> None:
    """A connection file asking for a digest other than hmac-sha256 is refused."""
    doc = {"urls": {}, "key": generate_key().decode(), "signature_scheme": "hmac-md5"}
    path = write_private_file(tmp_path / "c.json", json.dumps(doc).encode())
    with pytest.raises(InvalidKeyError, match="hmac-md5"):
        read_connection_file(path)


def test_generate_key_is_hex_and_distinct() -> None:
    """generate_key gives 64 hex characters by default, different every time."""
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert len(key) == 64
        int(key, 16)
        assert key == key.lower()


@pytest.mark.parametrize("nbytes", [16, 48])
def test_generate_key_length_follows_nbytes(nbytes: int) -> None:
    """generate_key(n) gives 2*n hex characters."""
    assert len(generate_key(nbytes)) == 2 * nbytes


@pytest.mark.parametrize("nbytes", [-1, 0, 8, 15])
def test_generate_key_refuses_short_keys(nbytes: int) -> None:
    """generate_key refuses fewer than 16 bytes, naming the value."""
    with pytest.raises(InvalidKeyError, match=f"got {nbytes}$"):
        generate_key(nbytes)
