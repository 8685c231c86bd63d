"""`mpt prep`'s per-partition stages, the same plain functions for every engine.

The input is cut into partitions (files grouped up to ``partition_bytes``; a bigger ``.jsonl`` cut at line
ends). ``prepare_partition`` reads one, filters, fingerprints (exact digest; MinHash and its LSH band keys)
and tokenizes what the filters keep, returning a :class:`PartitionResult`: data only, so it runs in this
process, a pool or a Ray task alike; the driver decides duplicates and packs in input order (prep.py).
Not datatrove's blocks: its filters are C4/Gopher/FineWeb rules, not the MPT appendix's mC4 rules; its
tokenizer writes its own files, not our shards; its JSON-lines reader logs a bad line and goes on, where
ours stops with file and line (or counts it); in benchmarks/bench_prep.py it runs at ~1/8 of our speed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .dedup import DedupConfig, fingerprint
from .filters import FilterConfig, Verdict, judge, unselected
from .near_dedup import band_keys
from .readers import Document, ReadStats, read_documents, read_jsonl_span
from .remote_files import RemoteFile
from .shards import token_dtype
from .tokenize import load_token_encoder

_SCAN = 1 << 20          # bytes read at a time when looking for line ends to cut a big file at


@dataclass(frozen=True)
class Piece:
    """A whole input file (``end`` -1), or bytes ``start`` to ``end`` of a ``.jsonl`` file whose first
    line is line number ``line``. ``remote``: the object when ``path`` is an object-storage URL."""
    path: str
    start: int = 0
    end: int = -1
    line: int = 1
    remote: RemoteFile | None = None

    def where(self) -> str:
        return self.path if self.end < 0 else f"{self.path} (lines from {self.line:,}, bytes {self.start:,}-{self.end:,})"


@dataclass(frozen=True)
class Partition:
    number: int
    pieces: tuple[Piece, ...]

    def where(self) -> str:
        shown = ", ".join(p.where() for p in self.pieces[:3])
        more = f" and {len(self.pieces) - 3:,} more files" if len(self.pieces) > 3 else ""
        return f"partition {self.number} ({shown}{more})"


def plan_partitions(files: list, partition_bytes: int) -> list[Partition]:
    """Consecutive inputs grouped into partitions of about ``partition_bytes``, in input order."""
    groups: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for f in files:
        big_jsonl = isinstance(f, Path) and f.name.endswith(".jsonl") and f.stat().st_size > partition_bytes
        if isinstance(f, str) or big_jsonl:     # hf:NAME streams; a big local file is cut (not an object)
            if current:
                groups.append(current)
                current, size = [], 0
            groups.extend([p] for p in (_cut_lines(f, partition_bytes) if big_jsonl else [Piece(f)]))
            continue
        current.append(Piece(str(f), remote=f if isinstance(f, RemoteFile) else None))
        size += f.stat().st_size
        if size >= partition_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return [Partition(i, tuple(g)) for i, g in enumerate(groups)]


def _cut_lines(path: Path, target: int) -> list[Piece]:
    """Pieces of about ``target`` bytes, each ending just after a newline, with their first line's number."""
    pieces, start, line = [], 0, 1
    pos, newlines = 0, 0                   # bytes read before this block, and the newlines in them
    with open(path, "rb") as f:
        while block := f.read(_SCAN):
            at = 0
            while (want := start + target - pos) < len(block):
                cut = block.find(b"\n", max(at, want))
                if cut < 0:
                    break
                pieces.append(Piece(str(path), start, pos + cut + 1, line))
                line = newlines + block.count(b"\n", 0, cut + 1) + 1
                start, at = pos + cut + 1, cut + 1
            newlines += block.count(b"\n")
            pos += len(block)
    if start < pos:
        pieces.append(Piece(str(path), start, pos, line))
    return pieces


def cuts_keep_tokens(tokenizer) -> bool:
    """Whether this tokenizer gives the same tokens for text cut before a single space as for the whole.
    Not so for one that prepends a marker to every input (Llama-2's ``Prepend("▁")`` normalizer)."""
    probes = ["Hello world, this is 42 words.", "a b\nc d", "Größe über 3.5 km², déjà vu"]
    for text in probes:
        pieces = re.split(r"(?<=\S)(?= \S)", text)     # cut before every single space, as below
        whole = tokenizer.encode(text, add_special_tokens=False).ids
        if [i for p in pieces for i in tokenizer.encode(p, add_special_tokens=False).ids] != whole:
            return False
    return True


