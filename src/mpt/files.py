"""Small file helpers that several layers need (data shards, checkpoints): written once, here.

A leaf module: it imports nothing from ``mpt``, so ``model``, ``data`` and ``train`` may all use it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes, as hex, read ``chunk`` bytes at a time (memory bounded by it).

    ``path`` may be any path object with ``open`` (a ``UPath`` on object storage, for checkpoints on s3://).
    """
    h = hashlib.sha256()
    with (Path(path) if isinstance(path, str) else path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
