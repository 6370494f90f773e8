"""Keys and connection files, written so that no other user can ever read them.

Theory of operation
-------------------
* A private file is created with mode 0600 *atomically*: the bytes go to a temporary file
  opened ``O_CREAT | O_EXCL`` with mode 0600 in the same folder, which is then renamed
  over the target. The file is never visible with looser permissions, not even for an
  instant (no write-then-chmod).
* Its folder is created 0700 when missing.
* Reading refuses a symlink (``O_NOFOLLOW``) and a file that its group or others may
  read or write, with an error that says which ``chmod`` fixes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._errors import ConnectionFileError, InvalidKeyError

__all__ = [
    "ConnectionInfo",
    "CurveKeys",
    "generate_key",
    "read_connection_file",
    "read_private_file",
    "write_connection_file",
    "write_private_file",
]

#: The only signature scheme: HMAC with SHA-256 (weaker digests are refused).
SIGNATURE_SCHEME = "hmac-sha256"


def generate_key(nbytes: int = 32) -> bytes:
    """Return a new random signing key, as ASCII hex (``2 * nbytes`` bytes long).

    .. versionadded:: 0.1
    """
    if nbytes < 16:
        raise InvalidKeyError(f"nbytes must be at least 16 for a safe key, got {nbytes}")
    return secrets.token_hex(nbytes).encode("ascii")


def write_private_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` with mode 0600, atomically, in a 0700 folder.

    Returns the resolved path. An existing file at ``path`` is replaced.
    """
    target = Path(path)
    folder = target.parent
    for parent in reversed((folder, *folder.parents)):
        if not parent.exists():
            parent.mkdir(mode=0o700)  # every folder we create is private, not only the last
    tmp = folder / f".{target.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def read_private_file(path: str | os.PathLike[str]) -> bytes:
    """Read a file that must be private: no symlink, not readable by group or others.

    Raises
    ------
    ConnectionFileError
        When the file is a symlink or its mode lets others read or write it; the
        message gives the command that fixes it.
    FileNotFoundError
        When there is no such file.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO must not block
    except OSError as exc:
        if p.is_symlink():
            raise ConnectionFileError(
                f"{p} is a symlink; shoal reads keys only from regular files",
                hint=f'replace it with a copy: cp --remove-destination "$(readlink -f {p})" {p}',
            ) from exc
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConnectionFileError(f"{p} is not a regular file")
        if st.st_mode & 0o077:
            raise ConnectionFileError(
                f"{p} has mode {stat.S_IMODE(st.st_mode):04o}: its group or others may read it,"
                " and it holds a secret key",
                hint=f"run: chmod 600 {p}",
            )
        return f.read()


@dataclasses.dataclass(frozen=True, slots=True)
class CurveKeys:
    """CurveZMQ keys a client needs: the server's public key and its own keypair (Z85)."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What a peer needs to join a cluster: where, the signing key, and Curve keys.

    ``urls`` maps a role (``"registration"``, ``"control"``, ...) to a zmq url.
    ``extra`` keeps any further JSON fields, so files written by newer layers round-trip.
    """

    urls: Mapping[str, str]
    key: bytes
    signature_scheme: str = SIGNATURE_SCHEME
    curve: CurveKeys | None = None
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            urls=dict(self.urls),
            key=self.key.decode("ascii"),
            signature_scheme=self.signature_scheme,
        )
        if self.curve is not None:
            doc["curve"] = {
                "server_public": self.curve.server_public.decode("ascii"),
                "client_public": self.curve.client_public.decode("ascii"),
                "client_secret": self.curve.client_secret.decode("ascii"),
            }
        return json.dumps(doc, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "<connection info>") -> ConnectionInfo:
        try:
            doc = json.loads(text)
            urls = doc.pop("urls")
            key = doc.pop("key").encode("ascii")
            scheme = doc.pop("signature_scheme", SIGNATURE_SCHEME)
            curve_doc = doc.pop("curve", None)
            curve = None
            if curve_doc is not None:
                curve = CurveKeys(
                    server_public=curve_doc["server_public"].encode("ascii"),
                    client_public=curve_doc["client_public"].encode("ascii"),
                    client_secret=curve_doc["client_secret"].encode("ascii"),
                )
            if not isinstance(urls, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in urls.items()
            ):
                raise TypeError("urls must map names to url strings")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConnectionFileError(
                f"{source} is not a valid shoal connection file: {exc!r}",
                hint="recreate it by restarting the cluster",
            ) from exc
        if scheme != SIGNATURE_SCHEME:
            raise InvalidKeyError(
                f"{source}: signature_scheme must be {SIGNATURE_SCHEME!r}, got {scheme!r}"
            )
        return cls(urls=urls, key=key, signature_scheme=scheme, curve=curve, extra=doc)


def write_connection_file(path: str | os.PathLike[str], info: ConnectionInfo) -> Path:
    """Write ``info`` as JSON to ``path`` (mode 0600, atomic, folder 0700)."""
    return write_private_file(path, info.to_json().encode("utf-8"))


def read_connection_file(path: str | os.PathLike[str]) -> ConnectionInfo:
    """Read a connection file, refusing symlinks and files others may read."""
    return ConnectionInfo.from_json(read_private_file(path), source=str(path))
