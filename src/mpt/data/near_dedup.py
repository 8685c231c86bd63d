"""Whole-corpus near-dedup as stages no worker needs the corpus for: ``signatures`` per partition
(dedup.fingerprint's MinHash; b bands of r values, each band one 64-bit key) → ``route`` the (band, key,
doc) entries to B bucket shards by hash → ``bucket_groups`` per shard: the documents sharing a bucket →
``confirm``: each group's pairs whose signatures' estimated Jaccard >= threshold joined (union-find), all
but the earliest (smallest global number) document of each component dropped. Chains merge: A~B, B~C
keep A only (dedup.Deduplicator keeps C: it checks kept ones). Memory: a shard holds ~N*b/B entries of
18 bytes. What grows with the duplicates is ``confirm``: it holds the signatures (4*num_perm bytes) of
the D documents that share a bucket with another, and a union-find over them; its compute grows with
the square of the largest bucket."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import numpy as np

from .dedup import DedupConfig, fingerprint

_MIX = np.uint64(0x9E3779B97F4A7C15)   # spreads the band number over the key before the shard modulo
_PRIME = np.uint64(0x100000001B3)      # FNV-1a's 64-bit prime: folds a band's r values into one key
# Every LSH candidate is confirmed from the signatures, so a false positive costs one comparison and a
# false negative a kept duplicate: weigh misses 9:1 (datasketch's default 1:1 picks 9 bands of 13 rows
# at 0.8/128, which finds 40 % of the pairs at Jaccard 0.8; 14 of 9 finds 87 %, at 0.9 99.9 %).
WEIGHTS = (0.1, 0.9)
ENTRY = np.dtype([("band", "<u2"), ("key", "<u8"), ("doc", "<i8")])   # one document's key in one band


@cache
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) as datasketch's MinHashLSH picks them for this threshold, num_perm and ``WEIGHTS``."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=WEIGHTS)
    return lsh.b, lsh.r


@dataclass
class Signatures:
    """Stage 1's output for n documents."""
    values: np.ndarray   # (n, num_perm) uint32: the MinHash signature (dedup.fingerprint's values)
    keys: np.ndarray     # (n, bands) uint64: one key per band of r values, equal values <=> equal keys


