"""Whole-corpus near-dedup stages: quality against exact Jaccard on planted near-duplicates, the same
answer whatever the partitioning, the earliest document kept, chains merged, datasketch agreement."""

import pickle
import random

import numpy as np
import pytest

from mpt.data.dedup import DedupConfig, Deduplicator, fingerprint
from mpt.data.near_dedup import (
    components,
    lsh_params,
    near_duplicates,
    route,
    shard_edges,
    signatures,
)
from tests.data.planted import (
    datasketch_decisions,
    edit_to,
    exact_pairs,
    keep_earliest,
    planted_corpus,
    precision_recall,
)

CFG = DedupConfig(exact=False, near=True, threshold=0.8, num_perm=128)
# planted Jaccards at least 0.1 from the threshold: the MinHash estimate's spread at 128 values is ~0.035
LEVELS = (1.0, 0.95, 0.9, 0.7, 0.6, 0.3)


@pytest.fixture(scope="module")
def corpus():
    texts, _ = planted_corpus(200, seed=0, levels=LEVELS)
    return texts, keep_earliest(len(texts), exact_pairs(texts, CFG.threshold))


def test_precision_and_recall_against_exact_jaccard(corpus):
    texts, truth = corpus
    predicted = set(near_duplicates(texts, CFG).tolist())
    precision, recall = precision_recall(predicted, truth)
    assert len(truth) > 100
    assert precision >= 0.97 and recall >= 0.97, (precision, recall)


def test_same_answer_whatever_the_partitions_and_bucket_shards(corpus):
    texts, _ = corpus
    answers = []
    for parts in (1, 2, 4, 7):
        bounds = np.linspace(0, len(texts), parts + 1).astype(int)
        sigs = [signatures([(g, texts[g]) for g in range(lo, hi)], CFG)
                for lo, hi in zip(bounds, bounds[1:], strict=False)]
        for shards in (1, 3, 8):
            routed = [pickle.loads(pickle.dumps(route(s, shards))) for s in sigs]   # as a Ray task returns it
            edges = [shard_edges([r[s] for r in routed], CFG.threshold) for s in range(shards)]
            answers.append(components(pickle.loads(pickle.dumps(edges))))
    assert len(answers[0]) > 100
    for other in answers[1:]:
        assert np.array_equal(answers[0], other)
    assert np.all(np.diff(answers[0]) > 0)   # sorted, each index once


def test_signatures_are_the_streaming_deduplicators_minhash(corpus):
    texts, _ = corpus
    sigs = signatures([(7, texts[3]), (9, texts[4])], CFG)
    assert sigs.index.tolist() == [7, 9] and sigs.keys.shape == (2, lsh_params(CFG.threshold, CFG.num_perm)[0])
    for row, text in zip(sigs.values, texts[3:5], strict=True):
        assert np.array_equal(row, fingerprint(text, CFG)[1])


def words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.randrange(5000)}" for _ in range(n)]


def test_the_earliest_document_of_a_cluster_is_kept():
    base = words(200, 1)
    copy1 = " ".join(edit_to(base, 0.95, random.Random(2), "a"))
    copy2 = " ".join(edit_to(base, 0.9, random.Random(3), "b"))
    other = " ".join(words(200, 4))
    texts = [other, copy2, " ".join(base), copy1]
    assert near_duplicates(texts, CFG).tolist() == [2, 3]            # copy2 came first: it stays
    assert near_duplicates(texts[::-1], CFG, partitions=3, shards=2).tolist() == [1, 2]
    assert near_duplicates([other, other], CFG).tolist() == [1]
    assert near_duplicates([], CFG).tolist() == []


def test_a_chain_is_one_cluster_unlike_the_streaming_deduplicator():
    """A~B and B~C but not A~C: the components keep A only; dedup.Deduplicator compares C with the kept
    documents (A) only, so it keeps C."""
    cfg = DedupConfig(exact=False, near=True, threshold=0.5, num_perm=256)
    a = words(300, 5)
    b, c = list(a), list(a)
    for n in range(13):   # 13 words 5 apart: 65 of 296 shingles new, Jaccard 231/361 = 0.64
        b[4 + 5 * n] = c[4 + 5 * n] = f"bx{n}"
        c[150 + 5 * n] = f"cx{n}"   # C: B with 13 more words changed, elsewhere: 0.64 to B, 0.39 to A
    texts = [" ".join(x) for x in (a, b, c)]
    j = exact_pairs(texts, 0.0)
    assert j[(0, 1)] >= 0.6 and j[(1, 2)] >= 0.6 and j.get((0, 2), 0.0) <= 0.4, j
    assert near_duplicates(texts, cfg).tolist() == [1, 2]
    streaming = Deduplicator(cfg)
    assert [streaming.check(t) for t in texts] == [None, "near", None]


def test_agreement_with_datasketch_minhash_lsh(corpus):
    texts, truth = corpus
    ours = set(near_duplicates(texts, CFG, partitions=2, shards=2).tolist())
    assert lsh_params(CFG.threshold, CFG.num_perm) == (14, 9)
    # the same candidates, confirmation and components through datasketch's own index: the same answer
    assert ours == datasketch_decisions(texts, CFG, streaming=False)
    streaming = datasketch_decisions(texts, CFG, streaming=True)
    same = sum((i in ours) == (i in streaming) for i in range(len(texts))) / len(texts)
    assert same >= 0.98, same   # only chains differ: the streaming index keeps a copy of a copy
    assert precision_recall(streaming, truth)[0] >= 0.97
