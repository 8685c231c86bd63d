"""`mpt prep`'s whole-corpus dedup pass: exact copies, near-duplicate chains across partitions, the same
shards whatever the partitioning and workers, and the spill files' round trip."""

import json
import random

import numpy as np

from mpt.data import DedupConfig
from mpt.data.near_dedup import ENTRY
from mpt.data.prep import PrepConfig, prep
from mpt.data.prep_dedup import Spill
from mpt.data.prep_folder import PARTS_DIR
from mpt.data.shards import Shard, read_index
from tests.data.conftest import word_tokenizer


def words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.randrange(500)}" for _ in range(n)]


def chain() -> tuple[str, str, str]:
    """A~B and B~C (estimated Jaccard of 5-grams about 0.64), A and C far apart (about 0.39)."""
    a = words(300, 5)
    b, c = list(a), list(a)
    for n in range(13):
        b[4 + 5 * n] = c[4 + 5 * n] = f"w{400 + n}"
        c[150 + 5 * n] = f"w{450 + n}"
    return " ".join(a), " ".join(b), " ".join(c)


def documents(out) -> list[str]:
    """Docs mode: each written sample's text (word tokenizer: ids back to words), EOS left off."""
    index = read_index(out)
    vocab = {i + 2: f"w{i}" for i in range(600)}
    samples = [s for info in index.shards for s in Shard(out / info.file, np.dtype("<u2"))]
    return [" ".join(vocab[t] for t in sample.tolist()[:-1]) for sample in samples]


def test_a_chain_and_exact_copies_across_partitions(tmp_path):
    a, b, c = chain()
    other = " ".join(words(300, 9))
    lines = [other, a, b, b.upper(), c]          # B's exact copy differs in case only
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    tok = word_tokenizer(tmp_path / "tok.json", 600)
    hashes = []
    for name, partition_bytes, workers in (("one", 1 << 20, 1), ("five", 10, 1), ("five-two", 10, 2)):
        out = tmp_path / name
        s = prep(PrepConfig(inputs=[str(tmp_path / "in.jsonl")], out=str(out), tokenizer=tok, mode="docs",
                            dedup=DedupConfig(near=True, threshold=0.5, num_perm=256),
                            partition_bytes=partition_bytes, workers=workers, progress=False))
        # A, the earliest of the chain, stays: B and C go as near duplicates (C although it is far from A:
        # a streaming check against kept documents would keep it), B's copy as exact
        assert (s.exact_duplicates, s.near_duplicates, s.documents_written) == (1, 2, 2), name
        assert not (out / PARTS_DIR).exists()
        hashes.append([sh.sha256 for sh in read_index(out).shards])
    assert hashes[0] == hashes[1] == hashes[2]
    assert documents(tmp_path / "one") == [other, a]


def test_spill_round_trip(tmp_path):
    spill = Spill(tmp_path / "near", 3)
    made = []
    for p in range(4):
        routed = [np.zeros(p + s, dtype=ENTRY) for s in range(3)]
        for s, e in enumerate(routed):
            e["doc"] = np.arange(len(e)) + 100 * p + 10 * s
        made.append(routed)
        spill.add(routed)
    for s in range(3):
        assert spill.load(s)["doc"].tolist() == np.concatenate([m[s]["doc"] for m in made]).tolist()
    again = Spill(tmp_path / "near", 3)          # a rerun starts from nothing
    assert len(again.load(1)) == 0
    again.remove()
    assert not (tmp_path / "near").exists()
