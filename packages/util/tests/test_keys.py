"""generate_exec_key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from shoal.util import generate_exec_key


def test_generate_exec_key_writes_private_file(tmp_path: Path) -> None:
    """The key file holds exactly the returned key, with mode 0600."""
    path = tmp_path / "security" / "exec.key"
    key = generate_exec_key(path)
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 64
    int(key, 16)  # ASCII hex


def test_generate_exec_key_accepts_str_and_replaces(tmp_path: Path) -> None:
    """A str path works, and a second call replaces the key with a new one."""
    path = tmp_path / "exec.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    first = generate_exec_key(str(path))
    second = generate_exec_key(str(path))
    assert first != second
    assert path.read_bytes() == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_generate_exec_key_leaves_no_temporary_files(tmp_path: Path) -> None:
    """Only the key file is left in its folder (the write is atomic)."""
    generate_exec_key(tmp_path / "exec.key")
    assert [p.name for p in tmp_path.iterdir()] == ["exec.key"]


def test_generate_exec_key_into_a_file_path_parent_fails(tmp_path: Path) -> None:
    """A parent that is a regular file raises an OSError naming it, and writes nothing."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    # Which one depends on how shoal.wire walks the folders.
    with pytest.raises((FileExistsError, NotADirectoryError), match="file"):
        generate_exec_key(blocker / "exec.key")
    assert blocker.read_bytes() == b""
