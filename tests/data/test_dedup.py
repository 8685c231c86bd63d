import json
import random

import pytest

from mpt.data.dedup import DedupConfig, Deduplicator


def arxiv_texts(shared) -> list[str]:
    lines = (shared / "data" / "pretrain" / "arxiv_sample.jsonl").read_text().splitlines()
    return [json.loads(line)["text"][:20_000] for line in lines]


def perturb(text: str, rate: float, seed: int) -> str:
    """Change about `rate` of the words: a planted near-duplicate."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), int(len(words) * rate)):
        words[i] = rng.choice(["alpha", "beta", "gamma", "delta"])
    return " ".join(words)


def test_planted_near_duplicates_removed_distinct_kept(shared):
    texts = arxiv_texts(shared)
    dd = Deduplicator(DedupConfig(exact=True, near=True, threshold=0.7))
    assert [dd.check(t) for t in texts] == [None] * len(texts)          # 20 distinct papers all kept
    planted = [perturb(texts[i], 0.01, i) for i in range(0, 20, 2)]     # 1 % of words changed
    assert [dd.check(t) for t in planted] == ["near"] * 10
    assert dd.near_removed == 10 and dd.exact_removed == 0
    # heavily edited copies are no longer near-duplicates at this threshold
    far = [perturb(texts[i], 0.5, 100 + i) for i in range(1, 20, 4)]
    assert [dd.check(t) for t in far] == [None] * len(far)


def test_exact_dedup_normalises_case_and_whitespace():
    dd = Deduplicator(DedupConfig())
    assert dd.check("Hello  World\n") is None
    assert dd.check("hello world") == "exact"
    assert dd.check("hello world!") is None
    assert dd.exact_removed == 1
    off = Deduplicator(DedupConfig(exact=False))
    assert off.check("same") is None and off.check("same") is None


def test_bad_dedup_config():
    with pytest.raises(ValueError, match="threshold=1.5"):
        Deduplicator(DedupConfig(near=True, threshold=1.5))
