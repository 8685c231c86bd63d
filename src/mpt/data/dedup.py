"""Exact and near-duplicate document removal.

Exact: BLAKE2b of the normalised text (NFKC, lowercased, whitespace runs collapsed), so copies
that differ only in case or spacing count as the same document.

Near: MinHash over word 5-gram shingles with locality-sensitive hashing (``datasketch``); a
document is a near-duplicate when LSH finds an earlier document whose estimated Jaccard
similarity of shingle sets is at least ``threshold``. LSH candidates are confirmed with the
MinHash estimate (we keep each kept document's signature as a compact uint32 array for that), so
documents that only share an LSH band are not dropped. The first copy is kept, later ones removed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

_WS = re.compile(r"\s+")
_CUT = re.compile(r"(?<=\S)\s")   # a whitespace run's start: NFKC, lower() and the run's collapse stay on one side
_PIECE = 1 << 20


def normalise(text: str) -> str:
    # piece by piece: re.sub over a whole 20 MB text keeps every one of its millions of pieces alive at once
    parts, start = [], 0
    while len(text) - start > _PIECE and (m := _CUT.search(text, start + _PIECE)):
        parts.append(_WS.sub(" ", unicodedata.normalize("NFKC", text[start:m.start()]).lower()))
        start = m.start()
    parts.append(_WS.sub(" ", unicodedata.normalize("NFKC", text[start:]).lower()))
    return "".join(parts).strip()


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = False
    threshold: float = 0.8       # estimated Jaccard similarity of word 5-gram sets
    num_perm: int = 128
    ngram: int = 5
    seed: int = 1

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"dedup threshold={self.threshold} must be in (0, 1]")
        if self.num_perm < 16:
            raise ValueError(f"dedup num_perm={self.num_perm} is too small for a useful estimate; use >= 16")
        if self.ngram < 1:
            raise ValueError(f"dedup ngram={self.ngram} must be >= 1")


def fingerprint(text: str, cfg: DedupConfig) -> tuple[bytes | None, np.ndarray | None]:
    """The pure, per-document part of dedup (exact digest, MinHash values); safe to run in worker processes."""
    norm = normalise(text)
    digest = hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest() if cfg.exact else None
    if not cfg.near:
        return digest, None
    from datasketch import MinHash

    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
    m.update_batch(shingles(norm, cfg.ngram))
    return digest, m.hashvalues


def shingles(norm: str, n: int) -> list[bytes]:
    """The distinct word n-grams of a normalised text, as MinHash takes them (a shorter text: itself)."""
    words = norm.split(" ")
    return [sh.encode("utf-8") for sh in {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}]


class Deduplicator:
    """Call ``check(text)`` (or ``check_fingerprint``) once per document in order; it says whether
    (and how) the document duplicates an earlier kept one, and remembers it when it does not."""

    def __init__(self, cfg: DedupConfig):
        cfg.validate()
        self.cfg = cfg
        self._seen: set[bytes] = set()
        self.exact_removed = 0
        self.near_removed = 0
        if cfg.near:
            from datasketch import MinHash, MinHashLSH

            self._lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
            self._scheme = MinHash(num_perm=cfg.num_perm, seed=cfg.seed).scheme
            self._signatures: list[np.ndarray] = []

    def check(self, text: str) -> str | None:
        return self.check_fingerprint(fingerprint(text, self.cfg))

    def check_fingerprint(self, fp: tuple[bytes | None, np.ndarray | None]) -> str | None:
        """``"exact"`` or ``"near"`` for a duplicate, else None (and the document is remembered)."""
        digest, hashvalues = fp
        if self.cfg.exact and digest in self._seen:
            self.exact_removed += 1
            return "exact"
        if self.cfg.near:
            from datasketch import LeanMinHash

            m = LeanMinHash(seed=self.cfg.seed, hashvalues=hashvalues, scheme=self._scheme)
            signature = np.asarray(hashvalues).astype(np.uint32)
            for key in self._lsh.query(m):
                if np.mean(self._signatures[key] == signature) >= self.cfg.threshold:
                    self.near_removed += 1
                    return "near"
            self._lsh.insert(len(self._signatures), m)
            self._signatures.append(signature)
        if self.cfg.exact:
            self._seen.add(digest)
        return None
