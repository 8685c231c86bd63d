"""Semantic dedup (mpt.data.semantic_dedup): planted near-copies go first, deterministic, bounded."""

from __future__ import annotations

import numpy as np
import pytest

from mpt.data import prep_dedup, semantic_dedup
from mpt.data.semantic_dedup import check_model_dir, choose_drops, embed
from tests.data.conftest import semantic_corpus


@pytest.fixture(scope="module")
def model_dir(tiny_bert) -> str:
    return tiny_bert


def test_planted_copies_go_first_and_originals_stay(model_dir):
    texts, copies = semantic_corpus()
    emb = embed(texts, model_dir, batch_size=8, max_tokens=48)
    assert emb.dtype == np.float32 and emb.shape == (len(texts), 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    drops = choose_drops(emb, len(copies) / len(texts), n_clusters=4, seed=0)
    assert drops == copies                     # exactly the copies: each original (earlier) is kept


def test_deterministic(model_dir):
    texts, _ = semantic_corpus()
    first = embed(texts, model_dir, batch_size=8, max_tokens=48)
    semantic_dedup._model.cache_clear()        # loaded again: the same bytes
    second = embed(texts, model_dir, batch_size=8, max_tokens=48)
    assert first.tobytes() == second.tobytes()
    assert choose_drops(first, 0.3, 4, seed=1) == choose_drops(second, 0.3, 4, seed=1)


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 0.9])
def test_fraction_respected(fraction):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(101, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    drops = choose_drops(emb.astype(np.float32), fraction, n_clusters=5, seed=0)
    assert len(drops) == round(fraction * 101)
    assert drops == sorted(set(drops)) and all(0 <= i < 101 for i in drops)


def test_one_cluster_matches_the_plain_greedy():
    """The rule without its shortcuts: drop the document most similar to a kept earlier one, again and again."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(60, 6))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    kept = set(range(60))
    for _ in range(round(0.4 * 60)):
        scores = {j: max(sims[j, i] for i in kept if i < j) for j in kept if j > 0}
        kept.remove(max(scores, key=lambda j: (scores[j], j)))
    assert choose_drops(emb, 0.4, n_clusters=1, seed=0) == sorted(set(range(60)) - kept)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction_is_an_error(fraction):
    with pytest.raises(ValueError, match="between 0 and 1"):
        choose_drops(np.eye(4, dtype=np.float32), fraction, 2)


def test_missing_model_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no such model folder"):
        embed(["a"], str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no config.json"):
        check_model_dir(str(tmp_path))


def _prep_config(model_dir: str, src, out, **kw):
    from mpt.data.prep import PrepConfig

    # the model folder's word-level tokenizer also makes the shards ([PAD] as EOS: a test has no other)
    return PrepConfig(inputs=[str(src)], out=str(out), tokenizer=model_dir, eos_token="[PAD]", mode="docs",
                      progress=False, semantic_dedup=model_dir, **{"workers": 1, **kw})


def test_prep_drops_the_planted_copies(model_dir, tmp_path, monkeypatch):
    import json

    from tokenizers import Tokenizer

    from mpt.data import Shard, read_index
    from mpt.data.prep import PrepSummary, prep

    texts, copies = semantic_corpus()
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*texts, texts[5]]))   # + one exact copy
    s = prep(_prep_config(model_dir, src, tmp_path / "o", semantic_drop=len(copies) / (len(texts)),
                          partition_bytes=2000))
    assert (s.exact_duplicates, s.semantic_duplicates, s.documents_written) == (1, len(copies), 40)
    assert "1 exact, 0 near and 10 semantic duplicates removed" in "\n".join(s.lines())
    assert PrepSummary.from_json((tmp_path / "o" / "summary.json").read_text()).semantic_duplicates == 10
    index = read_index(tmp_path / "o")
    dtype = np.dtype("<u2") if index.dtype == "uint16" else np.dtype("<u4")
    tokens = np.concatenate([np.asarray(Shard(tmp_path / "o" / f.file, dtype).tokens) for f in index.shards])
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    kept = [t for i, t in enumerate(texts) if i not in copies]
    assert tokens.tolist() == [i for t in kept for i in [*tok.encode(t).ids, 0]]
    # one partition instead of several, and embedding tasks of 7 documents on two worker processes: the
    # same shards
    prep(_prep_config(model_dir, src, tmp_path / "one", semantic_drop=len(copies) / len(texts)))
    monkeypatch.setattr(prep_dedup, "EMBED_TASK", 7)
    prep(_prep_config(model_dir, src, tmp_path / "two", semantic_drop=len(copies) / len(texts),
                      partition_bytes=2000, workers=2))
    for other in ("one", "two"):
        assert [(tmp_path / other / f.file).read_bytes() for f in index.shards] == \
            [(tmp_path / "o" / f.file).read_bytes() for f in index.shards]


def test_prep_checks_semantic_options_before_work(model_dir, tmp_path):
    from mpt.data.prep import prep

    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "a b c"}\n')
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="semantic_drop"):
            prep(_prep_config(model_dir, src, tmp_path / "o", semantic_drop=bad))
    cfg = _prep_config(model_dir, src, tmp_path / "o")
    cfg.semantic_dedup = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="no such model folder"):
        prep(cfg)
    assert not (tmp_path / "o").exists()


def test_cli_flags(model_dir, tmp_path):
    from mpt.cli import parse, prep_config

    cfg = prep_config(parse(["prep", "x.jsonl", "--out", str(tmp_path / "o"), "--semantic-dedup", model_dir,
                             "--semantic-drop", "0.3"]))
    assert (cfg.semantic_dedup, cfg.semantic_drop) == (model_dir, 0.3)
