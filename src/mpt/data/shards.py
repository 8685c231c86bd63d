"""The token shard format: raw token arrays in files that can be memory-mapped, plus a JSON index.

Why our own format instead of mosaicml-streaming's MDS or litdata: the last mosaicml-streaming
release pins ``transformers<5`` and ``numpy<2.2`` and pulls ``torchvision``, which cannot be
installed beside current PyTorch; litdata also pulls ``torchvision``. A flat array of token ids is
what nanoGPT, OLMo and Megatron store, and it is all a language-model loader needs.

A dataset folder holds::

    index.json           format, version, dtype, vocab_size, eos_id, mode, seq_len, tokenizer, shards[]
    shard-00000.bin      one shard (layout below)
    summary.json         what `mpt prep` did (counts of everything read, filtered and written)

A shard file is, all little-endian::

    8 bytes   magic b"MPTSHRD1"
    8 bytes   uint64 number of samples N
    8*(N+1)   uint64 token offsets of the samples (offsets[0] == 0, offsets[N] == total tokens)
    ...       the tokens, uint16 when the vocabulary fits, else uint32

Fixed-length (``concat``) shards store offsets too, so one reader serves both modes. Every shard's
size and SHA-256 are in the index; readers check them before trusting a shard, so a corrupt or
truncated file is an error naming the shard, never garbage tokens.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"MPTSHRD1"
FORMAT = "mpt-shards"
VERSION = 1
INDEX_FILE = "index.json"
HEADER_BYTES = 16


class ShardError(ValueError):
    """A shard or index that is missing, corrupt or inconsistent."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id of a vocabulary."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


@dataclass
class ShardInfo:
    file: str
    samples: int
    tokens: int
    bytes: int
    sha256: str


@dataclass
class ShardIndex:
    dtype: str                      # "uint16" or "uint32"
    vocab_size: int
    eos_id: int | None
    mode: str                       # "concat" (every sample seq_len tokens) or "docs" (one document per sample)
    seq_len: int | None
    tokenizer: str
    shards: list[ShardInfo] = field(default_factory=list)
    format: str = FORMAT
    version: int = VERSION

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def num_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str) -> ShardIndex:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ShardError(f"{where}: not valid JSON ({err}); re-run `mpt prep` to rewrite the index") from err
        if raw.get("format") != FORMAT:
            raise ShardError(f"{where}: format is {raw.get('format')!r}, expected {FORMAT!r}; "
                             "is this folder the output of `mpt prep`?")
        if raw.get("version") != VERSION:
            raise ShardError(f"{where}: version {raw.get('version')!r} is not supported (this code reads "
                             f"version {VERSION}); re-run `mpt prep` with this version")
        shards = [ShardInfo(**s) for s in raw.pop("shards")]
        return cls(shards=shards, **raw)


def read_index(folder: str | Path) -> ShardIndex:
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a shard folder needs the {INDEX_FILE} that `mpt prep` writes")
    return ShardIndex.from_json(path.read_text(), str(path))


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_shard(path: str | Path, info: ShardInfo) -> None:
    """Raise ShardError naming the shard when its size or checksum differs from the index."""
    size = os.path.getsize(path)
    if size != info.bytes:
        raise ShardError(f"shard {path} is {size:,} bytes but the index says {info.bytes:,}: the file is "
                         "truncated or corrupt; re-copy it or re-run `mpt prep` (delete it if it is a cached copy)")
    digest = file_sha256(path)
    if digest != info.sha256:
        raise ShardError(f"shard {path} has SHA-256 {digest[:16]}... but the index says {info.sha256[:16]}...: "
                         "the file is corrupt; re-copy it or re-run `mpt prep` (delete it if it is a cached copy)")


class Shard:
    """A memory-mapped shard: ``shard[i]`` is sample i as a numpy view (no copy)."""

    def __init__(self, path: str | Path, dtype: np.dtype):
        self.path = str(path)
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES or header[:8] != MAGIC:
                raise ShardError(f"{path} is not an mpt shard (bad magic); re-run `mpt prep`")
            # a plain mmap + frombuffer: np.memmap's per-slice bookkeeping costs more than the copy we make
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        n = int(np.frombuffer(header[8:], dtype="<u8")[0])
        self.offsets = np.frombuffer(self._mm, dtype="<u8", count=n + 1, offset=HEADER_BYTES)
        self._starts = self.offsets.tolist()   # Python ints: indexing them is the hot path of the loader
        self.tokens = np.frombuffer(self._mm, dtype=dtype, count=self._starts[-1], offset=HEADER_BYTES + 8 * (n + 1))
        self.num_samples = n

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self._starts[i]:self._starts[i + 1]]


class ShardWriter:
    """Append samples (arrays of token ids); starts a new shard when the current one reaches ``shard_bytes``."""

    def __init__(self, out_dir: str | Path, *, vocab_size: int, eos_id: int | None, mode: str,
                 seq_len: int | None, tokenizer: str, shard_bytes: int = 1 << 26):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if (self.out / INDEX_FILE).exists() or any(self.out.glob("shard-*.bin")):
            raise ValueError(f"{self.out} already holds shards; choose an empty --out folder or delete it")
        self.dtype = token_dtype(vocab_size)
        self.index = ShardIndex(dtype=self.dtype.name, vocab_size=vocab_size, eos_id=eos_id, mode=mode,
                                seq_len=seq_len, tokenizer=tokenizer)
        self.shard_bytes = shard_bytes
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0

    def add(self, sample: np.ndarray) -> None:
        """Shards stay within ``shard_bytes`` unless one sample alone is bigger (then it gets a shard of its own)."""
        grown = HEADER_BYTES + 8 * (len(self._pending) + 2) + (self._pending_tokens + len(sample)) * self.dtype.itemsize
        if self._pending and grown > self.shard_bytes:
            self._flush()
        self._pending.append(np.asarray(sample, dtype=self.dtype))
        self._pending_tokens += len(sample)

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"shard-{len(self.index.shards):05d}.bin"
        offsets = np.zeros(len(self._pending) + 1, dtype="<u8")
        np.cumsum([len(s) for s in self._pending], out=offsets[1:])
        path = self.out / name
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(np.uint64(len(self._pending)).astype("<u8").tobytes())
            f.write(offsets.tobytes())
            for s in self._pending:
                f.write(s.tobytes())
        os.replace(tmp, path)  # a reader never sees a half-written shard under its final name
        self.index.shards.append(ShardInfo(file=name, samples=len(self._pending), tokens=self._pending_tokens,
                                           bytes=path.stat().st_size, sha256=file_sha256(path)))
        self._pending, self._pending_tokens = [], 0

    def close(self) -> ShardIndex:
        self._flush()
        (self.out / INDEX_FILE).write_text(self.index.to_json())
        return self.index
