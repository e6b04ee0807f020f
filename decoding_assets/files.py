"""Writing files so that nothing is ever half-written."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``
    (replacing any old file in one step), on failure it is deleted.

    The file gets the permissions the umask allows, as any new file does (``mkstemp``'s
    0600 kept lab-mates from reading results on a shared server). The folder must
    exist: a missing output folder is the caller's error to name.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot write {path}: folder {path.parent} does not exist.")
    tmp = _new_temporary(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_temporary(path: Path, suffix: str) -> Path:
    """An empty file beside ``path``, named as ``mkstemp`` names them (``.<stem>.`` and 8
    random characters; catalog cleanup recognises that name) but created with 0666 that
    the umask narrows, and exclusively, so no other writer has it."""
    while True:
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # another writer drew the same name: draw again
            continue
        return tmp
