"""Whole-corpus near-dedup as stages no worker needs the corpus for: ``signatures`` per partition
(datasketch MinHash of dedup.py's shingles; b bands of r rows, each a 64-bit key) → ``route`` each
(band, key) to one of B bucket shards by hash → ``shard_edges`` per shard: documents sharing a bucket,
confirmed when their signatures' estimated Jaccard >= threshold (signatures travel, not shingles:
fixed size, where shingles grow with the text) → ``components``: union-find; all but the earliest
(smallest global index) document of each component dropped. Chains merge: A~B, B~C keep A only
(dedup.Deduplicator keeps C: it checks kept ones). Memory: a shard holds ~N*b/B entries of 26 bytes
and <= min(N, N*b/B) signatures of 4*num_perm bytes; what grows with duplicate pairs is ``components``:
a union-find over the D documents with a confirmed near-duplicate, fed <= b*D edges (each shard sends
a spanning forest, never its pairs). A shard's compute grows with the square of its largest bucket."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache

import numpy as np

from .dedup import DedupConfig, normalise, shingles

_MIX = np.uint64(0x9E3779B97F4A7C15)   # spreads the band number over the key before the shard modulo
# Every LSH candidate is confirmed from the signatures, so a false positive costs one comparison and a
# false negative a kept duplicate: weigh misses 9:1 (datasketch's default 1:1 picks 9 bands of 13 rows
# at 0.8/128, which finds 40 % of the pairs at Jaccard 0.8; 14 of 9 finds 87 %, at 0.9 99.9 %).
WEIGHTS = (0.1, 0.9)


@cache
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) as datasketch's MinHashLSH picks them for this threshold, num_perm and ``WEIGHTS``."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=WEIGHTS)
    return lsh.b, lsh.r


@dataclass
class Signatures:
    """One partition's stage-1 output: row i is document ``index[i]`` (its global input position)."""
    index: np.ndarray    # (n,) int64
    values: np.ndarray   # (n, num_perm) uint32: the MinHash signature
    keys: np.ndarray     # (n, bands) uint64: one hash per band of r signature values


@dataclass
class BandEntries:
    """(band, key, doc) entries bound for one bucket shard, and the signature of each of their documents
    once (a document's bands often meet in one shard: b copies would be most of the traffic)."""
    band: np.ndarray     # (m,) uint16
    key: np.ndarray      # (m,) uint64
    doc: np.ndarray      # (m,) int64
    row: np.ndarray      # (m,) int64: the entry's signature in ``values``
    values: np.ndarray   # (u, num_perm) uint32, u <= m


def signatures(docs: list[tuple[int, str]], cfg: DedupConfig) -> Signatures:
    """Stage 1, one partition: the MinHash signature and band keys of each (global_index, text), the
    signature the same as dedup.fingerprint's (MinHash.generator only shares the permutations' setup)."""
    from datasketch import MinHash

    cfg.validate()
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    values = np.zeros((len(docs), cfg.num_perm), dtype=np.uint32)
    keys = np.zeros((len(docs), bands), dtype=np.uint64)
    made = MinHash.generator((shingles(normalise(t), cfg.ngram) for _, t in docs), num_perm=cfg.num_perm, seed=cfg.seed)
    for i, m in enumerate(made):
        values[i] = m.hashvalues
        for b in range(bands):   # a band's key stands for its r values: equal keys <=> the same bucket
            piece = values[i, b * rows:(b + 1) * rows].tobytes()
            keys[i, b] = int.from_bytes(hashlib.blake2b(piece, digest_size=8).digest(), "little")
    index = np.fromiter((g for g, _ in docs), dtype=np.int64, count=len(docs))
    return Signatures(index, values, keys)


def shard_of(band: np.ndarray, key: np.ndarray, shards: int) -> np.ndarray:
    """The bucket shard that owns each (band, key): a hash partition, so B workers split the buckets."""
    mixed = key ^ (band.astype(np.uint64) * _MIX)
    return (mixed % np.uint64(shards)).astype(np.int64)


