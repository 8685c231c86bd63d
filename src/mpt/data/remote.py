"""Object storage (s3://, gs://, ... through fsspec): clear errors, and folders published index-last.

An object store has no rename, but each object appears whole when its upload completes. So a shard
folder is uploaded with ``index.json`` last: a reader that finds the index finds every shard it
names, and an upload cut half-way leaves a folder that does not look complete.
"""

from __future__ import annotations

from pathlib import Path

from .shards import INDEX_FILE


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


class RemoteAccessError(OSError):
    """Object storage refused or could not find what we asked for; the message says what to do."""


def explain(url: str, err: Exception) -> RemoteAccessError:
    """A message naming the URL and what to do, for the errors fsspec/s3fs raise."""
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    if isinstance(err, PermissionError):
        return RemoteAccessError(
            f"{url}: access denied ({err}). Check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            f"or AWS_PROFILE; AWS_ENDPOINT_URL_S3 for an S3-compatible server) and that they may use bucket {bucket!r}")
    if isinstance(err, FileNotFoundError) and "bucket" in str(err).lower():
        return RemoteAccessError(f"{url}: bucket {bucket!r} does not exist ({err}). Create it first, or fix the "
                                 "bucket name in the URL")
    if isinstance(err, FileNotFoundError):
        return RemoteAccessError(f"{url}: not found ({err}). Check the URL; for shards, run or finish "
                                 "`mpt prep --out URL`")
    return RemoteAccessError(f"{url}: {type(err).__name__}: {err}. Check the URL, the network and the credentials")


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for ``url``; a missing backend package is named."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as err:
        raise RemoteAccessError(f"{url}: {err}. For s3:// URLs pip install 'mpt[s3]'") from err
    # fsspec keeps listings per process; another process (a prep run, a rank) may have written since
    fs.invalidate_cache(path)
    return fs, path


def list_files(url: str) -> list[str]:
    """Names of the files under ``url`` (relative to it); [] for a prefix that holds nothing yet.

    Raises RemoteAccessError for a bucket that does not exist or credentials that are refused, so a
    command fails before it does any work.
    """
    fs, path = filesystem(url)
    try:
        found = fs.find(path)
    except (PermissionError, FileNotFoundError, OSError) as err:
        raise explain(url, err) from err
    prefix = path.rstrip("/") + "/"
    return sorted(p[len(prefix):] if p.startswith(prefix) else p for p in found)


def read_text(url: str) -> str:
    fs, path = filesystem(url)
    try:
        with fs.open(path, "r") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except (PermissionError, OSError) as err:
        raise explain(url, err) from err


def upload_folder(local: Path, url: str, names: list[str]) -> None:
    """Upload ``names`` from ``local`` to ``url`` in the given order, then ``index.json`` last."""
    fs, path = filesystem(url)
    base = path.rstrip("/")
    try:
        for name in [*[n for n in names if n != INDEX_FILE], INDEX_FILE]:
            fs.put_file(str(local / name), f"{base}/{name}")
    except (PermissionError, FileNotFoundError, OSError) as err:
        raise explain(url, err) from err
