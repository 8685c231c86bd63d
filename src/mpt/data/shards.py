"""The token shard format: raw token arrays in files that can be memory-mapped, plus a JSON index.

A folder holds ``index.json`` (:class:`ShardIndex`, with each shard's size and SHA-256, checked before a
shard is trusted), ``shard-NNNNN.bin`` (:class:`ShardWriter` writes them, :class:`Shard` maps one; the byte
layout is beside ``MAGIC``), and ``mpt prep``'s ``summary.json``, ``prep.json`` (see prep_folder.py).

Why our own format, not mosaicml-streaming's MDS or litdata: the last mosaicml-streaming release pins
``transformers<5`` and ``numpy<2.2`` and pulls ``torchvision``, which cannot be installed beside current
PyTorch; litdata also pulls ``torchvision``. A flat array of token ids is what nanoGPT, OLMo and
Megatron store, and it is all a language-model loader needs.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..files import file_sha256
from ..storage import TMP_SUFFIX, publish, tmp_name, write_atomic

# A shard file, all little-endian: MAGIC (8 bytes); uint64 number of samples N; N + 1 uint64 token offsets
# of the samples (offsets[0] == 0, offsets[N] == total tokens); the tokens, uint16 when the vocabulary
# fits, else uint32. Fixed-length ("concat") shards store offsets too, so one reader serves both modes.
MAGIC = b"MPTSHRD1"
FORMAT = "mpt-shards"
VERSION = 1
INDEX_FILE = "index.json"
HEADER_BYTES = 16
_BLOCK = 1 << 22        # bytes copied at a time


class ShardError(ValueError):
    """A shard or index that is missing, corrupt or inconsistent."""


TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}  # the index's name -> the bytes on disk


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id of a vocabulary (what the writer stores)."""
    return TOKEN_DTYPES["uint16" if vocab_size <= 2**16 else "uint32"]


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

    def token_dtype(self) -> np.dtype:
        """The dtype this index's shards hold their tokens in (little-endian, as :class:`ShardWriter` wrote)."""
        if self.dtype not in TOKEN_DTYPES:
            raise ShardError(f"index dtype {self.dtype!r} is not one of {', '.join(TOKEN_DTYPES)}; "
                             "re-run `mpt prep` to rewrite the index")
        return TOKEN_DTYPES[self.dtype]

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
    """Append samples (arrays of token ids); starts a new shard when the current one reaches ``shard_bytes``.

    A sample can also arrive in pieces (``extend`` ... ``end_sample``), so a document of any length is
    written with memory bounded by the piece, not the document: the current shard's tokens go to a
    spill file on disk and only its sample lengths stay in memory. Each finished shard is written
    under a temporary name, fsynced and renamed; ``on_shard`` is then called with it, and the index is
    written last (the same way), so a folder with ``index.json`` is complete.

    ``done`` continues an interrupted run: the shards already finished (their files are in place).
    """

    def __init__(self, out_dir: str | Path, *, vocab_size: int, eos_id: int | None, mode: str,
                 seq_len: int | None, tokenizer: str, shard_bytes: int = 1 << 26,
                 done: list[ShardInfo] | None = None, on_shard: Callable[[ShardInfo], None] | None = None):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if done is None and ((self.out / INDEX_FILE).exists() or any(self.out.glob("shard-*.bin"))):
            raise ValueError(f"{self.out} already holds shards; choose an empty --out folder or delete it")
        self.dtype = token_dtype(vocab_size)
        self.index = ShardIndex(dtype=self.dtype.name, vocab_size=vocab_size, eos_id=eos_id, mode=mode,
                                seq_len=seq_len, tokenizer=tokenizer, shards=list(done or []))
        self.shard_bytes = shard_bytes
        self.on_shard = on_shard
        self._spill = None                 # the current shard's tokens, on disk
        self._lengths: list[int] = []      # lengths of the current shard's finished samples
        self._done_tokens = 0              # their total
        self._open_tokens = 0              # tokens of the sample being extended

    def _size(self, samples: int, tokens: int) -> int:
        return HEADER_BYTES + 8 * (samples + 1) + tokens * self.dtype.itemsize

    def _spill_path(self, shard: int) -> Path:
        return self.out / f"shard-{shard:05d}.bin.tokens{TMP_SUFFIX}"

    def add(self, sample: np.ndarray) -> None:
        """Shards stay within ``shard_bytes`` unless one sample alone is bigger (then it gets a shard of its own)."""
        self.extend(sample)
        self.end_sample()

    def extend(self, tokens: np.ndarray) -> None:
        """Append tokens to the sample being written."""
        if self._spill is None:
            self._spill = open(self._spill_path(len(self.index.shards)), "wb+")
        self._spill.write(np.asarray(tokens).astype(self.dtype, copy=False).tobytes())
        self._open_tokens += len(tokens)
        if self._lengths and self._size(len(self._lengths) + 1, self._done_tokens + self._open_tokens) > self.shard_bytes:
            self._move_open_sample()

    def end_sample(self) -> None:
        if self._spill is None:
            self._spill = open(self._spill_path(len(self.index.shards)), "wb+")
        self._lengths.append(self._open_tokens)
        self._done_tokens += self._open_tokens
        self._open_tokens = 0

    def _move_open_sample(self) -> None:
        """The sample being written no longer fits: finish the shard without it, and start the next with it."""
        old = self._spill
        nxt = open(self._spill_path(len(self.index.shards) + 1), "wb+")
        keep = self._done_tokens * self.dtype.itemsize
        old.seek(keep)
        while block := old.read(_BLOCK):
            nxt.write(block)
        old.truncate(keep)
        self._finish_shard()
        self._spill = nxt

    def _finish_shard(self) -> None:
        number = len(self.index.shards)
        name = f"shard-{number:05d}.bin"
        path = self.out / name
        offsets = np.zeros(len(self._lengths) + 1, dtype="<u8")
        np.cumsum(self._lengths, out=offsets[1:])
        tmp = tmp_name(path)
        h = hashlib.sha256()
        spill, spill_path = self._spill, self._spill_path(number)
        with open(tmp, "wb") as f:
            for part in (MAGIC, np.uint64(len(self._lengths)).astype("<u8").tobytes(), offsets.tobytes()):
                f.write(part)
                h.update(part)
            spill.flush()
            spill.seek(0)
            while block := spill.read(_BLOCK):
                f.write(block)
                h.update(block)
        spill.close()
        publish(tmp, path)  # a reader never sees a half-written shard under its final name
        spill_path.unlink()
        info = ShardInfo(file=name, samples=len(self._lengths), tokens=self._done_tokens,
                         bytes=path.stat().st_size, sha256=h.hexdigest())
        self.index.shards.append(info)
        self._spill, self._lengths, self._done_tokens = None, [], 0
        if self.on_shard is not None:
            self.on_shard(info)

    def close(self, write_index: bool = True) -> ShardIndex:
        if self._open_tokens:
            raise RuntimeError("ShardWriter.close() with a sample still open; call end_sample() first")
        if self._lengths:
            self._finish_shard()
        elif self._spill is not None:
            self._spill.close()
            self._spill_path(len(self.index.shards)).unlink()
        if write_index:
            write_atomic(self.out / INDEX_FILE, self.index.to_json())
        return self.index