def split_for_tokenizer(text: str, limit: int) -> list[str]:
    """Cut a long text into pieces of at most about ``limit`` characters, each cut just before a single
    space between two non-space characters. Byte-level BPE (GPT-2, GPT-NeoX), SentencePiece-style
    and whitespace pre-tokenizers all split there, so the pieces' tokens equal the whole text's. A
    stretch of ``limit`` characters with no such space (no natural text) is cut where it ends."""
    pieces, start, n = [], 0, len(text)
    while n - start > limit:
        end = start + limit
        cut = text.rfind(" ", start + limit // 2, end)
        while cut > 0 and (text[cut - 1].isspace() or text[cut + 1].isspace()):
            cut = text.rfind(" ", start + limit // 2, cut)
        cut = end if cut <= start else cut
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


@dataclass(frozen=True)
class StageSettings:
    """What a partition task needs: the reading, filter, dedup and tokenizer settings of the run."""
    text_field: str
    hf_split: str
    skip_bad: bool
    max_record_bytes: int
    filters: FilterConfig
    dedup: DedupConfig
    tokenizer: str
    eos_token: str | None
    vocab: int
    chunk_chars: int
    piece_chars: int | None          # None: documents are tokenized whole (see cuts_keep_tokens)
    batch_docs: int = 1024           # documents (or pieces) tokenized together, at most
    semantic_model: str | None = None    # --semantic-dedup: the embedding model whose token ids are kept too
    semantic_tokens: int = 512           # its first tokens of each document


@dataclass
class PartitionResult:
    """One partition, prepared: the documents the filters kept (their fingerprints and tokens, EOS
    included, in order), what was dropped (counted) and the read statistics. ``error``: the bad input
    met (the documents before it are here), raised by the driver when it reaches this point."""
    stats: ReadStats = field(default_factory=ReadStats)
    text_chars: int = 0
    empty: int = 0
    filtered: dict[str, int] = field(default_factory=dict)      # by rule, in the order rules first dropped one
    lang_kept: dict[str, int] = field(default_factory=dict)     # --lang: documents per language identified,
    lang_dropped: dict[str, int] = field(default_factory=dict)  # that it kept / dropped
    digests: np.ndarray | None = None        # (kept, 16) uint8: exact-dedup digests
    signature: np.ndarray | None = None      # (kept, num_perm) uint32: MinHash values (near dedup)
    band_keys: np.ndarray | None = None      # (kept, bands) uint64: their LSH band keys (near_dedup.band_keys)
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))   # kept + 1 token offsets
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint32))   # uint16 or uint32
    vocab_errors: dict[int, str] = field(default_factory=dict)  # kept document -> its out-of-vocabulary error
    error: Exception | None = None
    # --semantic-dedup: kept document i's ids for the embedding model are embed_ids[embed_offsets[i]:...[i + 1]]
    embed_offsets: np.ndarray | None = None
    embed_ids: np.ndarray | None = None

    @property
    def kept(self) -> int:
        return len(self.offsets) - 1

    def digest(self, i: int) -> bytes:
        assert self.digests is not None, "exact dedup was off when this partition was prepared"
        return self.digests[i].tobytes()

    def to_bytes(self) -> bytes:
        meta = {"stats": asdict(self.stats), "text_chars": self.text_chars, "empty": self.empty,
                "filtered": list(self.filtered.items()), "vocab_errors": list(self.vocab_errors.items()),
                "lang_kept": self.lang_kept, "lang_dropped": self.lang_dropped}
        arrays = {"offsets": self.offsets, "tokens": self.tokens}
        optional = (("digests", self.digests), ("signature", self.signature), ("band_keys", self.band_keys),
                    ("embed_offsets", self.embed_offsets), ("embed_ids", self.embed_ids))
        arrays.update({k: v for k, v in optional if v is not None})
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PartitionResult:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            return cls(stats=ReadStats(**meta["stats"]), text_chars=meta["text_chars"], empty=meta["empty"],
                       filtered=dict(meta["filtered"]), lang_kept=meta["lang_kept"],
                       lang_dropped=meta["lang_dropped"], offsets=z["offsets"], tokens=z["tokens"],
                       digests=z["digests"] if "digests" in z else None,
                       signature=z["signature"] if "signature" in z else None,
                       band_keys=z["band_keys"] if "band_keys" in z else None,
                       embed_offsets=z["embed_offsets"] if "embed_offsets" in z else None,
                       embed_ids=z["embed_ids"] if "embed_ids" in z else None,
                       vocab_errors={int(k): v for k, v in meta["vocab_errors"]})


