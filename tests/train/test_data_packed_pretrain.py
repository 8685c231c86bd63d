"""Packed pretraining: whole documents of `mpt prep --mode docs` shards packed into rows with document masks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpt.cli import main
from mpt.config import from_dict
from mpt.data import Shard, read_index
from mpt.train import Recipe, train
from mpt.train.data import PackedPretrainBatches, PretrainBatches, count_targets
from mpt.train.recipe import SourceSection
from tests.tiny import tiny_model

SEQ = 128


@pytest.fixture(scope="module")
def docs_shards(tmp_path_factory) -> Path:
    """Paragraphs of The Great Gatsby as documents (most shorter than a row, some longer), in docs shards."""
    from tests.conftest import SHARED

    neox = SHARED / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
    book = SHARED / "data" / "longcontext" / "great_gatsby.txt"
    if not (neox.is_file() and book.is_file()):
        pytest.skip("shared tokenizer or Great Gatsby text not found")
    text = book.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    body = text[text.index("*** START"):text.index("*** END")].split("\n", 1)[1]
    paragraphs = [" ".join(p.split()) for p in body.split("\n\n") if p.strip()][40:200]
    root = tmp_path_factory.mktemp("packed")
    src = root / "paragraphs.jsonl"
    src.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    out = root / "docs"
    assert main(["prep", str(src), "--out", str(out), "--tokenizer", str(neox), "--mode", "docs",
                 "--shard-bytes", "8000", "--no-exact-dedup", "--no-progress"]) == 0
    return out


def documents(folder: Path) -> list[list[int]]:
    index = read_index(folder)
    return [s.tolist() for info in index.shards for s in Shard(folder / info.file, np.dtype("<u2"))]


def packed(folder, rank_batch=4, rank=0, world=1, seed=0, seq_len=SEQ) -> PackedPretrainBatches:
    return PackedPretrainBatches([SourceSection(str(folder))], seq_len, rank_batch, seed, rank, world,
                                 log=lambda *_: None)


def pieces_of(batch) -> list[list[int]]:
    """The documents' pieces of each row, by sequence_id, in row order."""
    out = []
    for ids, seq in zip(batch["input_ids"].tolist(), batch["sequence_id"].tolist(), strict=True):
        for k in sorted(set(seq) - {-1}):
            out.append([t for t, s in zip(ids, seq, strict=True) if s == k])
    return out


def test_an_epoch_holds_every_document_once_and_cuts_only_those_longer_than_a_row(docs_shards):
    docs = documents(docs_shards)
    lengths = [len(d) for d in docs]
    assert min(lengths) < SEQ // 4 and max(lengths) > SEQ and sum(n > SEQ for n in lengths) >= 3
    data = packed(docs_shards)
    rows = data.samples_per_epoch()
    assert rows * SEQ >= sum(lengths) and rows < len(docs) / 2       # several documents per row
    batches = [data.next() for _ in range(-(-rows // 4))]
    pieces = [p for b in batches for p in pieces_of(b)]
    seen_tokens = sum(len(p) for p in pieces)
    # the rows past the epoch's end belong to the next epoch: take this epoch's documents by count
    whole, i = [], 0
    while len(whole) < len(docs):
        doc = pieces[i]
        while doc[-1] != 0:  # a piece without the final EOS continues at the start of the next row
            i += 1
            doc = doc + pieces[i]
        whole.append(doc)
        i += 1
    assert sorted(map(tuple, whole)) == sorted(map(tuple, docs))     # every document once, exactly
    assert seen_tokens >= sum(lengths)
    for b in batches:
        assert b["input_ids"].shape == (4, SEQ)
        seq = b["sequence_id"]
        assert ((seq[:, 1:] >= seq[:, :-1]) | (seq[:, 1:] == -1)).all()   # contiguous documents, padding last
        assert (b["labels"][seq == -1] == -100).all()


def test_a_packed_batch_gives_each_document_its_loss_alone(docs_shards):
    data = packed(docs_shards, rank_batch=3)
    data.next()
    batch = data.next()
    model = tiny_model(0, d_model=64, n_heads=4, max_seq_len=SEQ, vocab_size=50432,
                       attn_config={"attn_uses_sequence_id": True, "alibi": True})
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], sequence_id=batch["sequence_id"]).logits
        packed_loss = model(**batch).loss.item()
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none",
                                ignore_index=-100)
    total, count, checked = 0.0, 0, 0
    for r in range(batch["input_ids"].shape[0]):
        seq = batch["sequence_id"][r]
        for k in sorted(set(seq.tolist()) - {-1}):
            where = (seq == k).nonzero().flatten()
            start, end = int(where[0]), int(where[-1]) + 1
            alone = batch["input_ids"][r, start:end][None]
            if alone.shape[1] < 2:
                continue
            with torch.no_grad():
                expected = model(input_ids=alone, labels=alone).loss.item() * (alone.shape[1] - 1)
            got = per_token[r, start:end - 1].sum().item()   # targets start+1 .. end-1, predicted from start ..
            assert abs(got - expected) < 1e-3 * max(1.0, abs(expected)), (r, k, got, expected)
            total, count, checked = total + expected, count + alone.shape[1] - 1, checked + 1
    assert checked >= 6 and count == count_targets(batch["labels"])
    assert abs(packed_loss - total / count) < 1e-5                 # the batch loss: the documents' mean


