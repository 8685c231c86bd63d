"""Packed finetuning: the same examples and the same loss as padding, fewer wasted tokens."""

import json
from pathlib import Path

import pytest
import torch

from mpt import MPTForCausalLM
from mpt.config import ConfigError, from_dict
from mpt.data import DataInputError
from mpt.data.finetune import pad_collate, plan_packing
from mpt.train import Recipe, train
from mpt.train.data import FinetuneBatches, count_targets
from mpt.train.recipe import DataSection
from tests.tiny import tiny_model

CHATS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Italy?"},
                  {"role": "assistant", "content": "Rome."}]},
    {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]},
]


@pytest.fixture
def mixed_jsonl(shared, tmp_path) -> Path:
    """Short prompt/response records of the shared Dolly/HH sample, two ChatML chats, then one
    record of about 600 tokens (the last line)."""
    sample = shared / "data" / "finetune" / "dolly_hhrlhf_small.jsonl"
    records = [json.loads(line) for line in sample.read_text().splitlines()]
    short = [r for r in records if len(r["prompt"]) + len(r["response"]) < 300][:24]
    long = {"prompt": "Repeat after me. " * 50, "response": "after me. " * 100}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in short + CHATS + [long]) + "\n")
    return path


def _model(seq_len: int) -> MPTForCausalLM:
    return tiny_model(0, max_seq_len=seq_len, vocab_size=50432, attn_config={"attn_uses_sequence_id": True}).train()


def test_plan_packing_places_every_example_once_within_the_row():
    lengths = [7, 3, 9, 1, 5, 5, 2, 8, 10, 4, 6, 6]
    rows = plan_packing(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 7  # 66 tokens need at least 7 rows of 10
    with pytest.raises(ValueError, match="example 2 has 11 tokens, more than seq_len=10"):
        plan_packing([3, 4, 11], 10)


def test_packed_batch_has_the_same_targets_and_loss_as_padded(neox, mixed_jsonl):
    seq_len = 128
    data = FinetuneBatches(str(mixed_jsonl), str(neox), seq_len, 1, 0, 0, 1, log=lambda *_: None, packing=True,
                           truncation="drop")
    n_examples = len(data.examples)
    assert n_examples == 26 and len(data.rows) <= n_examples / 2  # several examples per row
    data.rank_batch = len(data.rows)
    packed = data.next()  # one whole epoch: every example once
    padded = pad_collate(data.examples, data.pad_id)  # what unpacked finetuning feeds the model
    assert set(packed) == {"input_ids", "labels", "sequence_id"}
    # response-only loss kept exactly: the same trained tokens, none added at example boundaries
    assert count_targets(packed["labels"]) == count_targets(padded["labels"])
    assert sorted(packed["labels"][packed["labels"] != -100].tolist()) == \
        sorted(padded["labels"][padded["labels"] != -100].tolist())

    model = _model(seq_len)
    for mode in ("eval", "train"):  # the plain and the fused (training) loss
        getattr(model, mode)()
        with torch.no_grad() if mode == "eval" else torch.enable_grad():
            a = model(**padded).loss.item()
            b = model(**packed).loss.item()
        assert abs(a - b) < 2e-5, (mode, a, b)


def test_packing_an_example_longer_than_max_seq_len_is_an_error_naming_it(neox, mixed_jsonl):
    # with packing the default is to stop, not to cut the example
    with pytest.raises(DataInputError, match=r"mixed.jsonl:27: \d+ tokens is more than max_seq_len=256"):
        FinetuneBatches(str(mixed_jsonl), str(neox), 256, 2, 0, 0, 1, log=lambda *_: None, packing=True)
    kept = FinetuneBatches(str(mixed_jsonl), str(neox), 256, 2, 0, 0, 1, log=lambda *_: None, packing=True,
                           truncation="drop")
    assert len(kept.examples) == 26 and all(len(e.input_ids) <= 256 for e in kept.examples)


def test_packed_batches_resume_where_they_stopped_and_not_with_packing_changed(neox, mixed_jsonl):
    kw = dict(log=lambda *_: None, truncation="drop")
    packed = FinetuneBatches(str(mixed_jsonl), str(neox), 512, 2, 0, 0, 1, packing=True, **kw)
    for _ in range(len(packed.rows)):  # past the end of an epoch
        packed.next()
    again = FinetuneBatches(str(mixed_jsonl), str(neox), 512, 2, 0, 0, 1, packing=True, **kw)
    again.load_state_dict(packed.state_dict())
    a, b = packed.next(), again.next()
    assert all(torch.equal(a[k], b[k]) for k in a)
    padded = FinetuneBatches(str(mixed_jsonl), str(neox), 512, 2, 0, 0, 1, packing=False, **kw)
    with pytest.raises(ValueError, match="data.packing=True .* this run has data.packing=False"):
        padded.load_state_dict(packed.state_dict())


def test_data_section_rejects_an_unknown_truncation():
    with pytest.raises(ConfigError, match="data.truncation"):
        from_dict(DataSection, {"kind": "finetune", "finetune_path": "x", "tokenizer": "y", "truncation": "cut"},
                  "data")


def _recipe(tmp_path, data, neox, packing=True, flag=True, **data_fields) -> Recipe:
    return from_dict(Recipe, {
        "model": {"preset": "mpt-tiny", "fields": {"d_model": 32, "n_heads": 2, "n_layers": 2, "max_seq_len": 256,
                                                   "attn_config": {"attn_uses_sequence_id": flag}}},
        "data": {"kind": "finetune", "finetune_path": str(data), "tokenizer": str(neox), "packing": packing,
                 **data_fields},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "train": {"max_duration": "2ba", "global_batch_size": 2, "micro_batch_size": 1, "device": "cpu"},
        "checkpoint": {"folder": str(tmp_path / "ckpt"), "autoresume": False},
        "log": {"folder": str(tmp_path / "log")},
        "watchdog": {"enabled": False}, "spike": {"enabled": False},
    })


def test_packed_finetuning_trains_through_the_loop(tmp_path, neox, mixed_jsonl):
    messages = []
    result = train(_recipe(tmp_path, mixed_jsonl, neox, truncation="drop"), log=messages.append)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    assert any(m.startswith("packing: ") for m in messages)


def test_packed_finetuning_without_the_model_flag_stops_before_a_step(tmp_path, neox, mixed_jsonl):
    with pytest.raises(ValueError, match="attn_config.attn_uses_sequence_id"):
        train(_recipe(tmp_path, mixed_jsonl, neox, flag=False, truncation="drop"), log=lambda *_: None)
    with pytest.raises(DataInputError, match="mixed.jsonl:27: .* more than max_seq_len=256"):
        train(_recipe(tmp_path, mixed_jsonl, neox), log=lambda *_: None)
