"""`mpt prep`: read text, filter, deduplicate, tokenize and write token shards, with a summary.

Nothing is dropped without being counted: the summary lists documents read, bad records skipped,
empty documents, documents dropped by each filter rule, exact and near duplicates removed, and
in ``concat`` mode the tokens of the final sample that did not fill ``seq_len``.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .dedup import DedupConfig, Deduplicator, fingerprint
from .filters import FilterConfig, first_failed_rule
from .readers import DataInputError, Document, ReadStats, expand_inputs, read_documents
from .shards import ShardWriter
from .tokenize import DEFAULT_TOKENIZER, load_token_encoder


@dataclass
class PrepConfig:
    inputs: list[str]
    out: str
    tokenizer: str = DEFAULT_TOKENIZER
    text_field: str = "text"
    hf_split: str = "train"         # for hf:NAME inputs
    mode: str = "concat"            # "concat": EOS-joined documents cut into seq_len samples; "docs": one per sample
    seq_len: int = 2048
    vocab_size: int | None = None   # declared vocabulary (e.g. the model's); default: the tokenizer's
    eos_token: str | None = None    # default: <|endoftext|>, </s>, ... whichever the tokenizer has
    shard_bytes: int = 1 << 26
    skip_bad: bool = False
    batch_docs: int = 1024
    workers: int | None = None      # processes for filters and dedup fingerprints; default: all cores
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    progress: bool = True

    def validate(self) -> None:
        if not self.inputs:
            raise ValueError("prep needs at least one INPUT (file, folder or glob)")
        if self.mode not in ("concat", "docs"):
            raise ValueError(f"mode={self.mode!r}: expected 'concat' (pack into seq_len samples) or 'docs'")
        if self.mode == "concat" and self.seq_len < 1:
            raise ValueError(f"seq_len={self.seq_len} must be >= 1")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 1")
        if self.shard_bytes < 1024:
            raise ValueError(f"shard_bytes={self.shard_bytes} is too small; use at least 1024 (default 64 MiB)")
        if self.batch_docs < 1:
            raise ValueError(f"batch_docs={self.batch_docs} must be >= 1")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers={self.workers} must be >= 1")
        self.filters.validate()
        self.dedup.validate()


@dataclass
class PrepSummary:
    files: int = 0
    records_read: int = 0
    bad_json_skipped: int = 0
    missing_field_skipped: int = 0
    invalid_utf8_replaced: int = 0
    empty_dropped: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    exact_duplicates: int = 0
    near_duplicates: int = 0
    documents_written: int = 0
    document_tokens: int = 0        # tokens of kept documents, EOS included
    samples: int = 0
    tokens_written: int = 0
    tail_tokens_dropped: int = 0    # concat mode: the last tokens that did not fill a whole sample
    bytes_written: int = 0
    shards: int = 0
    text_chars: int = 0
    seconds: float = 0.0
    bad_examples: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        filt = ", ".join(f"{k} {v:,}" for k, v in sorted(self.filtered.items())) or "none"
        return [
            f"read      {self.records_read:,} records from {self.files} files ({self.text_chars / 1e6:,.1f} M characters of text)",
            f"skipped   {self.bad_json_skipped:,} malformed JSON, {self.missing_field_skipped:,} without the text field; "
            f"{self.invalid_utf8_replaced:,} with invalid UTF-8 kept with replacement characters",
            f"dropped   {self.empty_dropped:,} empty; by filter: {filt}",
            f"dedup     {self.exact_duplicates:,} exact and {self.near_duplicates:,} near duplicates removed",
            f"wrote     {self.documents_written:,} documents, {self.tokens_written:,} tokens in {self.samples:,} samples, "
            f"{self.shards} shards, {self.bytes_written / 1e6:,.1f} MB"
            + (f"; {self.tail_tokens_dropped:,} final tokens did not fill a sample and were not written"
               if self.tail_tokens_dropped else ""),
            f"took      {self.seconds:,.1f} s ({self.text_chars / 1e6 / max(self.seconds, 1e-9):,.1f} M characters/s)",
        ]


class _Packer:
    """Turns tokenized documents into samples for the writer."""

    def __init__(self, writer: ShardWriter, cfg: PrepConfig, eos_id: int):
        self.writer, self.cfg, self.eos = writer, cfg, eos_id
        self.carry = np.zeros(0, dtype=np.int64)
        self.samples = 0

    def add(self, docs: list[np.ndarray]) -> None:
        with_eos = [np.append(d, self.eos) for d in docs]
        if self.cfg.mode == "docs":
            for d in with_eos:
                self.writer.add(d)
            self.samples += len(with_eos)
            return
        stream = np.concatenate([self.carry, *with_eos])
        n = len(stream) // self.cfg.seq_len
        for i in range(n):
            self.writer.add(stream[i * self.cfg.seq_len:(i + 1) * self.cfg.seq_len])
        self.samples += n
        self.carry = stream[n * self.cfg.seq_len:]


def _analyse(text: str, filters: FilterConfig, dedup: DedupConfig) -> tuple[str | None, tuple | None]:
    """Per-document work that needs no shared state: (why it is dropped or None, dedup fingerprint)."""
    if not text.strip():
        return "empty", None
    rule = first_failed_rule(text, filters) if filters.active else None
    if rule is not None:
        return rule, None
    return None, fingerprint(text, dedup) if (dedup.exact or dedup.near) else None


def prep(cfg: PrepConfig) -> PrepSummary:
    """Run the whole pipeline; returns (and writes to ``out/summary.json``) the summary."""
    cfg.validate()
    files = expand_inputs(cfg.inputs)        # fail on a missing input before loading anything
    workers = cfg.workers or os.cpu_count() or 1
    pool = None
    if workers > 1 and (cfg.filters.active or cfg.dedup.near):
        # started before the tokenizer exists, so forking copies no tokenizer threads; the tokenizer
        # itself uses every core through its own (Rust) thread pool
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        pool = ctx.Pool(workers)
    try:
        return _prep(cfg, files, pool, workers)
    finally:
        if pool is not None:
            pool.terminate()


def _prep(cfg: PrepConfig, files, pool, workers: int) -> PrepSummary:
    tok = load_token_encoder(cfg.tokenizer, cfg.eos_token)
    vocab = cfg.vocab_size or tok.vocab_size
    if tok.eos_id >= vocab:
        raise ValueError(f"the tokenizer's EOS id {tok.eos_id} is outside the declared vocab_size={vocab}")
    writer = ShardWriter(cfg.out, vocab_size=vocab, eos_id=tok.eos_id, mode=cfg.mode,
                         seq_len=cfg.seq_len if cfg.mode == "concat" else None, tokenizer=tok.name,
                         shard_bytes=cfg.shard_bytes)
    packer = _Packer(writer, cfg, tok.eos_id)
    dedup = Deduplicator(cfg.dedup) if (cfg.dedup.exact or cfg.dedup.near) else None
    analyse = functools.partial(_analyse, filters=cfg.filters, dedup=cfg.dedup)
    stats, filtered, summary = ReadStats(), Counter(), PrepSummary()
    start = time.perf_counter()
    batch: list[Document] = []
    window: list[Document] = []

    def flush() -> None:
        encs = tok.tokenizer.encode_batch_fast([d.text for d in batch], add_special_tokens=False)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        for doc, arr in zip(batch, ids, strict=True):
            if len(arr) and int(arr.max()) >= vocab:
                raise DataInputError(f"{doc.source}:{doc.line}: token id {int(arr.max())} is outside the declared "
                                     f"vocab_size={vocab}; use a matching --tokenizer or a larger --vocab-size")
        summary.document_tokens += sum(len(a) + 1 for a in ids)
        summary.documents_written += len(ids)
        packer.add(ids)
        batch.clear()

    def process_window() -> None:
        texts = [d.text for d in window]
        if pool is not None:
            verdicts = pool.map(analyse, texts, chunksize=max(1, len(texts) // (4 * workers)))
        else:
            verdicts = [analyse(t) for t in texts]
        for doc, (dropped, fp) in zip(window, verdicts, strict=True):
            if dropped == "empty":
                summary.empty_dropped += 1
            elif dropped is not None:
                filtered[dropped] += 1
            elif dedup is None or dedup.check_fingerprint(fp) is None:
                batch.append(doc)
                if len(batch) >= cfg.batch_docs:
                    flush()
        window.clear()

    from tqdm.auto import tqdm

    bar = tqdm(desc="prep", unit=" docs", disable=not cfg.progress, dynamic_ncols=True)
    # documents go through in windows, so memory stays bounded however large the input
    for doc in read_documents(files, cfg.text_field, skip_bad=cfg.skip_bad, stats=stats, hf_split=cfg.hf_split):
        summary.text_chars += len(doc.text)
        window.append(doc)
        if len(window) >= 4 * cfg.batch_docs:
            process_window()
            bar.update(4 * cfg.batch_docs)
            bar.set_postfix(tokens=f"{summary.document_tokens:,}", refresh=False)
    bar.update(len(window))
    process_window()
    if batch:
        flush()
    bar.close()
    index = writer.close()

    summary.files = stats.files
    summary.records_read = stats.records
    summary.bad_json_skipped = stats.bad_json
    summary.missing_field_skipped = stats.missing_field
    summary.invalid_utf8_replaced = stats.invalid_utf8
    summary.bad_examples = stats.bad_examples
    summary.filtered = dict(filtered)
    summary.exact_duplicates = dedup.exact_removed if dedup else 0
    summary.near_duplicates = dedup.near_removed if dedup else 0
    summary.samples = index.num_samples
    summary.tokens_written = index.num_tokens
    summary.tail_tokens_dropped = len(packer.carry)
    summary.bytes_written = sum(s.bytes for s in index.shards)
    summary.shards = len(index.shards)
    summary.seconds = time.perf_counter() - start
    (Path(cfg.out) / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
