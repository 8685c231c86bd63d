"""Where a streaming dataset's shards come from: a local folder, or any fsspec URL through a bounded cache.

:class:`ShardStore` opens one source's shards, verifying each (size, SHA-256) once per process. Remote
shards are fetched on demand into ``cache_dir/<hash of the URL>/`` and moved into place with an atomic
rename, so several processes (ranks, dataloader workers, two runs) share one cache folder without locks
or shared memory: the worst race is two processes fetching the same shard, and both end with the same
verified file. Eviction removes least-recently-used cached shards until they fit ``limit_bytes``;
downloads in flight are not counted, so the folder can pass the limit by one shard per process.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

from ..files import file_sha256
from ..storage import RemoteAccessError, explain, filesystem, is_local, local_path
from .shards import INDEX_FILE, Shard, ShardError, ShardIndex, ShardInfo, verify_shard

_CACHED_SHARD = re.compile(r"[0-9a-f]{16}/shard-\d{5}\.bin")


def default_cache_dir() -> str:
    return os.environ.get("MPT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mpt", "shards"))


def read_index_url(url: str) -> ShardIndex:
    if is_local(url):
        path = Path(local_path(url)) / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a shard folder needs the {INDEX_FILE} that `mpt prep` writes")
        return ShardIndex.from_json(path.read_text(), str(path))
    where = url.rstrip("/") + "/" + INDEX_FILE
    try:
        fs, path = filesystem(where)
        with fs.open(path, "r") as f:
            text = f.read()
    except FileNotFoundError as err:
        if "bucket" in str(err).lower():
            raise explain(url, err) from err
        raise FileNotFoundError(f"{where} not found: a shard folder needs the {INDEX_FILE} that `mpt prep` writes "
                                "(last, once every shard is in place): run or finish `mpt prep --out URL`") from err
    except RemoteAccessError:
        raise
    except (PermissionError, OSError) as err:
        raise explain(url, err) from err
    return ShardIndex.from_json(text, where)


class ShardStore:
    """Opens the shards of one source, verifying each once per process before it is read."""

    def __init__(self, url: str, index: ShardIndex, *, cache_dir: str | None, limit_bytes: int | None,
                 verify: bool = True, keep_open: int = 8):
        self.url, self.index, self.verify = url, index, verify
        self.local = is_local(url)
        self.limit = limit_bytes
        self.keep_open = keep_open
        self._open: dict[int, Shard] = {}     # insertion order = least recently used first
        self._verified: set[int] = set()
        if not self.local:
            self.root = Path(cache_dir or default_cache_dir())
            key = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
            self.folder = self.root / key
            self.folder.mkdir(parents=True, exist_ok=True)
            biggest = max((s.bytes for s in index.shards), default=0)
            if self.limit is not None and biggest > self.limit:
                raise ValueError(f"cache limit {self.limit:,} bytes is smaller than the largest shard of {url} "
                                 f"({biggest:,} bytes); raise the cache limit")

    def shard(self, i: int) -> Shard:
        shard = self._open.pop(i, None)
        if shard is None:
            shard = self._load(i)
            while len(self._open) >= self.keep_open:
                self._open.pop(next(iter(self._open)))
        self._open[i] = shard
        return shard

    def _load(self, i: int) -> Shard:
        info = self.index.shards[i]
        dtype = self.index.token_dtype()
        if self.local:
            path = os.path.join(local_path(self.url), info.file)
            if self.verify and i not in self._verified:
                verify_shard(path, info)
                self._verified.add(i)
            return Shard(path, dtype)
        path = self.folder / info.file
        for _ in range(3):
            if not path.exists():
                self._verified.add(i)
                return self._fetch(info, path, dtype)
            try:
                if self.verify and i not in self._verified:
                    try:
                        verify_shard(path, info)
                    except ShardError:
                        path.unlink(missing_ok=True)   # a damaged cached copy: the remote one is fetched again
                        continue
                    self._verified.add(i)
                os.utime(path)  # recency for LRU eviction across processes
                return Shard(path, dtype)
            except FileNotFoundError:
                self._verified.discard(i)   # another process evicted it between our check and open; fetch again
        raise ShardError(f"shard {path} keeps disappearing from the cache; the cache limit is too small for the "
                         "number of processes sharing it; raise it")

    def _fetch(self, info: ShardInfo, path: Path, dtype) -> Shard:
        """Download, verify, open, then rename into place: opened first, so that another process evicting
        it right after the rename cannot take it from us (the memory map keeps the file)."""
        import fsspec

        remote = self.url.rstrip("/") + "/" + info.file
        self._evict(incoming=info.bytes)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            try:
                with fsspec.open(remote, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
            except (PermissionError, FileNotFoundError) as err:
                raise explain(remote, err) from err
            # Hashed from the file just written (in the page cache): one SHA-256 helper for every file we check.
            size, digest = tmp.stat().st_size, file_sha256(tmp)
            if size != info.bytes or digest != info.sha256:
                raise ShardError(f"shard {remote} is {size:,} bytes with SHA-256 {digest[:16]}... but the "
                                 f"index says {info.bytes:,} bytes, {info.sha256[:16]}...: the remote copy is corrupt "
                                 "or truncated; re-upload it or re-run `mpt prep`")
            shard = Shard(tmp, dtype)
            os.replace(tmp, path)
            shard.path = str(path)
            return shard
        finally:
            if tmp.exists():
                tmp.unlink()

    def _evict(self, incoming: int) -> None:
        if self.limit is None:
            return
        files = []
        for p in self.root.glob("*/shard-*.bin"):
            if not _CACHED_SHARD.fullmatch(f"{p.parent.name}/{p.name}"):
                continue  # not a shard this cache put here: never counted, never deleted
            try:
                st = p.stat()
            except FileNotFoundError:
                continue  # removed by another process while we listed
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total + incoming <= self.limit:
                break
            try:
                p.unlink()  # a process that has it memory-mapped keeps reading it (POSIX unlink semantics)
            except FileNotFoundError:
                pass
            total -= size
            for i, s in list(self._open.items()):
                if Path(s.path) == p:
                    del self._open[i]
                    self._verified.discard(i)
