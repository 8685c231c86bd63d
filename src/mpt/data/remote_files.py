"""Input files on object storage (``s3://...``, any fsspec URL) for `mpt prep`: listed like local inputs
(one object, every known file under a prefix, or a glob), and read through fsspec by whichever process
prepares the partition, so a Ray worker on another machine reads them too. ``str()`` of one is its URL,
so every message about its content names the object as a local path would be named. Credentials come
from the usual places (AWS_* variables, ~/.aws); the Ray engine passes the driver's AWS_* to its tasks.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from typing import NamedTuple

from ..storage import explain, filesystem


class RemoteStat(NamedTuple):
    st_size: int
    st_mtime_ns: int      # 0: what identifies a version is the ETag, kept in ``RemoteFile.version``


@dataclass(frozen=True)
class RemoteFile:
    url: str
    size: int
    version: str = ""     # the object's ETag when the store gives one: a changed object is another input

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.url

    def stat(self) -> RemoteStat:
        return RemoteStat(self.size, 0)

    def open_raw(self):
        """The object's bytes as a seekable file (fsspec reads ahead in blocks)."""
        fs, path = filesystem(self.url)
        try:
            return fs.open(path, "rb")
        except (PermissionError, FileNotFoundError, OSError) as err:
            raise explain(self.url, err) from err

    def open_bytes(self):
        """The (decompressed, for .gz) bytes as a file; closing it closes the object's stream too."""
        raw = self.open_raw()
        # a buffered reader gives read1, which the line reader uses; closing it closes the stream
        return _GzipClosing(raw) if self.name.endswith(".gz") else io.BufferedReader(raw, 1 << 20)


class _GzipClosing(gzip.GzipFile):
    def __init__(self, raw):
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def is_remote(item: str) -> bool:
    return "://" in item and not item.startswith("file://")


def list_remote(item: str) -> tuple[list[RemoteFile], bool]:
    """The objects ``item`` names, sorted by URL, and whether it named one object (not a prefix or glob)."""
    import glob

    fs, path = filesystem(item)
    protocol = item.split("://", 1)[0]
    try:
        if glob.has_magic(path):
            found, single = fs.glob(path, detail=True), False
        elif fs.isfile(path):
            found, single = {path: fs.info(path)}, True
        else:
            found, single = fs.find(path, detail=True), False
    except (PermissionError, FileNotFoundError, OSError) as err:
        raise explain(item, err) from err
    files = [RemoteFile(f"{protocol}://{p}", int(info.get("size") or 0), str(info.get("ETag", "")))
             for p, info in sorted(found.items()) if info.get("type", "file") == "file"]
    return files, single
