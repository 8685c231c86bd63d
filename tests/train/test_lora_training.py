"""LoRA through the recipe (`model.lora`): only adapters train and hold optimizer state, a resumed run
is bit-identical to an uninterrupted one, and both exports (merged; adapter in PEFT's format) load in
transformers' own MPT with the same logits."""

import json

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM

from mpt.config import from_dict
from mpt.train import Recipe, train
from mpt.train.checkpoint import complete_checkpoints
from mpt.train.export import export_hf

from .helpers import (
    SEQ,
    VOCAB,
    assert_resume_gives_the_same_adapters,
    make_shards,
    recipe_dict,
    save_tiny_base,
)

peft = pytest.importorskip("peft", reason="LoRA needs `pip install peft`")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base") / "hf")


def _run(tmp, data, base, steps: int, messages=None, **sections):
    recipe = recipe_dict(tmp, data, model={"preset": None, "init_from": str(base), "fields": {},
                                           "lora": {"r": 4, "alpha": 8}},
                         train={"max_duration": f"{steps}ba"},
                         # constant after warmup: a 4-step segment follows the 8-step run's learning rates
                         scheduler={"name": "constant", "warmup_batches": 2}, **sections)
    return train(from_dict(Recipe, recipe), log=(messages.append if messages is not None else lambda *_: None))


def test_lora_run_trains_only_adapters_resumes_bit_identical_and_exports_both_ways(tmp_path, base):
    data = make_shards(tmp_path / "data")
    messages = []
    _run(tmp_path / "straight", data, base, 8, messages)
    assert any("LoRA r=4 alpha=8.0 on Wqkv, out_proj, up_proj, down_proj" in m and "trainable parameters" in m
               for m in messages), messages

    last = complete_checkpoints(tmp_path / "straight" / "ckpt")[-1]
    keys = FileSystemReader(str(last)).read_metadata().state_dict_metadata
    optim_state = [k for k in keys if k.startswith("optim.state.")]
    assert optim_state and all(".lora_A." in k or ".lora_B." in k for k in optim_state), optim_state[:5]
    base_keys = [k for k in keys if k.startswith("model.") and "lora_" not in k]
    assert base_keys  # the frozen base is in the checkpoint too: a checkpoint is self-contained

    # resume: 4 steps, then the same command to 8 -> the same adapters, bit for bit
    assert_resume_gives_the_same_adapters(tmp_path, lambda folder, steps, msgs: _run(folder, data, base, steps, msgs))

    # the base weights did not move: the merged export minus the adapters' product is the base
    export_hf(tmp_path / "straight" / "ckpt", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base).eval(),
                                            str(tmp_path / "a-straight")).eval()
    ids = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        a, b, c = merged(ids).logits, theirs(ids).logits, plain(ids).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert not torch.allclose(a, c, atol=1e-3)  # and the adapters do change the model
    assert json.loads((tmp_path / "a-straight" / "adapter_config.json").read_text())["r"] == 4


def test_adapter_export_of_a_run_without_lora_is_a_clear_error(tmp_path):
    from mpt.train.checkpoint import CheckpointError

    data = make_shards(tmp_path / "data")
    train(from_dict(Recipe, recipe_dict(tmp_path, data, train={"max_duration": "2ba"})), log=lambda *_: None)
    with pytest.raises(CheckpointError, match="holds no LoRA adapter"):
        export_hf(tmp_path / "ckpt", tmp_path / "out", adapter_only=True)
