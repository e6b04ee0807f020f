"""What every part of the catalog shares: its error, the rule for names, file
checksums and who is writing."""

from __future__ import annotations

import getpass
import hashlib
import socket
from pathlib import Path

_FORBIDDEN = set("/\\'\"|,\0\n\r\t")


class CatalogError(ValueError):
    """A request the catalog cannot satisfy; the message says what to do."""


def check_name(kind: str, value: str) -> str:
    """Names become file names and partition keys: no path separators or quotes."""
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{kind} must be a non-empty string, got {value!r}.")
    bad = sorted(set(value) & _FORBIDDEN)
    if bad or value != value.strip() or value in (".", ".."):
        raise CatalogError(
            f"{kind} {value!r} is not allowed: names may not contain path separators, quotes, '|', ',' "
            "or control characters, nor start or end with spaces. Rename it."
        )
    return value


def file_checksum(path: str | Path) -> str:
    """blake2b of the file's bytes, streamed."""
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_user() -> str:
    """``user@host``: recorded with every write, so a shared catalog says who did what."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
