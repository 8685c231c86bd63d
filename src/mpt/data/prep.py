"""`mpt prep`: read text, filter, deduplicate, tokenize and write token shards, with a summary.

Nothing is dropped without being counted: the summary lists documents read, bad records skipped,
empty documents, documents dropped by each filter rule, exact, near and semantic duplicates removed,
and in ``concat`` mode the tokens of the final sample that did not fill ``seq_len``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .. import storage
from ..config import option
from ..storage import write_atomic
from .dedup import DedupConfig
from .filters import FilterConfig, parse_keep_values
from .prep_dedup import Drops, decide
from .prep_engine import Engine, LocalEngine, PartStore, ordered_results
from .prep_folder import (
    PROGRESS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    Progress,
    check_claim,
    open_folder,
    remove_run,
    save_progress,
)
from .prep_stages import (
    PartitionResult,
    StageSettings,
    cuts_keep_tokens,
    plan_partitions,
    split_for_tokenizer,
)
from .readers import MAX_RECORD_BYTES, DataInputError, ReadStats, expand_inputs
from .remote_files import RemoteFile
from .shards import INDEX_FILE, ShardIndex, ShardWriter, read_index
from .tokenize import DEFAULT_TOKENIZER, TokenEncoder, load_token_encoder

__all__ = ["PrepCommand", "PrepConfig", "PrepSummary", "cuts_keep_tokens", "prep", "prep_command",
           "split_for_tokenizer"]

_INPUTS = "files, folders or globs (quote globs); hf:NAME[:CONFIG] for a Hugging Face dataset"
_OUT = ("output folder or s3:// URL: empty, or holding a run of this same command (an interrupted one continues, a "
        "finished one is left as it is)")


@dataclass
class PrepConfig:
    inputs: list[str] = option(help=_INPUTS, positional=True, metavar="INPUT")
    out: str = option(help=_OUT, required=True)
    tokenizer: str = option(DEFAULT_TOKENIZER, "tokenizer.json file, folder holding one, or hub name (downloads "
                            "when online)")
    text_field: str = option("text", "JSON field / parquet column holding the text")
    hf_split: str = option("train", "split of hf:NAME inputs")
    mode: str = option("concat", "concat: EOS-joined documents packed into --seq-len samples; docs: one document "
                       "per sample (whole, for packed training with document masks: data.packing)",
                       choices=("concat", "docs"))
    seq_len: int = option(2048, "tokens per sample in concat mode")
    vocab_size: int | None = option(None, "declared vocabulary (e.g. the model's); a token id at or above it is an "
                                    "error (default: the tokenizer's)")
    eos_token: str | None = option(None, "token appended to each document (default: <|endoftext|> or </s>)")
    shard_bytes: int = option(1 << 26, "shard size in bytes (or --shard-mb)")
    skip_bad: bool = option(False, "skip (and count) malformed JSON lines, records without the text field, records "
                            "over --max-record-bytes, binary files and damaged .gz / .parquet files (from the damage "
                            "on) instead of stopping")
    max_record_bytes: int = option(MAX_RECORD_BYTES, "most bytes one record may hold once decompressed (a jsonl "
                                   "line, a whole text file, a JSON array file): a larger one is an error, or with "
                                   "--skip-bad skipped and counted; it is held whole, a few times over, so this "
                                   "bounds memory")
    batch_docs: int = option(1024, "documents tokenized together")
    workers: int | None = option(None, "partitions prepared at once: processes (local engine) or Ray tasks "
                                 "(default: all cores; with Ray, all the cluster's CPUs)")
    engine: str = option("local", "local: this machine's processes; ray: Ray tasks (pip install 'mpt[ray]'), "
                         "the same output byte for byte", choices=("local", "ray"))
    ray_address: str | None = option(None, "the Ray cluster to join: auto (made with `ray start` on this machine) "
                                     "or HOST:PORT (default: start Ray on this machine)")
    partition_bytes: int = option(1 << 23, "input bytes per partition (the unit a worker prepares, and a rerun "
                                  "after a kill does not prepare again)")
    chunk_chars: int = option(1 << 18, "characters tokenized at once (bounds memory; long documents are cut into "
                              "pieces)")
    staging: str | None = option(None, "local folder where a remote --out is built before upload (default: a "
                                 "temporary folder)")
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    semantic_dedup: str | None = option(None, "also drop semantic duplicates (SemDeDup): documents embedded by this "
                                        "Hugging Face model folder (an encoder, or a causal LM's base model), "
                                        "k-means clustered, the most similar to an earlier kept one dropped "
                                        "(mpt.data.semantic_dedup; pip install 'mpt[semantic]')", metavar="MODEL")
    semantic_drop: float = option(0.2, "with --semantic-dedup: the share of the documents left after exact and "
                                  "near dedup to drop", metavar="FRACTION")
    progress: bool = option(True, "no progress bar")

    def validate(self) -> None:
        if not self.inputs:
            raise ValueError("prep needs at least one INPUT (file, folder or glob)")
        if not self.out:
            raise ValueError("prep needs --out: the folder (or s3:// URL) to write the shards to")
        if self.mode not in ("concat", "docs"):
            raise ValueError(f"mode={self.mode!r}: expected 'concat' (pack into seq_len samples) or 'docs'")
        if self.mode == "concat" and self.seq_len < 1:
            raise ValueError(f"seq_len={self.seq_len} must be >= 1")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 1")
        if self.shard_bytes < 1024:
            raise ValueError(f"shard_bytes={self.shard_bytes} is too small; use at least 1024 (default 64 MiB)")
        if self.max_record_bytes < 1:
            raise ValueError(f"max_record_bytes={self.max_record_bytes} must be >= 1 (default {MAX_RECORD_BYTES:,})")
        if self.batch_docs < 1:
            raise ValueError(f"batch_docs={self.batch_docs} must be >= 1")
        if self.chunk_chars < 1000:
            raise ValueError(f"chunk_chars={self.chunk_chars} is too small; use at least 1000 (default 256 Ki)")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers={self.workers} must be >= 1")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine={self.engine!r}: expected 'local' or 'ray'")
        if self.partition_bytes < 1:
            raise ValueError(f"partition_bytes={self.partition_bytes} must be >= 1")
        self.filters.validate()
        self.dedup.validate()
        if not 0 < self.semantic_drop < 1:
            raise ValueError(f"semantic_drop={self.semantic_drop} must be between 0 and 1 (exclusive)")
        if self.semantic_dedup is not None:
            from .semantic_dedup import check_model_dir

            check_model_dir(self.semantic_dedup)


@dataclass
class PrepCommand(PrepConfig):
    """`mpt prep`'s options: a :class:`PrepConfig` plus shorthand flags that set its nested sections.

    The command line is generated from these fields (:mod:`mpt.typed_cli`); the shorthands keep the
    flag names users already type (``--mc4``, ``--min-words``, ``--no-exact-dedup``, ``--shard-mb``
    ...) and are folded into ``filters``, ``dedup`` and ``shard_bytes`` by :meth:`to_config`, over
    what ``--config`` and ``key=value`` overrides gave. ``inputs`` and ``out`` get empty defaults here
    only so that they may come from ``--config``; ``validate`` still requires them.
    """

    inputs: list[str] = option(help=_INPUTS, positional=True, metavar="INPUT", factory=list)
    out: str = option("", _OUT, required=True)
    shard_mb: float | None = option(None, "shard size in MiB, setting shard_bytes (default: 64)")
    mc4: bool = option(False, "the MPT-7B mC4 quality rules: most common character alphabetic, >= 92%% "
                       "alphanumeric, most common word <= 7.5%% of words (> 500 words) or <= 30%%, 200 <= words "
                       "<= 50,000 (FilterConfig.mc4())")
    min_words: int | None = option(None, "override the minimum word count (mC4: 200)")
    max_words: int | None = option(None, "override the maximum word count (mC4: 50,000)")
    min_chars: int | None = option(None, "drop documents shorter than this (off by default)")
    max_chars: int | None = option(None, "drop documents longer than this (off by default)")
    min_paragraphs: int | None = option(None, "drop documents of fewer paragraphs: runs of non-blank lines, "
                                        "separated by blank or whitespace-only lines (S2ORC: 5; off by default)")
    keep_values: list[str] = option(help="keep only the records whose JSON field / parquet column FIELD holds one "
                                    "of these values, e.g. lang=Python,Java for The Stack's languages (repeat for "
                                    "more fields or values); a record without FIELD is a bad record, as one without "
                                    "--text-field is", factory=list, repeat=True, metavar="FIELD=V1,V2")
    lang: list[str] = option(help="keep only documents identified as this language (ISO 639 code, e.g. en; "
                             "repeat for several)", factory=list, repeat=True, metavar="CODE")
    lang_min_score: float | None = option(None, "least probability of the identified language (0 to 1) for "
                                          "--lang to keep a document (default: 0, the likeliest language wins)")
    exact_dedup: bool = option(True, "keep exact duplicates (removed by default)", names=("--no-exact-dedup",))
    near_dedup: bool = option(False, "also remove near duplicates: MinHash LSH over the whole corpus, of each "
                              "cluster of near copies only the earliest kept (mpt.data.near_dedup)")
    near_dedup_threshold: float | None = option(None, "estimated Jaccard similarity of word 5-grams above which a "
                                                "document is a near duplicate (default: 0.8)")
    mix: str | None = option(None, "a data-mix recipe (a shipped name, e.g. mpt-7b-mix, or a YAML file): prep each "
                             "of its sources into --out/<source>/ and write --out/mix.yaml for data.sources "
                             "(no INPUT; other options given here apply to every source)", metavar="NAME_OR_YAML")
    allow_missing: bool = option(False, "with --mix: skip a source whose inputs match nothing (recorded in "
                                 "mix-summary.json) and renormalise the other proportions")

    def to_config(self) -> PrepConfig:
        base = {f.name: getattr(self, f.name) for f in fields(PrepConfig)}
        cfg = copy.deepcopy(PrepConfig(**base))   # the folding below must not touch self's sections
        if self.mc4:
            cfg.filters = FilterConfig.mc4()   # the whole rule set, as the flag always meant
        for name in ("min_words", "max_words", "min_chars", "max_chars", "min_paragraphs", "lang", "lang_min_score"):
            if getattr(self, name) not in (None, []):
                setattr(cfg.filters, name, getattr(self, name))
        if self.keep_values:
            cfg.filters.keep_values = {**cfg.filters.keep_values, **parse_keep_values(self.keep_values)}
        if self.shard_mb is not None:
            cfg.shard_bytes = int(self.shard_mb * (1 << 20))
        if not self.exact_dedup:
            cfg.dedup.exact = False
        if self.near_dedup:
            cfg.dedup.near = True
        if self.near_dedup_threshold is not None:
            cfg.dedup.threshold = self.near_dedup_threshold
        return cfg


def prep_command(args: PrepCommand) -> int:
    """`mpt prep`: run :func:`prep` and print its summary."""
    if args.mix is not None or args.allow_missing:
        return _mix_command(args)
    cfg = args.to_config()
    summary = prep(cfg)
    print("\n".join(summary.lines()))
    print(f"shards, index.json and summary.json are in {cfg.out}")
    return 0


def _mix_command(args: PrepCommand) -> int:
    from .prep_mix import mix_command

    if args.mix is None:
        raise ValueError("--allow-missing goes with --mix NAME_OR_YAML")
    if args.inputs:
        raise ValueError(f"prep --mix takes its inputs from the recipe; remove {' '.join(args.inputs)}")
    defaults = PrepCommand()
    given = {f.name: getattr(args, f.name) for f in fields(PrepCommand)   # the options set on the command line
             if f.name not in ("inputs", "out", "mix", "allow_missing")
             and getattr(args, f.name) != getattr(defaults, f.name)}
    return mix_command(args.mix, args.out, args.allow_missing, given)


@dataclass
class PrepSummary:
    files: int = 0
    records_read: int = 0
    binary_skipped: int = 0         # text-suffix files holding NUL bytes (with --skip-bad; else an error)
    bad_json_skipped: int = 0
    missing_field_skipped: int = 0
    too_large_skipped: int = 0      # records over --max-record-bytes (with --skip-bad; else an error)
    corrupt_skipped: int = 0        # files cut short or corrupt (.gz, .parquet): each skipped from the damage on
    invalid_utf8_replaced: int = 0
    empty_dropped: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    # --lang: documents per identified language that it kept (before dedup) and dropped; only those that
    # passed the other filters are identified. Sorted by language, so summary.json is the same every run.
    languages_kept: dict[str, int] = field(default_factory=dict)
    languages_dropped: dict[str, int] = field(default_factory=dict)
    exact_duplicates: int = 0
    near_duplicates: int = 0
    semantic_duplicates: int = 0    # --semantic-dedup: dropped among those left after exact and near dedup
    documents_written: int = 0
    document_tokens: int = 0        # tokens of kept documents, EOS included
    samples: int = 0
    tokens_written: int = 0
    tail_tokens_dropped: int = 0    # concat mode: the last tokens that did not fill a whole sample
    bytes_written: int = 0
    shards: int = 0
    text_chars: int = 0
    seconds: float = 0.0            # not in summary.json: a rerun gives the same file
    bad_examples: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "seconds"}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> PrepSummary:
        return cls(**json.loads(text))

    def lines(self) -> list[str]:
        filt = ", ".join(f"{k} {v:,}" for k, v in sorted(self.filtered.items())) or "none"
        return [
            f"read      {self.records_read:,} records from {self.files} files ({self.text_chars / 1e6:,.1f} M characters of text)",
            f"skipped   {self.binary_skipped:,} binary files, {self.bad_json_skipped:,} malformed JSON, {self.missing_field_skipped:,} without the text field, "
            f"{self.too_large_skipped:,} over --max-record-bytes, {self.corrupt_skipped:,} damaged files; "
            f"{self.invalid_utf8_replaced:,} with invalid UTF-8 kept with replacement characters",
            f"dropped   {self.empty_dropped:,} empty; by filter: {filt}",
            *([f"language  kept {_counts(self.languages_kept)}; dropped {_counts(self.languages_dropped)}"]
              if self.languages_kept or self.languages_dropped else []),
            f"dedup     {self.exact_duplicates:,} exact, {self.near_duplicates:,} near and "
            f"{self.semantic_duplicates:,} semantic duplicates removed",
            f"wrote     {self.documents_written:,} documents, {self.tokens_written:,} tokens in {self.samples:,} samples, "
            f"{self.shards} shards, {self.bytes_written / 1e6:,.1f} MB"
            + (f"; {self.tail_tokens_dropped:,} final tokens did not fill a sample and were not written"
               if self.tail_tokens_dropped else ""),
            f"took      {self.seconds:,.1f} s ({self.text_chars / 1e6 / self.seconds:,.1f} M characters/s)"
            if self.seconds else  # read back from a finished folder: no time was spent, none is reported
            "took      nothing: the folder held this same run, finished (the summary above is the one it wrote)",
        ]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


class _Packer:
    """Turns tokenized documents, piece by piece, into samples for the writer.

    It also remembers where each document starts in the token stream (every kept document's tokens
    and EOS, in order), so that when the writer finishes a shard it can say which document and
    token the next shard starts at: the point an interrupted run continues from.
    """

    def __init__(self, writer: ShardWriter, cfg: PrepConfig, eos_id: int, position: int = 0):
        self.writer, self.cfg, self.eos = writer, cfg, eos_id
        self.carry = np.zeros(0, dtype=np.int64)
        self.position = position                  # tokens fed so far, all documents
        self.pending: list[np.ndarray] = []       # concat mode: fed, not yet cut into samples
        self.starts: deque[tuple[int, int]] = deque()   # (document number, its first token's position)

    def piece(self, doc: int, tokens: np.ndarray, first: bool, last: bool) -> None:
        """Feed a piece of document ``doc`` (the last piece ends with EOS)."""
        if first:
            self.starts.append((doc, self.position))
        self.position += len(tokens)
        if self.cfg.mode == "docs":
            self.writer.extend(tokens)
            if last:
                self.writer.end_sample()
        else:
            self.pending.append(tokens)

    def cut(self) -> None:
        """Concat mode: write the whole samples of what was fed; the rest waits for more tokens."""
        if not self.pending:
            return
        stream = np.concatenate([self.carry, *self.pending])
        self.pending = []
        n = len(stream) // self.cfg.seq_len
        for i in range(n):
            self.writer.add(stream[i * self.cfg.seq_len:(i + 1) * self.cfg.seq_len])
        self.carry = stream[n * self.cfg.seq_len:]

    def resume_point(self, written: int) -> tuple[int, int]:
        """(document, token in it) at stream position ``written`` (the tokens in finished shards)."""
        while len(self.starts) > 1 and self.starts[1][1] <= written:
            self.starts.popleft()
        doc, start = self.starts[0]
        return doc, written - start


def _claim(cfg: PrepConfig, files: list) -> dict:
    """What makes two runs the same command: the arguments that shape the output, and the inputs as found."""
    # where and how the work runs does not change the output
    args = {k: v for k, v in asdict(cfg).items()
            if k not in ("progress", "workers", "staging", "out", "engine", "ray_address", "partition_bytes")}
    seen = []
    for f in files:
        if isinstance(f, RemoteFile):
            seen.append([f.url, f.size, f.version])
        elif isinstance(f, Path):
            st = f.stat()
            seen.append([str(f), st.st_size, st.st_mtime_ns])
        else:
            seen.append([f])
    return json.loads(json.dumps({**args, "input_files": seen}))


def _staging(cfg: PrepConfig) -> Path:
    if cfg.staging:
        return Path(cfg.staging)
    key = hashlib.sha1(cfg.out.rstrip("/").encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mpt-prep-{key}"


def _remote_state(cfg: PrepConfig, claim: dict) -> PrepSummary | None:
    """Check a remote --out before any work: reachable, and empty or this same run (the summary if finished)."""
    names = storage.list_files(cfg.out)
    base = cfg.out.rstrip("/")
    recorded = storage.read_text(f"{base}/{RUN_FILE}") if RUN_FILE in names else None
    check_claim(cfg.out, names, recorded, claim)
    if INDEX_FILE in names:
        return PrepSummary.from_json(storage.read_text(f"{base}/{SUMMARY_FILE}"))
    return None


def prep(cfg: PrepConfig) -> PrepSummary:
    """Run the whole pipeline; returns (and writes to ``out/summary.json``) the summary.

    A remote ``out`` (s3://...) is built in a local staging folder, then uploaded with index.json
    last. Rerun with the same arguments, an interrupted run continues from its last finished shard.
    """
    cfg.validate()
    files = expand_inputs(cfg.inputs)        # fail on a missing input before loading anything
    claim = _claim(cfg, files)
    is_remote = not storage.is_local(cfg.out)
    if is_remote:
        done = _remote_state(cfg, claim)
        if done is not None:
            return done
    out = _staging(cfg) if is_remote else Path(storage.local_path(cfg.out))
    progress = open_folder(out, claim)
    if progress is None:
        summary = PrepSummary.from_json((out / SUMMARY_FILE).read_text())
    else:
        if progress.shards and cfg.progress:
            print(f"prep: continuing the interrupted run in {out} after its {len(progress.shards)} finished shards",
                  file=sys.stderr)
        summary = _run(cfg, files, out, progress, claim)
    if is_remote:
        shards = [s.file for s in read_index(out).shards]
        storage.upload_folder(out, cfg.out, [RUN_FILE, *shards, SUMMARY_FILE], last=INDEX_FILE)
        remove_run(out)      # uploaded: the local copy would only fill the disk
    return summary


def _engine(cfg: PrepConfig, partitions: int) -> Engine:
    if cfg.engine == "ray":
        from .prep_ray import RayEngine

        return RayEngine(cfg.ray_address, cfg.workers)
    return LocalEngine(max(1, min(cfg.workers or os.cpu_count() or 1, partitions)))


def _run(cfg: PrepConfig, files, out: Path, progress: Progress, claim: dict) -> PrepSummary:
    parts = plan_partitions(files, cfg.partition_bytes)
    engine = _engine(cfg, len(parts))      # before the tokenizer: a forked pool copies no tokenizer threads
    try:
        return _prep(cfg, files, parts, engine, out, progress, PartStore(out, claim))
    finally:
        engine.close()


def _prep(cfg: PrepConfig, files, parts, engine: Engine, out: Path, progress: Progress,
          store: PartStore) -> PrepSummary:
    from tqdm.auto import tqdm

    tok = load_token_encoder(cfg.tokenizer, cfg.eos_token)
    vocab = cfg.vocab_size or tok.vocab_size
    if tok.eos_id >= vocab:
        raise ValueError(f"the tokenizer's EOS id {tok.eos_id} is outside the declared vocab_size={vocab}")
    # pieces smaller than a group, so one long document still spreads over the tokenizer's threads;
    # None where cutting would change the tokens (then a long document is tokenized whole)
    piece_chars = max(1000, cfg.chunk_chars // 8) if cuts_keep_tokens(tok.tokenizer) else None
    settings = StageSettings(cfg.text_field, cfg.hf_split, cfg.skip_bad, cfg.max_record_bytes, cfg.filters,
                             cfg.dedup, cfg.tokenizer, cfg.eos_token, vocab, cfg.chunk_chars, piece_chars,
                             cfg.batch_docs, cfg.semantic_dedup)
    start = time.perf_counter()
    two_passes = cfg.dedup.near or cfg.semantic_dedup is not None
    where = f"{cfg.engine}, {engine.slots} at once"

    def new_bar(stage: str):
        label = f"prep {stage} ({where})" if stage else f"prep ({where})"
        return tqdm(desc=label, unit=" docs", disable=not cfg.progress, dynamic_ncols=True)

    bar = new_bar("1/2: prepare partitions" if two_passes else "")
    drops = None
    if two_passes:
        # a first pass decides what whole-corpus dedup drops; the second reads the partitions it stored
        drops = decide(ordered_results(engine, parts, settings, store), parts, engine, store, cfg, bar)
        first_reused, bar = store.reused, new_bar("2/2: pack and write")
    feed = _Feed(cfg, _open_shards(cfg, tok, vocab, out, progress), progress, drops)
    for done, result in enumerate(ordered_results(engine, parts, settings, store), start=1):
        feed.add(result)
        bar.update(result.stats.records)
        bar.set_postfix(partitions=f"{done}/{len(parts)}", tokens=f"{feed.packer.position:,}", refresh=False)
    bar.close()
    if drops is not None:
        store.reused = first_reused
    if store.reused and cfg.progress:
        print(f"prep: {store.reused} of {len(parts)} partitions were prepared by the interrupted run and reused",
              file=sys.stderr)
    index = feed.packer.writer.close(write_index=False)
    summary = feed.summary(len(files), index)
    summary.seconds = time.perf_counter() - start
    write_atomic(out / SUMMARY_FILE, summary.to_json())
    store.remove()
    write_atomic(out / INDEX_FILE, index.to_json())      # last: the folder is complete from here on
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    return summary


def _open_shards(cfg: PrepConfig, tok: TokenEncoder, vocab: int, out: Path, progress: Progress) -> _Packer:
    """The shard writer (``packer.writer``) and the packer feeding it, set to continue after the
    finished shards in ``progress``; each shard it finishes saves the point a rerun continues from."""

    def shard_done(_info) -> None:
        written = sum(s.tokens for s in writer.index.shards)
        doc, token = packer.resume_point(written)
        save_progress(out, Progress(list(writer.index.shards), doc, token))

    writer = ShardWriter(out, vocab_size=vocab, eos_id=tok.eos_id, mode=cfg.mode,
                         seq_len=cfg.seq_len if cfg.mode == "concat" else None, tokenizer=tok.name,
                         shard_bytes=cfg.shard_bytes, done=progress.shards, on_shard=shard_done)
    resume_at = sum(s.tokens for s in progress.shards)
    packer = _Packer(writer, cfg, tok.eos_id, position=resume_at)
    # an interrupted run continues at document progress.doc, of which progress.token tokens are written
    packer.starts.append((progress.doc, resume_at - progress.token))
    return packer


class _Cursor:
    """Membership in a sorted array of document numbers, asked in increasing order."""

    def __init__(self, numbers: np.ndarray):
        self.numbers, self.at = numbers, 0

    def __contains__(self, n: int) -> bool:
        while self.at < len(self.numbers) and self.numbers[self.at] < n:
            self.at += 1
        return self.at < len(self.numbers) and self.numbers[self.at] == n


class _Feed:
    """The driver's last stages, partition by partition in input order: duplicates dropped (the earliest
    copy kept: decided here for exact dedup alone, else by prep_dedup's first pass), kept documents
    numbered and packed, less what an interrupted run's finished shards hold; and everything dropped
    counted for the summary."""

    def __init__(self, cfg: PrepConfig, packer: _Packer, progress: Progress, drops: Drops | None):
        self.packer = packer
        self.seen: set[bytes] | None = set() if cfg.dedup.exact and drops is None else None
        drops = drops or Drops()
        self.exact, self.near, self.semantic = _Cursor(drops.exact), _Cursor(drops.near), _Cursor(drops.semantic)
        self.resume_doc, self.to_skip = progress.doc, progress.token
        self.stats = ReadStats()
        self.empty = self.text_chars = 0
        self.filtered: dict[str, int] = {}       # by rule, in the order rules first dropped one
        self.lang_kept: Counter[str] = Counter()
        self.lang_dropped: Counter[str] = Counter()
        self.number = 0              # documents the filters kept so far (what the drops are numbered by)
        self.kept = 0                # documents kept so far: their number in the resume point
        self.removed = Counter()     # duplicates dropped, by kind

    def add(self, r: PartitionResult) -> None:
        self._count(r)
        for i in range(r.kept):
            if (kind := self._duplicate(r, i)) is not None:
                self.removed[kind] += 1
                continue
            if i in r.vocab_errors:
                raise DataInputError(r.vocab_errors[i])
            self._pack(self.kept, r.tokens[r.offsets[i]:r.offsets[i + 1]])
            self.kept += 1
        self.packer.cut()
        if r.error is not None:
            raise r.error         # bad input, met after the documents above

    def _duplicate(self, r: PartitionResult, i: int) -> str | None:
        n, self.number = self.number, self.number + 1
        if self.seen is not None:
            digest = r.digest(i)
            if digest in self.seen:
                return "exact"
            self.seen.add(digest)
            return None
        return next((kind for kind, c in (("exact", self.exact), ("near", self.near),
                                          ("semantic", self.semantic)) if n in c), None)

    def _count(self, r: PartitionResult) -> None:
        for name in ("records", "bad_json", "missing_field", "invalid_utf8", "binary", "too_large", "corrupt"):
            setattr(self.stats, name, getattr(self.stats, name) + getattr(r.stats, name))
        for note in r.stats.bad_examples:
            self.stats.note_bad(note)
        self.empty += r.empty
        self.text_chars += r.text_chars
        for rule, n in r.filtered.items():
            self.filtered[rule] = self.filtered.get(rule, 0) + n
        self.lang_kept.update(r.lang_kept)
        self.lang_dropped.update(r.lang_dropped)

    def _pack(self, number: int, tokens) -> None:
        first = True
        if number < self.resume_doc:
            return           # wholly in the finished shards of the interrupted run
        if number == self.resume_doc:
            first = False                 # its start is already in packer.starts
            drop = min(self.to_skip, len(tokens))
            self.to_skip -= drop
            tokens = tokens[drop:]
            if drop and not len(tokens):
                return
        self.packer.piece(number, tokens, first, True)

    def summary(self, files: int, index: ShardIndex) -> PrepSummary:
        stats = self.stats
        return PrepSummary(
            files=files,
            records_read=stats.records,
            binary_skipped=stats.binary,
            bad_json_skipped=stats.bad_json,
            missing_field_skipped=stats.missing_field,
            too_large_skipped=stats.too_large,
            corrupt_skipped=stats.corrupt,
            invalid_utf8_replaced=stats.invalid_utf8,
            empty_dropped=self.empty,
            filtered=dict(self.filtered),
            languages_kept=dict(sorted(self.lang_kept.items())),
            languages_dropped=dict(sorted(self.lang_dropped.items())),
            exact_duplicates=self.removed["exact"],
            near_duplicates=self.removed["near"],
            semantic_duplicates=self.removed["semantic"],
            documents_written=self.kept,
            document_tokens=self.packer.position,
            samples=index.num_samples,
            tokens_written=index.num_tokens,
            tail_tokens_dropped=len(self.packer.carry),
            bytes_written=sum(s.bytes for s in index.shards),
            shards=len(index.shards),
            text_chars=self.text_chars,
            bad_examples=stats.bad_examples,
        )
