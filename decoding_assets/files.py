"""Writing files so that nothing is ever half-written: locally, a temporary renamed into
place; to an object store (a URL, catalog/storage.py), a local copy in the scratch folder
uploaded under the final key, which on S3 appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

from catalog import storage


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``
    (replacing any old file in one step), on failure it is deleted. ``path`` may be a URL:
    the temporary is then beside its staged copy (``uploaded``), and the upload follows.

    The file gets the permissions the umask allows, as any new file does (``mkstemp``'s
    0600 kept lab-mates from reading results on a shared server). The folder must
    exist: a missing output folder is the caller's error to name.
    """
    if storage.is_url(path):
        with uploaded(str(path)) as (staged,), atomic_write(staged, suffix) as tmp:
            yield tmp
        return
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


@contextlib.contextmanager
def uploaded(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield the local files to write ``paths`` as: a local path is itself; a URL is its
    staged copy in the scratch folder, uploaded under the URL once the body succeeded
    (storage.UploadError if it cannot be) and deleted either way. Uploads go one by one,
    streamed from the files; a caller registers nothing before this returns."""
    local = [storage.local_form(p) for p in paths]
    remote = [(path, copy) for path, copy in zip(paths, local) if storage.is_url(path)]
    for _, copy in remote:
        copy.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield local
        for path, copy in remote:
            storage.put(copy, str(path))
    finally:
        for _, copy in remote:
            copy.unlink(missing_ok=True)


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
