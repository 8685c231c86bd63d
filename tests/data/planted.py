"""Generated corpora with planted near-duplicates at known Jaccard similarities, and the exact answer
(word 5-gram shingle sets as dedup.fingerprint makes them) that near-dedup is measured against."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

import numpy as np

from mpt.data.dedup import DedupConfig, normalise, shingles
from mpt.data.near_dedup import WEIGHTS

VOCAB = [f"w{i}" for i in range(5000)]   # random words: two unrelated documents share no 5-gram


def edit_to(words: list[str], target: float, rng: random.Random, tag: str) -> list[str]:
    """A copy whose shingle set has Jaccard ``target`` with the original's (exactly, up to rounding):
    k words at least 5 apart become fresh tokens, each replacing 5 shingles by 5 new ones, so
    J = (S - 5k) / (S + 5k) for S shingles."""
    s = len(words) - 4
    slots = list(range(4, len(words) - 4, 5))   # every 5-gram containing a slot lies inside the text
    k = min(len(slots), round(s * (1 - target) / (5 * (1 + target))))
    out = list(words)
    for n, i in enumerate(sorted(rng.sample(slots, k))):
        out[i] = f"{tag}x{n}"
    return out


def planted_corpus(families: int, seed: int, levels: tuple[float, ...], copies: tuple[int, int] = (0, 3),
                   length: tuple[int, int] = (60, 300)) -> tuple[list[str], list[float | None]]:
    """Base documents of random words, each with 0-3 copies edited to a Jaccard drawn from ``levels``,
    shuffled; returns the texts and each one's planted level (None for a base)."""
    rng = random.Random(seed)
    docs: list[tuple[str, float | None]] = []
    for f in range(families):
        words = [rng.choice(VOCAB) for _ in range(rng.randint(*length))]
        docs.append((" ".join(words), None))
        for c in range(rng.randint(*copies)):
            level = rng.choice(levels)
            docs.append((" ".join(edit_to(words, level, rng, f"f{f}c{c}")), level))
    rng.shuffle(docs)
    return [t for t, _ in docs], [lv for _, lv in docs]


def shingle_set(text: str, n: int = 5) -> set[int]:
    """dedup.py's shingles of the text, each as a 64-bit hash (smaller than the strings)."""
    return {int.from_bytes(hashlib.blake2b(sh, digest_size=8).digest(), "little") for sh in shingles(normalise(text), n)}


def exact_pairs(texts: list[str], threshold: float) -> dict[tuple[int, int], float]:
    """Every pair (i < j) with exact Jaccard >= threshold: pairs that share no shingle have Jaccard 0,
    so only the pairs an inverted index finds are compared."""
    sets = [shingle_set(t) for t in texts]
    key = np.concatenate([np.fromiter(s, dtype=np.uint64, count=len(s)) for s in sets])
    doc = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(sets)])
    order = np.lexsort((doc, key))
    key, doc = key[order], doc[order]
    new = np.ones(len(key), dtype=bool)
    new[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(key))
    shared = ends - starts > 1
    candidates = set()
    for lo, hi in zip(starts[shared], ends[shared], strict=True):
        m = sorted(set(doc[lo:hi].tolist()))   # a shingle's documents: one planted family, a few
        candidates |= {(a, b) for x, a in enumerate(m) for b in m[x + 1:]}
    out = {}
    for a, b in candidates:
        j = len(sets[a] & sets[b]) / len(sets[a] | sets[b])
        if j >= threshold:
            out[(a, b)] = j
    return out


def keep_earliest(n: int, pairs) -> set[int]:
    """The documents to drop: all but the smallest index of each connected component (a plain search)."""
    graph = defaultdict(set)
    for a, b in pairs:
        graph[a].add(b)
        graph[b].add(a)
    drop, seen = set(), set()
    for start in sorted(graph):
        if start in seen:
            continue
        seen.add(start)
        stack, members = [start], [start]
        while stack:
            for nb in graph[stack.pop()] - seen:
                seen.add(nb)
                stack.append(nb)
                members.append(nb)
        drop |= set(members) - {min(members)}
    return drop


def datasketch_decisions(texts: list[str], cfg: DedupConfig, streaming: bool) -> set[int]:
    """datasketch's in-memory MinHashLSH at the same threshold, num_perm and weights, candidates confirmed by
    ``MinHash.jaccard``: streaming (query the kept ones, as dedup.Deduplicator) or over the whole corpus."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=WEIGHTS)
    # the same MinHash values as the stages (dedup's normalise and shingles): what differs is the index
    hashes = MinHash.bulk((shingles(normalise(t), cfg.ngram) for t in texts), num_perm=cfg.num_perm, seed=cfg.seed)
    drop, pairs = set(), []
    for i, m in enumerate(hashes):
        similar = [k for k in lsh.query(m) if m.jaccard(hashes[k]) >= cfg.threshold]
        if streaming and similar:
            drop.add(i)
            continue
        pairs += [(k, i) for k in similar]
        lsh.insert(i, m)
    return drop if streaming else keep_earliest(len(texts), pairs)


def precision_recall(predicted: set[int], truth: set[int]) -> tuple[float, float]:
    hit = len(predicted & truth)
    return hit / max(1, len(predicted)), hit / max(1, len(truth))
