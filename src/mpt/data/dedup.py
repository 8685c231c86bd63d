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


def normalise(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


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


class Deduplicator:
    """Call ``check(text)`` once per document in order; it says whether (and how) it is a duplicate."""

    def __init__(self, cfg: DedupConfig):
        cfg.validate()
        self.cfg = cfg
        self._seen: set[bytes] = set()
        self.exact_removed = 0
        self.near_removed = 0
        if cfg.near:
            from datasketch import MinHashLSH

            self._lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
            self._signatures: list[np.ndarray] = []

    def _minhash(self, norm: str):
        from datasketch import MinHash

        words = norm.split(" ")
        n = self.cfg.ngram
        shingles = {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}
        m = MinHash(num_perm=self.cfg.num_perm, seed=self.cfg.seed)
        m.update_batch([s.encode("utf-8") for s in shingles])
        return m

    def check(self, text: str) -> str | None:
        """``"exact"`` or ``"near"`` when ``text`` duplicates an earlier kept document, else None (and remember it)."""
        norm = normalise(text)
        if self.cfg.exact:
            digest = hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()
            if digest in self._seen:
                self.exact_removed += 1
                return "exact"
        if self.cfg.near:
            m = self._minhash(norm)
            for key in self._lsh.query(m):
                if np.mean(self._signatures[key] == m.hashvalues.astype(np.uint32)) >= self.cfg.threshold:
                    self.near_removed += 1
                    return "near"
            key = len(self._signatures)
            self._signatures.append(m.hashvalues.astype(np.uint32))
            self._lsh.insert(key, m)
        if self.cfg.exact:
            self._seen.add(digest)
        return None
