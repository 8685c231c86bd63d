"""Files that appear whole or not at all: written under a temporary name, fsynced, then renamed.

A crash (power cut, SIGKILL) at any moment leaves either the old file, the new file, or a stray
``*.tmp`` next to them; never a half-written file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


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


def publish(tmp: str | Path, path: str | Path) -> None:
    """fsync ``tmp`` and rename it to ``path`` (replacing what was there)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        publish(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
