"""Where output files live: a local folder, or any store fsspec reaches (``s3://bucket/prefix``).

The one place that tells the two apart. A local path is handled as it always was (os calls;
writers rename a temporary into place). An object store has no rename: a file is written
to a local copy in the scratch folder (``DECODING_ASSETS_SCRATCH``, default the system's
temporary folder), then uploaded under its final key with ``put`` (streamed from the file,
never read whole into memory). On S3 an upload under a key is atomic: a reader never sees
part of an object, so a key the catalog registers is always complete.

An object's identity is its size and, as its ``modified_ns``, a version token folded from
its ETag and LastModified: LastModified alone has a one-second resolution, so an object
rewritten within the second with the same size would pass the fast check unseen. The S3
endpoint and credentials come from the usual AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from .errors import CatalogError, file_checksum

_BLOCK = 8 * 2**20
# what stores say changes with an object's content or its rewriting (S3, GCS, Azure, local)
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "generation", "LastModified", "last_modified", "mtime", "created")
# S3's limit on a key, in bytes
KEY_MAX = 1024


class UploadError(CatalogError):
    """A local file could not be uploaded to its URL (network, credentials, no bucket)."""

    def __init__(self, url: str, cause: BaseException):
        self.url, self.cause = url, cause
        super().__init__(f"Could not upload {url}: {type(cause).__name__}: {cause}")


@dataclass(frozen=True)
class Stat:
    size: int
    version: int  # st_mtime_ns of a local file; an object's version token


def is_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` names an object in a store (``scheme://...``, not ``file://``)."""
    if isinstance(location, Path):
        return False
    text = str(location)
    scheme = urlsplit(text).scheme
    return "://" in text and len(scheme) > 1 and scheme != "file"


def resolve(location: str | os.PathLike) -> Path | str:
    """What the catalog records for a location: a URL as written (no trailing slash), a
    local path made absolute (a ``file://`` URL is a local path)."""
    if is_url(location):
        return str(location).rstrip("/")
    text = str(location)
    return Path(urlsplit(text).path if text.startswith("file://") else text).resolve()


def key(location: str | os.PathLike) -> str:
    """``resolve``, as the text stored in the catalog's rows."""
    return str(resolve(location))


def as_location(recorded: str) -> Path | str:
    """A location the catalog recorded, as a Path for a local file, text for a URL."""
    return recorded if is_url(recorded) else Path(recorded)


def join(base: Path | str, *parts: str) -> Path | str:
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


def scratch_folder() -> Path:
    """Where local copies of files bound for an object store are written."""
    return Path(os.environ.get("DECODING_ASSETS_SCRATCH") or tempfile.gettempdir()).resolve() / "decoding-assets-uploads"


def staged_copy(url: str) -> Path:
    """The local copy ``url`` is written to before its upload: at the same relative place
    under the scratch folder (its writer's temporaries beside it), so cleanup finds what a
    killed upload left from the URL alone."""
    parts = urlsplit(url)
    return scratch_folder().joinpath(parts.scheme, parts.netloc, *parts.path.strip("/").split("/"))


def local_form(location: Path | str) -> Path:
    """The local file a location is written as: itself, or its staged copy."""
    return staged_copy(location) if is_url(location) else Path(location)


def stat(location: Path | str) -> Stat:
    """Size and version; FileNotFoundError if there is no such file or object."""
    if not is_url(location):
        found = os.stat(location)
        return Stat(found.st_size, found.st_mtime_ns)
    fs, path = _filesystem(location)
    fs.invalidate_cache(path)  # another process may have changed it since this one last looked
    info = fs.info(path)
    if info.get("type") == "directory":
        raise FileNotFoundError(f"{location} is a folder, not a file")
    return Stat(int(info["size"]), _version(info))


def exists(location: Path | str) -> bool:
    try:
        stat(location)
    except FileNotFoundError:
        return False
    return True


def checksum(location: Path | str) -> str:
    """blake2b of the bytes, streamed (the same as ``file_checksum`` of a local copy)."""
    if not is_url(location):
        return file_checksum(location)
    digest = hashlib.blake2b(digest_size=20)
    with open_file(location) as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def open_file(location: Path | str) -> IO[bytes]:
    """The file for reading, lazily: an object is read in blocks as they are asked for."""
    if not is_url(location):
        return open(location, "rb")
    fs, path = _filesystem(location)
    return fs.open(path, "rb", block_size=_BLOCK)


def put(local: Path, url: str) -> None:
    """Upload a local file under ``url`` (streamed from the file); UploadError if it
    cannot be, whatever the cause."""
    try:
        fs, path = _filesystem(url)
        fs.put_file(str(local), path)
    except Exception as error:  # noqa: BLE001 -- any failure is a failed upload, named with its URL
        raise UploadError(url, error) from error


def get(url: str, local: Path) -> None:
    """Download an object into a local file (streamed)."""
    fs, path = _filesystem(url)
    fs.get_file(path, str(local))


def delete(location: Path | str) -> None:
    """Delete a file or object; FileNotFoundError if there is none (an object store
    deletes a missing key without a word, so it is looked up first)."""
    if not is_url(location):
        os.unlink(location)
        return
    if not exists(location):
        raise FileNotFoundError(f"No object at {location}")
    fs, path = _filesystem(location)
    fs.rm_file(path)


def _filesystem(url: str):
    import fsspec  # only where outputs are in a store

    return fsspec.core.url_to_fs(url)


def _version(info: dict) -> int:
    """A token that changes whenever the object is rewritten, folded into a BIGINT."""
    token = "|".join(f"{k}={info[k]}" for k in _VERSION_KEYS if info.get(k) is not None)
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "big") >> 1