def band_keys(values: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """Each signature's band keys: a band's r values folded into 64 bits (a collision only adds a
    candidate, which ``confirm`` rejects)."""
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    v = np.asarray(values, dtype=np.uint64)[:, :bands * rows].reshape(len(values), bands, rows)
    key = np.full((len(values), bands), 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):      # arithmetic modulo 2**64 is the point
        for j in range(rows):
            key = (key ^ v[:, :, j]) * _PRIME
    return key


def signatures(texts: Iterable[str], cfg: DedupConfig) -> Signatures:
    """Stage 1, one partition: the MinHash signature and band keys of each text."""
    cfg.validate()
    near = DedupConfig(exact=False, near=True, threshold=cfg.threshold, num_perm=cfg.num_perm, ngram=cfg.ngram,
                       seed=cfg.seed)
    values = np.array([fingerprint(t, near)[1] for t in texts], dtype=np.uint32).reshape(-1, cfg.num_perm)
    return Signatures(values, band_keys(values, cfg))


def shard_of(band: np.ndarray, key: np.ndarray, shards: int) -> np.ndarray:
    """The bucket shard that owns each (band, key): a hash partition, so B workers split the buckets."""
    mixed = key ^ (band.astype(np.uint64) * _MIX)
    return (mixed % np.uint64(shards)).astype(np.int64)


def route(keys: np.ndarray, docs: np.ndarray, shards: int) -> list[np.ndarray]:
    """Stage 2a, one partition: the ``ENTRY`` records of documents ``docs`` (global numbers; row i's band
    keys are ``keys[i]``) split by bucket shard (list position = shard number)."""
    n, bands = keys.shape
    entries = np.empty(n * bands, dtype=ENTRY)
    entries["band"] = np.tile(np.arange(bands, dtype=np.uint16), n)
    entries["key"] = keys.reshape(-1)
    entries["doc"] = np.repeat(np.asarray(docs, dtype=np.int64), bands)
    owner = shard_of(entries["band"], entries["key"], shards)
    return [entries[owner == s] for s in range(shards)]


@dataclass
class Groups:
    """Sets of documents that share a bucket: group g is ``docs[offsets[g]:offsets[g + 1]]``, ascending."""
    offsets: np.ndarray   # (g + 1,) int64
    docs: np.ndarray      # (m,) int64


def bucket_groups(entries: np.ndarray) -> Groups:
    """Stage 2b, one shard: its entries from every partition → the buckets of more than one document,
    each group once (a near-duplicate pair shares many bands' buckets)."""
    order = np.lexsort((entries["doc"], entries["key"], entries["band"]))
    band, key, doc = entries["band"][order], entries["key"][order], entries["doc"][order]
    new = np.ones(len(doc), dtype=bool)
    new[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(doc)).astype(np.int64)
    seen: set[bytes] = set()
    members, offsets = [], [0]
    for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
        group = doc[s:e]              # ascending: doc was the last sort key
        if (tag := group.tobytes()) not in seen:
            seen.add(tag)
            members.append(group)
            offsets.append(offsets[-1] + len(group))
    docs = np.concatenate(members) if members else np.zeros(0, dtype=np.int64)
    return Groups(np.array(offsets, dtype=np.int64), docs)


def candidates(groups: Iterable[Groups]) -> np.ndarray:
    """The sorted documents whose signatures ``confirm`` needs: every one in some group."""
    docs = [g.docs for g in groups]
    return np.unique(np.concatenate(docs)) if docs else np.zeros(0, dtype=np.int64)


def _find(parent: dict[int, int], x: int) -> int:
    root = x
    while parent.get(root, root) != root:
        root = parent[root]
    while x != root:   # path compression keeps later finds short on long chains
        parent[x], x = root, parent[x]
    return root


def _union(parent: dict[int, int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:   # the smaller global number stays root, so a component's root is its earliest document
        parent[max(ra, rb)] = min(ra, rb)


def confirm(groups: Iterable[Groups], docs: np.ndarray, values: np.ndarray, threshold: float) -> np.ndarray:
    """Stage 3: the sorted documents to drop. ``values[i]`` is the signature of document ``docs[i]``
    (``docs``: ``candidates(groups)``). Within each group every pair whose share of equal signature
    values passes ``threshold`` is joined; all but the earliest document of each component go."""
    parent: dict[int, int] = {}
    for g in groups:
        for k in range(len(g.offsets) - 1):
            members = g.docs[g.offsets[k]:g.offsets[k + 1]]
            sig = values[np.searchsorted(docs, members)]
            for j in range(1, len(members)):
                for i in np.flatnonzero((sig[:j] == sig[j]).mean(axis=1) >= threshold):
                    _union(parent, int(members[i]), int(members[j]))
    return np.array(sorted(parent), dtype=np.int64)   # the non-roots: roots never get an entry


def near_duplicates(texts: list[str], cfg: DedupConfig, partitions: int = 1, shards: int = 1) -> np.ndarray:
    """The stages run in this process: ``partitions`` contiguous ranges, ``shards`` bucket shards."""
    bounds = np.linspace(0, len(texts), partitions + 1).astype(int)
    values, routed = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        sigs = signatures(texts[lo:hi], cfg)
        values.append(sigs.values)
        routed.append(route(sigs.keys, np.arange(lo, hi), shards))
    groups = [bucket_groups(np.concatenate([r[s] for r in routed])) for s in range(shards)]
    docs = candidates(groups)
    return confirm(groups, docs, np.concatenate(values)[docs], cfg.threshold)
