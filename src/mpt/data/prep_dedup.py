"""`mpt prep`'s whole-corpus dedup decisions: a first pass over the prepared partitions, in input order.

Documents are numbered as the filters kept them, in input order. Exact: the first copy of a digest is
kept (the digests seen are held until the pass ends: 16 bytes and a set entry per distinct document).
Near: each kept partition's band keys are routed to bucket shards spilled to ``prep-parts/near/``, each
shard grouped by the engine (``near_dedup.bucket_groups``, a task per shard), then the groups confirmed
here with the signatures of their documents only, read back from the stored partitions. Semantic: the
documents left are embedded by the engine's workers, then clustered here (``semantic_dedup``). The answer is three sorted arrays of
document numbers that the second pass (prep.py's packing) skips; none depends on the engine or partitioning.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .near_dedup import ENTRY, bucket_groups, candidates, confirm, route
from .prep_engine import Engine, PartStore, ordered_calls
from .prep_stages import Partition, PartitionResult

SEMANTIC_BATCH = 32     # documents embedded together by --semantic-dedup
EMBED_TASK = 1024       # documents one embedding task takes
MAX_SHARDS = 256        # bucket shards: a shard holds about 1/B of the corpus' band entries


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class Drops:
    """Sorted numbers of the documents to drop, by reason."""
    exact: np.ndarray = field(default_factory=_empty)
    near: np.ndarray = field(default_factory=_empty)
    semantic: np.ndarray = field(default_factory=_empty)


class Spill:
    """Band entries bound for each bucket shard, appended partition by partition to one file per shard."""

    def __init__(self, folder: Path, shards: int):
        shutil.rmtree(folder, ignore_errors=True)      # a killed run's spill: rebuilt from the partitions
        folder.mkdir(parents=True)
        self.folder, self.shards = folder, shards

    def _path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.npy"

    def add(self, routed: list[np.ndarray]) -> None:
        for shard, entries in enumerate(routed):
            if len(entries):
                with open(self._path(shard), "ab") as f:
                    np.save(f, entries)

    def load(self, shard: int) -> np.ndarray:
        pieces = []
        path = self._path(shard)
        if path.is_file():
            size = path.stat().st_size
            with open(path, "rb") as f:
                while f.tell() < size:
                    pieces.append(np.load(f))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=ENTRY)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def decide(results: Iterable[PartitionResult], parts: list[Partition], engine: Engine, store: PartStore,
           cfg, bar) -> Drops:
    """The first pass: ``results`` (every partition's, in order) → the documents to drop. ``cfg`` is the
    run's PrepConfig (its dedup section and semantic options)."""
    near = cfg.dedup.near
    spill = Spill(store.folder / "near", max(engine.slots, min(MAX_SHARDS, len(parts)))) if near else None
    seen: set[bytes] = set()
    exact: list[int] = []
    bases: list[int] = []             # each partition's first document number
    left: list[np.ndarray] = []      # --semantic-dedup: the numbers of the documents left, by partition
    total = 0
    for r in results:
        bar.update(r.stats.records)
        bases.append(total)
        keep = []
        for i in range(r.kept):
            if cfg.dedup.exact:
                digest = r.digest(i)
                if digest in seen:
                    exact.append(total + i)
                    continue
                seen.add(digest)
            keep.append(i)
        rows = np.array(keep, dtype=np.int64)
        if spill is not None:
            spill.add(route(r.band_keys[rows], total + rows, spill.shards))
        if cfg.semantic_dedup is not None:
            left.append(total + rows)
        total += r.kept
        if r.error is not None:
            raise r.error         # bad input: nothing is written, as the decisions depend on every document
    bar.close()
    del seen
    say = print if cfg.progress else (lambda *a, **k: None)
    drops = Drops(exact=np.array(exact, dtype=np.int64))
    if spill is not None:
        say(f"prep: near dedup: grouping {spill.shards} bucket shards, then confirming", file=sys.stderr, flush=True)
        drops.near = _near(engine, spill, parts, bases + [total], store, cfg.dedup.threshold)
        spill.remove()
    if cfg.semantic_dedup is not None:
        numbers = np.setdiff1d(np.concatenate(left or [_empty()]), drops.near, assume_unique=True)
        say(f"prep: semantic dedup: embedding {len(numbers):,} documents, {EMBED_TASK:,} a task, then clustering",
            file=sys.stderr, flush=True)
        drops.semantic = _semantic(engine, numbers, _Ids(store, parts, bases), cfg)
    return drops


def _near(engine: Engine, spill: Spill, parts: list[Partition], bases: list[int], store: PartStore,
          threshold: float) -> np.ndarray:
    """Bucket shards grouped on the engine, then the groups confirmed with their documents' signatures."""
    calls = ((f"near-dedup bucket shard {s} of {spill.shards}", (spill.load(s),)) for s in range(spill.shards))
    groups = list(ordered_calls(engine, bucket_groups, calls))
    docs = candidates(groups)
    values = None
    for p, part in enumerate(parts):    # the signatures of the candidates in each partition, from its stored result
        lo, hi = np.searchsorted(docs, bases[p]), np.searchsorted(docs, bases[p + 1])
        if hi > lo:
            [sig] = store.arrays(part, "signature")
            values = np.zeros((len(docs), sig.shape[1]), dtype=np.uint32) if values is None else values
            values[lo:hi] = sig[docs[lo:hi] - bases[p]]
    return confirm(groups, docs, values, threshold) if values is not None else _empty()


class _Ids:
    """Documents' token ids for the embedding model, read back from the stored partitions one at a time."""

    def __init__(self, store: PartStore, parts: list[Partition], bases: list[int]):
        self.store, self.parts, self.bases = store, parts, np.array(bases, dtype=np.int64)
        self.at, self.offsets, self.ids = -1, _empty(), _empty()

    def __call__(self, number: int) -> np.ndarray:
        p = int(np.searchsorted(self.bases, number, side="right")) - 1
        if p != self.at:
            self.at = p
            self.offsets, self.ids = self.store.arrays(self.parts[p], "embed_offsets", "embed_ids")
        i = number - int(self.bases[p])
        return self.ids[self.offsets[i]:self.offsets[i + 1]].astype(np.int64)


def _semantic(engine: Engine, left: np.ndarray, ids: _Ids, cfg) -> np.ndarray:
    """--semantic-dedup over the documents ``left`` after exact and near dedup (sorted numbers): those to
    drop. The embedding runs on the engine, ``EMBED_TASK`` documents a task (the model loaded once per
    worker), their ids read as the tasks are handed out, so the driver holds a few tasks' worth."""
    from .semantic_dedup import choose_drops, embed_one_thread

    if not len(left):
        return _empty()
    # clusters of about sqrt(N) documents: choose_drops holds one cluster's c x c similarities at a time
    clusters = max(1, round(len(left) ** 0.5))
    calls = ((f"semantic-dedup embedding of documents {lo:,} to {min(lo + EMBED_TASK, len(left)):,} left",
              ([ids(int(n)) for n in left[lo:lo + EMBED_TASK]], cfg.semantic_dedup, SEMANTIC_BATCH))
             for lo in range(0, len(left), EMBED_TASK))
    vectors = np.concatenate(list(ordered_calls(engine, embed_one_thread, calls)))
    chosen = choose_drops(vectors, cfg.semantic_drop, clusters)
    return np.array(sorted(int(left[i]) for i in chosen), dtype=np.int64)
