"""Whole-corpus near-dedup stages: quality against exact Jaccard on planted near-duplicates, the same
answer whatever the partitioning, the earliest document kept, chains merged, datasketch agreement."""

import pickle
import random

import numpy as np
import pytest

from mpt.data.dedup import DedupConfig, Deduplicator, fingerprint
from mpt.data.near_dedup import (
    band_keys,
    bucket_groups,
    candidates,
    confirm,
    lsh_params,
    near_duplicates,
    route,
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
        sigs = [signatures(texts[lo:hi], CFG) for lo, hi in zip(bounds, bounds[1:], strict=False)]
        values = np.concatenate([s.values for s in sigs])
        for shards in (1, 3, 8):
            routed = [pickle.loads(pickle.dumps(route(s.keys, np.arange(lo, hi), shards)))   # as a Ray task returns it
                      for s, lo, hi in zip(sigs, bounds, bounds[1:], strict=False)]
            groups = [pickle.loads(pickle.dumps(bucket_groups(np.concatenate([r[s] for r in routed]))))
                      for s in range(shards)]
            docs = candidates(groups)
            answers.append(confirm(groups, docs, values[docs], CFG.threshold))
    assert len(answers[0]) > 100
    for other in answers[1:]:
        assert np.array_equal(answers[0], other)
    assert np.all(np.diff(answers[0]) > 0)   # sorted, each index once


def test_signatures_are_the_streaming_deduplicators_minhash(corpus):
    texts, _ = corpus
    sigs = signatures(texts[3:5], CFG)
    bands, rows = lsh_params(CFG.threshold, CFG.num_perm)
    assert sigs.values.dtype == np.uint32 and sigs.keys.shape == (2, bands)
    for row, text in zip(sigs.values, texts[3:5], strict=True):
        assert np.array_equal(row, fingerprint(text, CFG)[1])
    # a band's key changes with any of its r values and with nothing outside the band
    changed = sigs.values.copy()
    changed[0, rows] += 1                  # the second band's first value
    keys = band_keys(changed, CFG)
    assert keys[0, 1] != sigs.keys[0, 1]
    assert np.array_equal(np.delete(keys[0], 1), np.delete(sigs.keys[0], 1))


def test_a_bucket_group_is_listed_once():
    entries = np.concatenate(route(np.array([[5, 6], [5, 6], [7, 8]], dtype=np.uint64), np.array([10, 11, 12]), 1))
    groups = bucket_groups(entries)
    assert groups.offsets.tolist() == [0, 2] and groups.docs.tolist() == [10, 11]   # both bands: one group


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