def partition_key(claim: dict, part: Partition) -> str:
    """Names a stored result: the run's settings and inputs (``claim``) and the partition's pieces."""
    text = json.dumps([claim, [asdict(p) for p in part.pieces]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def analyse(text: str, filters: FilterConfig, dedup: DedupConfig, fields: dict[str, str] | None = None
            ) -> tuple[str | None, tuple | None, str | None]:
    """Per-document work that needs no shared state: (why it is dropped or None, dedup fingerprint, the
    language identified where --lang asked). ``fields``: the record's values that --keep-values selects by."""
    if filters.keep_values and (rule := unselected(fields or {}, filters.keep_values)) is not None:
        return rule, None, None      # not of this source at all: counted before it could count as empty
    if not text or text.isspace():     # not text.strip(): that copies a text of any size
        return "empty", None, None
    rule, lang = judge(text, filters) if filters.active else Verdict(None)
    if rule is not None:
        return rule, None, lang
    return None, fingerprint(text, dedup) if (dedup.exact or dedup.near) else None, lang


def _documents(part: Partition, s: StageSettings, stats: ReadStats):
    fields = tuple(s.filters.keep_values)
    for piece in part.pieces:
        if piece.end >= 0:
            yield from read_jsonl_span(Path(piece.path), piece.start, piece.end, piece.line, s.text_field,
                                       fields=fields, skip_bad=s.skip_bad, stats=stats,
                                       max_record_bytes=s.max_record_bytes)
        else:
            path = piece.path if piece.path.startswith("hf:") else Path(piece.path)
            if piece.remote is not None:
                path = piece.remote
            yield from read_documents([path], s.text_field, fields=fields, skip_bad=s.skip_bad, stats=stats,
                                      hf_split=s.hf_split, max_record_bytes=s.max_record_bytes)


def prepare_partition(part: Partition, s: StageSettings) -> PartitionResult:
    """Read, filter, fingerprint and tokenize one partition (the stages that need no other partition)."""
    result = PartitionResult()
    filtered: Counter[str] = Counter()
    lang_kept: Counter[str] = Counter()
    lang_dropped: Counter[str] = Counter()
    kept: list[tuple[Document, tuple | None]] = []
    try:
        for doc in _documents(part, s, result.stats):
            result.text_chars += len(doc.text)
            dropped, fp, lang = analyse(doc.text, s.filters, s.dedup, doc.fields)
            if lang is not None:
                (lang_dropped if dropped == "lang" else lang_kept)[lang] += 1
            if dropped == "empty":
                result.empty += 1
            elif dropped is not None:
                filtered[dropped] += 1
            else:
                kept.append((doc, fp))
    except Exception as err:       # bad input: the driver raises it after the documents before it
        result.error = err
    result.stats.files = 0         # the driver counts the input files (a cut file is in several partitions)
    result.filtered = dict(filtered)
    result.lang_kept, result.lang_dropped = dict(lang_kept), dict(lang_dropped)
    if s.dedup.exact:
        result.digests = np.frombuffer(b"".join(fp[0] for _, fp in kept), dtype=np.uint8).reshape(len(kept), 16)
    if s.dedup.near:
        result.signature = np.array([fp[1] for _, fp in kept], dtype=np.uint32).reshape(len(kept), s.dedup.num_perm)
        result.band_keys = band_keys(result.signature, s.dedup)
    _tokenize([doc for doc, _ in kept], s, result)
    if s.semantic_model is not None:
        from .semantic_dedup import tokenize

        ids = tokenize([doc.text for doc, _ in kept], s.semantic_model, s.semantic_tokens)
        result.embed_offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
        result.embed_ids = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, dtype=np.int32)
    return result


@functools.lru_cache(maxsize=2)
def _encoder(name: str, eos_token: str | None):
    """Loaded once per worker process: loading costs more than preparing a small partition."""
    return load_token_encoder(name, eos_token)


def _tokenize(docs: list[Document], s: StageSettings, result: PartitionResult) -> None:
    """Each document's tokens and EOS, in groups of about ``chunk_chars`` characters (bounds memory);
    a long document goes in pieces cut where the tokens do not change."""
    tok = _encoder(s.tokenizer, s.eos_token)
    parts: list[np.ndarray] = []
    lengths = np.zeros(len(docs), dtype=np.int64)
    group: list[tuple[int, str, bool]] = []
    chars = 0

    def encode() -> None:
        encs = tok.tokenizer.encode_batch_fast([text for _, text, _ in group], add_special_tokens=False)
        for (i, _, last), enc in zip(group, encs, strict=True):
            ids = np.asarray(enc.ids, dtype=np.uint32)
            if len(ids) and int(ids.max()) >= s.vocab and i not in result.vocab_errors:
                result.vocab_errors[i] = (f"{docs[i].source}:{docs[i].line}: token id {int(ids.max())} is outside "
                                          f"the declared vocab_size={s.vocab}; use a matching --tokenizer or a "
                                          "larger --vocab-size")
            parts.append(np.append(ids, np.uint32(tok.eos_id)) if last else ids)
            lengths[i] += len(parts[-1])
        group.clear()

    for i, doc in enumerate(docs):
        pieces = split_for_tokenizer(doc.text, s.piece_chars) if s.piece_chars else [doc.text]
        for k, text in enumerate(pieces):
            group.append((i, text, k == len(pieces) - 1))
            chars += len(text)
            if chars >= s.chunk_chars or len(group) >= s.batch_docs:
                encode()
                chars = 0
    if group:
        encode()
    result.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    # as the shards hold them: half the bytes to send and store with a vocabulary of up to 65,536 (an id
    # beyond the vocabulary is an error before it is used)
    result.tokens = tokens.astype(token_dtype(s.vocab), copy=False)
