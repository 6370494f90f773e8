"""Signing keys on disk."""

from __future__ import annotations

import os

from shoal.wire import generate_key, write_private_file

__all__ = ["generate_exec_key"]


def generate_exec_key(keyfile: str | os.PathLike[str]) -> bytes:
    """Make a new signing key, write it to ``keyfile`` and return it.

    The key comes from `shoal.wire.generate_key` (64 ASCII hex bytes). The file is
    written atomically with mode 0600 (`shoal.wire.write_private_file`), replacing any
    file there, and holds exactly the key: no newline, so reading the file back gives
    the same bytes.

    Examples
    --------
    >>> key = generate_exec_key(tmp_path / "exec.key")  # doctest: +SKIP
    >>> (tmp_path / "exec.key").read_bytes() == key  # doctest: +SKIP
    True

    .. versionadded:: 0.1
    """
    key = generate_key()
    write_private_file(keyfile, key)
    return key