def test_rows_are_the_same_for_any_number_of_ranks_and_resume_exactly(docs_shards):
    one = packed(docs_shards, rank_batch=4, world=1, seed=3)
    two = [packed(docs_shards, rank_batch=2, rank=r, world=2, seed=3) for r in range(2)]
    epoch_rows = one.samples_per_epoch()
    for step in range(epoch_rows // 4 + 3):               # across the end of the first epoch
        a = one.next()
        b = [t.next() for t in two]
        for key in a:
            assert torch.equal(a[key], torch.cat([b[0][key], b[1][key]])), (step, key)
        if step == 2:
            saved = one.state_dict()
            rest = [one.next() for _ in range(epoch_rows // 4 + 1)]
            again = packed(docs_shards, rank_batch=2, rank=1, world=2, seed=3)   # resumed on another world size
            again.load_state_dict(saved)
            for want in rest:
                got = again.next()
                assert torch.equal(got["input_ids"], want["input_ids"][2:])
            one.load_state_dict(saved)
    assert one.cursor[0] == 1                              # the second epoch has started
    other_seed = packed(docs_shards, rank_batch=4, seed=4).next()
    assert not torch.equal(other_seed["input_ids"], packed(docs_shards, rank_batch=4, seed=3).next()["input_ids"])


def test_wrong_shards_or_state_for_packing_are_clear_errors(docs_shards, shared, tmp_path):
    concat = tmp_path / "concat"
    neox = shared / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
    assert main(["prep", str(docs_shards.parent / "paragraphs.jsonl"), "--out", str(concat),
                 "--tokenizer", str(neox), "--seq-len", "128", "--no-progress"]) == 0
    with pytest.raises(ValueError, match=r"concat samples of 128 tokens; prep it with `mpt prep --mode docs`"):
        packed(concat)
    with pytest.raises(ValueError, match=r"docs holds whole documents .* set data.packing: true"):
        PretrainBatches([SourceSection(str(docs_shards))], 2, 0, 0, 1, 0)
    state = packed(docs_shards).state_dict()
    unpacked = PretrainBatches([SourceSection(str(concat))], 2, 0, 0, 1, 0)
    with pytest.raises(ValueError, match="trained with data.packing=true"):
        unpacked.load_state_dict(state)
    with pytest.raises(ValueError, match="this run has data.packing=true"):
        packed(docs_shards).load_state_dict(unpacked.state_dict())
    with pytest.raises(ValueError, match="packed rows of 128 tokens, this run packs 64"):
        packed(docs_shards, seq_len=64).load_state_dict(state)


def _recipe(tmp_path, folder, flag=True) -> Recipe:
    return from_dict(Recipe, {
        "model": {"preset": "mpt-tiny", "fields": {"d_model": 32, "n_heads": 2, "n_layers": 2, "max_seq_len": SEQ,
                                                   "vocab_size": 50432,
                                                   "attn_config": {"attn_uses_sequence_id": flag}}},
        "data": {"kind": "pretrain", "sources": [{"path": str(folder)}], "packing": True},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "train": {"max_duration": "3ba", "global_batch_size": 4, "micro_batch_size": 2, "device": "cpu"},
        "checkpoint": {"folder": str(tmp_path / "ckpt"), "autoresume": False},
        "log": {"folder": str(tmp_path / "log")},
        "watchdog": {"enabled": False}, "spike": {"enabled": False},
    })


def test_packed_pretraining_trains_through_the_loop(tmp_path, docs_shards):
    messages = []
    recipe = _recipe(tmp_path, docs_shards)
    recipe.data.eval_sources = recipe.data.sources  # validation on docs shards is packed the same way
    recipe.eval.every_batches, recipe.eval.batches = 3, 2
    result = train(recipe, log=messages.append)
    assert result.steps == 3 and np.isfinite(result.final_loss)
    assert any(m.startswith("packing: ") and "real tokens" in m for m in messages)
    assert any(m.startswith("step 3: validation loss ") for m in messages), messages
    with pytest.raises(ValueError, match="attn_config.attn_uses_sequence_id"):
        train(_recipe(tmp_path / "b", docs_shards, flag=False), log=lambda *_: None)


def test_mpt_train_runs_a_packed_recipe_on_docs_shards(tmp_path, docs_shards):
    import yaml

    recipe = {
        "model": {"preset": "mpt-tiny", "fields": {"d_model": 32, "n_heads": 2, "n_layers": 2, "max_seq_len": SEQ,
                                                   "attn_config": {"attn_uses_sequence_id": True}}},
        "data": {"kind": "pretrain", "sources": [{"path": str(docs_shards)}], "packing": True},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "train": {"max_duration": "2ba", "global_batch_size": 4, "micro_batch_size": 2, "device": "cpu"},
        "checkpoint": {"folder": str(tmp_path / "ckpt"), "autoresume": False},
        "log": {"folder": str(tmp_path / "log")},
        "watchdog": {"enabled": False},
    }
    path = tmp_path / "packed.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0
    assert len((tmp_path / "log" / "metrics.jsonl").read_text().splitlines()) == 2


def test_packed_pretraining_resumes_bit_identical(tmp_path, docs_shards):
    """4 steps at once, and 2 steps then 2 more from the checkpoint: the same losses and weights."""
    def run(folder, steps):
        recipe = _recipe(folder, docs_shards)
        recipe.train.max_duration, recipe.train.deterministic = f"{steps}ba", True
        recipe.scheduler.name = "constant"    # the learning rate must not depend on the run's length
        recipe.checkpoint.autoresume, recipe.checkpoint.every_batches = True, 2
        recipe.checkpoint.export_hf = str(folder / "hf")
        return train(recipe, log=lambda *_: None)

    def losses(folder):
        lines = (folder / "log" / "metrics.jsonl").read_text().splitlines()
        return {m["step"]: m["loss"] for m in map(json.loads, lines) if "loss" in m}

    from safetensors.torch import load_file

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4)
    assert straight.steps == resumed.steps == 4
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    a, b = (load_file(str(p / "hf" / "model.safetensors")) for p in (tmp_path / "a", tmp_path / "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
