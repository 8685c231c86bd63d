"""Semantic dedup (SemDeDup, Abbas et al. 2023): embed documents, cluster, drop the most redundant.

``embed``: any Hugging Face model folder (AutoModel: an encoder, or a causal LM's base model), the last
hidden state mean-pooled over real tokens, in float64, L2-normalised, returned as float32. ``choose_drops``:
k-means (scikit-learn, fixed seed) on the embeddings; in each cluster, members in input order; a member's
score is its highest cosine similarity to an earlier member of its cluster that is kept. Repeatedly the
member with the highest score over all clusters is dropped (ties: the later document first) and the scores
it was the best match of are recomputed, until round(fraction * N) are dropped. The first member of each
cluster is never dropped, and every dropped document has a kept earlier one at least that similar.
Plain functions on plain data, so a worker process or a Ray task can run them.
"""

from __future__ import annotations

import functools
import heapq
from pathlib import Path

import numpy as np

__all__ = ["check_model_dir", "choose_drops", "embed", "embed_ids", "embed_one_thread", "tokenize"]


def check_model_dir(path: str) -> None:
    """A clear error before any work when ``path`` is not a Hugging Face model folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"--semantic-dedup {path}: no such model folder")
    if not (folder / "config.json").is_file():
        raise ValueError(f"--semantic-dedup {path}: not a Hugging Face model folder (no config.json)")


@functools.lru_cache(maxsize=2)
def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@functools.lru_cache(maxsize=1)
def _model(model_dir: str):
    from transformers import AutoModel

    # AutoModel on a causal LM's folder gives its base model: the last hidden state, no LM head
    return AutoModel.from_pretrained(model_dir, dtype="float32").eval()


def tokenize(texts: list[str], model_dir: str, max_tokens: int) -> list[np.ndarray]:
    """Each text's token ids for the model (its special tokens included), the first ``max_tokens``."""
    check_model_dir(model_dir)
    enc = _tokenizer(model_dir)(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    return [np.asarray(ids, dtype=np.int64) for ids in enc]


def embed_ids(ids: list[np.ndarray], model_dir: str, batch_size: int) -> np.ndarray:
    """(N, d) float32 unit vectors: the mean of the last hidden state over each document's tokens.

    Batches are right-padded with an attention mask (a padded position changes no real token's state);
    the pooling and norm run in float64, so summation order adds no noise on top of the model's own.
    """
    import torch

    check_model_dir(model_dir)
    model = _model(model_dir)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch = ids[start:start + batch_size]
            width = max(1, max(len(x) for x in batch))
            input_ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for i, x in enumerate(batch):
                input_ids[i, :len(x)] = torch.from_numpy(x)
                mask[i, :len(x)] = 1
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state.double()
            m = mask.unsqueeze(-1).double()
            mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            mean = mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)
            out.append(mean.float().numpy())
    dim = model.config.hidden_size
    return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)


def embed_one_thread(ids: list[np.ndarray], model_dir: str, batch_size: int) -> np.ndarray:
    """:func:`embed_ids` with torch on one thread: the unit of work `mpt prep` hands its engine (a Ray task,
    a pool process or its own). A matrix product's sums may be ordered by the thread count, so one thread
    everywhere gives the same bits on any engine and worker count (on the same kind of CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return embed_ids(ids, model_dir, batch_size)
    finally:
        torch.set_num_threads(before)


def embed(texts: list[str], model_dir: str, batch_size: int = 32, max_tokens: int = 512) -> np.ndarray:
    """(N, d) float32 unit embeddings of ``texts`` (see :func:`embed_ids`); the same bytes every run."""
    return embed_ids(tokenize(texts, model_dir, max_tokens), model_dir, batch_size)


def _cluster_scores(vectors: np.ndarray) -> list[tuple[float, int]]:
    """One cluster's members (rows, in input order) in the order the greedy drops them: (score, row).

    Lazy greedy: scores only fall as members are dropped, so a popped entry whose score is still
    current is the true maximum. Similarities are computed once (c x c), so a rescore is exact.
    """
    c = len(vectors)
    sims = vectors @ vectors.T
    kept = np.ones(c, dtype=bool)

    def score(j: int) -> float:
        earlier = sims[j, :j][kept[:j]]
        return float(earlier.max()) if len(earlier) else -np.inf

    heap = [(-score(j), -j) for j in range(1, c)]
    heapq.heapify(heap)
    order: list[tuple[float, int]] = []
    while heap:
        neg, negj = heapq.heappop(heap)
        j = -negj
        now = score(j)
        if now == -np.inf:
            continue                     # no kept earlier member: it stays
        if now != -neg:
            heapq.heappush(heap, (-now, negj))
            continue
        kept[j] = False
        order.append((now, j))
    return order


def choose_drops(embeddings: np.ndarray, drop_fraction: float, n_clusters: int, seed: int = 0) -> list[int]:
    """The sorted indices of the documents to drop: round(drop_fraction * N) of them (module docstring).

    Memory: one cluster's c x c similarities at a time (8 bytes each): choose ``n_clusters`` so that
    clusters stay within about 10,000 documents.
    """
    if not 0 < drop_fraction < 1:
        raise ValueError(f"semantic drop fraction {drop_fraction} must be between 0 and 1 (exclusive)")
    if n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters} must be >= 1")
    n = len(embeddings)
    target = round(drop_fraction * n)
    if target == 0:
        return []
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float64)
    k = min(n_clusters, n)
    labels = KMeans(n_clusters=k, random_state=seed, n_init=3).fit(x).labels_ if k > 1 else np.zeros(n, int)
    candidates: list[tuple[float, int]] = []
    for label in range(k):
        members = np.flatnonzero(labels == label)          # ascending: input order
        for s, row in _cluster_scores(x[members]):
            candidates.append((s, int(members[row])))
    # within a cluster the greedy popped in this same order, so one global sort merges the clusters
    candidates.sort(key=lambda t: (-t[0], -t[1]))
    return sorted(i for _, i in candidates[:target])