def route(sigs: Signatures, shards: int) -> list[BandEntries]:
    """Stage 2a, one partition: its entries split by bucket shard (list position = shard number)."""
    n, bands = sigs.keys.shape
    band = np.tile(np.arange(bands, dtype=np.uint16), n)
    key = sigs.keys.reshape(-1)
    row = np.repeat(np.arange(n), bands)
    owner = shard_of(band, key, shards)
    out = []
    for s in range(shards):
        pick = np.flatnonzero(owner == s)
        used, local = np.unique(row[pick], return_inverse=True)
        out.append(BandEntries(band[pick], key[pick], sigs.index[row[pick]], local.reshape(-1), sigs.values[used]))
    return out


def _find(parent: dict[int, int], x: int) -> int:
    root = x
    while parent.get(root, root) != root:
        root = parent[root]
    while x != root:   # path compression keeps later finds short on long chains
        parent[x], x = root, parent[x]
    return root


def _union(parent: dict[int, int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:   # the smaller global index stays root, so a component's root is its earliest document
        parent[max(ra, rb)] = min(ra, rb)


def shard_edges(pieces: list[BandEntries], threshold: float) -> np.ndarray:
    """Stage 2b, one shard: its entries from every partition → confirmed near-duplicate edges, as a
    spanning forest ((root, doc) per non-root document: connectivity kept, pairs never listed)."""
    if not pieces:
        return np.zeros((0, 2), dtype=np.int64)
    band = np.concatenate([p.band for p in pieces])
    key = np.concatenate([p.key for p in pieces])
    doc = np.concatenate([p.doc for p in pieces])
    offsets = np.cumsum([0] + [len(p.values) for p in pieces[:-1]])
    row = np.concatenate([p.row + o for p, o in zip(pieces, offsets, strict=True)])
    values = np.concatenate([p.values for p in pieces])
    order = np.lexsort((doc, key, band))   # buckets contiguous, each in input order: independent of partitioning
    band, key, doc, row = band[order], key[order], doc[order], row[order]
    new = np.ones(len(doc), dtype=bool)
    new[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(doc))
    parent: dict[int, int] = {}
    shared = ends - starts > 1
    for s, e in zip(starts[shared], ends[shared], strict=True):
        _confirm_bucket(doc[s:e], values[row[s:e]], threshold, parent)
    # every key of ``parent`` is a non-root (roots never get an entry): one edge each to its root
    return np.array([(_find(parent, x), x) for x in sorted(parent)], dtype=np.int64).reshape(-1, 2)


def _confirm_bucket(doc: np.ndarray, values: np.ndarray, threshold: float, parent: dict[int, int]) -> None:
    """Union every pair of the bucket whose estimated Jaccard (share of equal signature values) passes."""
    for j in range(1, len(doc)):
        earlier = np.flatnonzero((values[:j] == values[j]).mean(axis=1) >= threshold)
        for i in earlier:
            _union(parent, int(doc[i]), int(doc[j]))


def components(edges: list[np.ndarray]) -> np.ndarray:
    """Stage 3: the sorted global indices to drop: all but the earliest document of each component."""
    parent: dict[int, int] = {}
    for part in edges:
        for a, b in part.tolist():
            _union(parent, a, b)
    return np.array(sorted(parent), dtype=np.int64)   # the non-roots: roots never get an entry


def near_duplicates(texts: list[str], cfg: DedupConfig, partitions: int = 1, shards: int = 1) -> np.ndarray:
    """The stages run in this process: ``partitions`` contiguous ranges, ``shards`` bucket shards."""
    bounds = np.linspace(0, len(texts), partitions + 1).astype(int)
    routed = [route(signatures([(g, texts[g]) for g in range(lo, hi)], cfg), shards)
              for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    edges = [shard_edges([r[s] for r in routed], cfg.threshold) for s in range(shards)]
    return components(edges)
