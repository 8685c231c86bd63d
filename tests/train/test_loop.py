"""The loop in one process: learning, export, accumulation, guard, resume errors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from mpt import MPTForCausalLM
from mpt.config import from_dict
from mpt.train import Recipe, train
from mpt.train.checkpoint import CheckpointError, complete_checkpoints
from mpt.train.export import export_hf
from tests.tiny import tiny_config, tiny_model

from .helpers import make_shards, recipe_dict


def _run(tmp, data, log=None, **sections):
    recipe = from_dict(Recipe, recipe_dict(tmp, data, **sections))
    messages = [] if log is None else log
    return train(recipe, log=messages.append), messages


def test_loss_falls_and_export_loads_in_plain_transformers(tmp_path):
    from mpt.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the tokenizer that made the shards travels with the exported model " * 50)
    train_tokenizer(TokenizerTrainConfig(inputs=[str(corpus)], out=str(tmp_path / "tok"), vocab_size=300,
                                         progress=False))
    data = make_shards(tmp_path / "data", tokenizer=str(tmp_path / "tok"))
    result, _ = _run(tmp_path, data, train={"max_duration": "16ba"}, checkpoint={"export_hf": str(tmp_path / "hf")})
    losses = [json.loads(line)["loss"] for line in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 16 and sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3
    assert (tmp_path / "log" / "loss_curve.png").stat().st_size > 1000
    assert [p.name for p in complete_checkpoints(tmp_path / "ckpt")] == ["step-00000012", "step-00000016"]
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    ours = MPTForCausalLM.from_pretrained(tmp_path / "hf").eval()
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max() < 1e-4


def _weights(tmp, ckpt_dir):
    out = tmp / f"export-{ckpt_dir.name}-{ckpt_dir.parent.parent.name}"
    export_hf(ckpt_dir, out)
    return load_file(out / "model.safetensors")


def test_micro_batches_that_do_not_divide_the_batch_give_the_full_batch_gradient(tmp_path):
    data = make_shards(tmp_path / "data")
    finals = []
    for micro in (8, 3):
        run = tmp_path / f"micro{micro}"
        result, _ = _run(run, data, train={"max_duration": "3ba", "micro_batch_size": micro},
                         optimizer={"name": "adamw"}, checkpoint={"every_batches": 0})
        finals.append(_weights(tmp_path, result.checkpoint))
    for name, w in finals[0].items():
        assert torch.allclose(w, finals[1][name], atol=2e-6), name


def test_spikes_are_skipped_then_rolled_back_and_never_reach_the_weights(tmp_path):
    good = make_shards(tmp_path / "good")
    first, _ = _run(tmp_path, good, train={"max_duration": "24ba"}, checkpoint={"every_batches": 8},
                    log=[])
    before = _weights(tmp_path, first.checkpoint)
    # Same run, continued on random tokens: every step's loss jumps far above the recent median.
    noise = make_shards(tmp_path / "noise", random_tokens=True)
    messages = []
    with pytest.raises(RuntimeError, match="already rolled back 2 times"):
        _run(tmp_path, noise, log=messages, train={"max_duration": "40ba"},
             spike={"factor": 1.5, "patience": 2, "max_rollbacks": 2})
    assert any("skipped (loss spike" in m for m in messages)
    assert sum("rolled back to" in m for m in messages) == 2
    latest = complete_checkpoints(tmp_path / "ckpt")[-1]
    assert latest == first.checkpoint
    after = _weights(tmp_path, latest)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_non_finite_loss_is_skipped_and_stops_without_a_checkpoint(tmp_path):
    data = make_shards(tmp_path / "data")
    start = tmp_path / "start"
    torch.manual_seed(0)
    model = tiny_model(None).train()
    with torch.no_grad():
        model.transformer.blocks[0].ffn.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(start)
    messages = []
    with pytest.raises(RuntimeError, match="3 bad steps in a row.*no checkpoint to roll back to"):
        _run(tmp_path, data, log=messages, model={"preset": None, "init_from": str(start), "fields": {}})
    # one "step N: skipped (non-finite ...)" message a step (the step lines, also logged, say SKIPPED)
    assert sum(": skipped (" in m and "non-finite" in m for m in messages) == 3
    assert complete_checkpoints(tmp_path / "ckpt") == []


def test_resuming_into_a_different_model_shape_is_a_clear_error(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "4ba"})
    bigger = recipe_dict(tmp_path, data)["model"]
    bigger["fields"] = dict(bigger["fields"], n_layers=3)
    with pytest.raises(CheckpointError, match=r"n_layers: checkpoint 2, recipe 3"):
        _run(tmp_path, data, model=bigger)


def test_an_interrupted_save_is_ignored_and_cleaned(tmp_path):
    data = make_shards(tmp_path / "data")
    _run(tmp_path, data, train={"max_duration": "4ba"})
    partial = tmp_path / "ckpt" / "step-00000008.tmp"
    shutil.copytree(tmp_path / "ckpt" / "step-00000004", partial)
    (partial / "trainer_state.json").unlink()
    messages = []
    _run(tmp_path, data, log=messages, train={"max_duration": "8ba"})
    assert any("resumed from" in m and "step-00000004" in m for m in messages)
    assert not partial.exists()
    assert [p.name for p in complete_checkpoints(tmp_path / "ckpt")][-1] == "step-00000008"


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):
        _run(tmp_path, tmp_path / "nowhere")


def test_mpt_export_turns_a_training_checkpoint_into_a_transformers_folder(tmp_path):
    from mpt.cli import main

    data = make_shards(tmp_path / "data")
    result, _ = _run(tmp_path, data, train={"max_duration": "4ba"})
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert main(["export", str(result.checkpoint), str(tmp_path / "hf2")]) == 0
    ours = MPTForCausalLM.from_pretrained(tmp_path / "hf2").eval()
    ids = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max() < 1e-4


def test_compiled_blocks_and_selective_checkpointing_follow_the_eager_run(tmp_path):
    """train.compile compiles each block in place (inductor on CPU); activation_checkpointing: 2 recomputes
    every other block. Same losses as eager (float tolerance; exactly for checkpointing), same weights'
    names in the checkpoint, so the export loads as before."""
    data = make_shards(tmp_path / "data")

    def run(name, **train_fields):
        recipe = recipe_dict(tmp_path / name, data, train={"max_duration": "4ba", **train_fields},
                             checkpoint={"export_hf": str(tmp_path / name / "hf")})
        train(from_dict(Recipe, recipe), log=lambda *a: None)
        losses = [json.loads(line)["loss"] for line in (tmp_path / name / "log" / "metrics.jsonl").read_text()
                  .splitlines() if '"loss"' in line]
        return losses, load_file(tmp_path / name / "hf" / "model.safetensors")

    from mpt.train.parallel import parallelize

    model = tiny_model(None).train()
    parallelize(model, "none", "full", 1, 2, compile=True)
    blocks = model.transformer.blocks
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)  # compiled in place
    assert [type(b).__name__ for b in blocks] == ["CheckpointWrapper", "MPTBlock"]  # every 2nd checkpointed

    eager, eager_w = run("eager")
    compiled, compiled_w = run("compiled", compile=True)
    selective, selective_w = run("selective", activation_checkpointing=2)
    assert compiled == pytest.approx(eager, rel=1e-5) and selective == eager
    assert compiled_w.keys() == eager_w.keys() == selective_w.keys()
    for name, w in eager_w.items():
        assert torch.allclose(compiled_w[name], w, atol=1e-5), name
        assert torch.equal(selective_w[name], w), name


def test_flex_attention_is_the_cuda_default_unless_the_recipe_names_a_backend():
    from mpt.train.loop import _use_flex
    from mpt.train.recipe import ModelFieldOverrides as ModelFields

    config, cuda, cpu = tiny_config(n_layers=1), torch.device("cuda"), torch.device("cpu")
    assert _use_flex(config, ModelFields(), cuda) and not _use_flex(config, ModelFields(), cpu)
    named = from_dict(ModelFields, {"attn_config": {"attn_impl": "torch"}})
    assert not _use_flex(config, named, cuda)
    dropout = tiny_config(n_layers=1, attn_config={"attn_pdrop": 0.1})  # flex has none
    assert not _use_flex(dropout, ModelFields(), cuda)
