"""Where files live and how they are written: local paths or object storage (s3://... through fsspec).

One place for: telling a local path from a URL, errors that name the URL and what to check (bucket,
credentials), folders uploaded with the file that marks them complete last (an object appears whole
once its upload ends, but a store has no rename), and local files written under a temporary name,
fsynced, then renamed (a crash leaves the old file, the new one or a stray ``*.tmp``, never half a file).
A leaf module: it imports nothing from ``mpt``, and fsspec or universal_pathlib only when asked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

TMP_SUFFIX = ".tmp"
CREDENTIALS = ("the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; AWS_ENDPOINT_URL_S3 "
               "for an S3-compatible server)")


# ---- paths ------------------------------------------------------------------------------------------

def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def location(folder):
    """A pathlib.Path for local folders (and file:// URLs), a UPath (pathlib's API over fsspec) otherwise."""
    text = str(folder)
    if is_local(text):
        return Path(local_path(text))
    from upath import UPath

    return UPath(text)


def is_local_path(path) -> bool:
    """For what :func:`location` returned (a UPath is no pathlib.Path)."""
    return isinstance(path, Path)


def bucket_of(url: str) -> str:
    return url.split("://", 1)[-1].strip("/").split("/", 1)[0]


def remove_tree(path) -> None:
    """Delete a folder (local or from :func:`location`) and everything in it; nothing there is fine."""
    if is_local_path(path):
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile by someone else: gone is what we want
            path.fs.rm(path.path, recursive=True)


# ---- object storage ---------------------------------------------------------------------------------

class RemoteAccessError(OSError):
    """Object storage refused or could not find what we asked for; the message says what to do."""


def explain(url: str, err: Exception) -> RemoteAccessError:
    """A message naming the URL and what to do, for the errors fsspec/s3fs raise."""
    bucket = bucket_of(url)
    if isinstance(err, PermissionError):
        return RemoteAccessError(f"{url}: access denied ({err}). Check {CREDENTIALS} and that they may use bucket "
                                 f"{bucket!r}")
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


def upload_folder(local: Path, url: str, names: list[str], last: str) -> None:
    """Upload ``names`` from ``local`` to ``url`` in the given order, then ``last``: a reader that finds
    ``last`` (an index, a manifest) finds every file it names, and a cut upload does not look complete."""
    fs, path = filesystem(url)
    base = path.rstrip("/")
    try:
        for name in [*[n for n in names if n != last], last]:
            fs.put_file(str(local / name), f"{base}/{name}")
    except (PermissionError, FileNotFoundError, OSError) as err:
        raise explain(url, err) from err


# ---- local files that appear whole or not at all -------------------------------------------------

def tmp_name(path: str | Path) -> Path:
    """A temporary name next to ``path``: same folder (so the rename is atomic), unique per process."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable: the directory entry lives in the folder, not the file."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename_durably(src: str | Path, dst: str | Path) -> None:
    """Rename a file or folder whose contents are already on disk, and make the rename itself durable."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def publish(tmp: str | Path, path: str | Path) -> None:
    """fsync ``tmp`` and rename it to ``path`` (replacing what was there)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    rename_durably(tmp, path)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        publish(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
