"""QLoRA through the recipe (`model.lora.quantize_base`): the block linear layers are bitsandbytes NF4,
checkpoints hold only the adapters, a resumed run is bit-identical to an uninterrupted one, and the
exports reproduce the trained model. bitsandbytes (>= 0.48) runs NF4 on the CPU, so this runs for real."""

import contextlib
import json
import sys

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM

from mpt.config import ConfigError, from_dict
from mpt.model.hf import load_pretrained
from mpt.train import Recipe, train
from mpt.train.checkpoint import CheckpointError, complete_checkpoints
from mpt.train.export import export_hf
from mpt.train.loop import validation_loss
from mpt.train.lora import LoraError
from mpt.train.parallel import Dist
from mpt.train.qlora import quantize_base

from .helpers import (
    SEQ,
    VOCAB,
    assert_resume_gives_the_same_adapters,
    make_shards,
    recipe_dict,
    save_tiny_base,
)

peft = pytest.importorskip("peft", reason="LoRA needs `pip install peft`")
bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs `pip install 'mpt[qlora]'` (bitsandbytes)")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base") / "hf")


def _recipe(tmp, data, base, steps: int, **sections) -> dict:
    model = {"preset": None, "init_from": str(base), "fields": {}, "lora": {"r": 4, "alpha": 8, "quantize_base": True}}
    recipe = recipe_dict(tmp, data, model={**model, **sections.pop("model", {})}, train={"max_duration": f"{steps}ba"},
                         scheduler={"name": "constant", "warmup_batches": 2}, eval={"every_batches": 8, "batches": 2},
                         **sections)
    recipe["data"]["eval_sources"] = [{"path": str(data)}]  # the validation loss the exports must reproduce
    return recipe


def _run(tmp, data, base, steps: int, messages=None, **sections):
    return train(from_dict(Recipe, _recipe(tmp, data, base, steps, **sections)),
                 log=(messages.append if messages is not None else lambda *_: None))


def _qlora_model(base, adapter):
    """Our model from the base, quantized as training does, with the exported adapter loaded by peft."""
    model = load_pretrained(base, dtype=torch.float32)
    quantize_base(model, torch.float32, torch.device("cpu"))
    return peft.PeftModel.from_pretrained(model, str(adapter)).eval()


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft asks transformers
def test_qlora_trains_adapters_on_a_4bit_base_resumes_bit_identical_and_exports(tmp_path, base):
    data = make_shards(tmp_path / "data")
    messages = []
    _run(tmp_path / "straight", data, base, 8, messages)
    qlora_line = next(m for m in messages if m.startswith("QLoRA:"))
    assert "8 block linear layers frozen in 4-bit NF4" in qlora_line, qlora_line
    assert any("LoRA r=4" in m and "trainable parameters" in m for m in messages), messages

    # the checkpoint holds the adapters and their optimizer state, nothing of the base
    last = complete_checkpoints(tmp_path / "straight" / "ckpt")[-1]
    keys = FileSystemReader(str(last)).read_metadata().state_dict_metadata
    model_keys = [k for k in keys if k.startswith("model.")]
    assert len(model_keys) == 2 * 4 * 2 and all(".lora_A." in k or ".lora_B." in k for k in model_keys), model_keys
    assert [k for k in keys if k.startswith("optim.state.")]
    manifest = json.loads((last / "trainer_state.json").read_text())
    assert manifest["trainable_only"] and manifest["init_from"] == str(base.resolve())
    assert manifest["base_quantized_on"] == "cpu"

    # resume: 4 steps, then the same command to 8 -> the same adapters, bit for bit (the base is
    # re-quantized from init_from identically)
    assert_resume_gives_the_same_adapters(tmp_path, lambda folder, steps, msgs: _run(folder, data, base, steps, msgs))

    # the adapter through peft on our 4-bit base is the model that trained: its validation loss is
    # the one the loop measured on the live model at step 8
    qlora = _qlora_model(base, tmp_path / "a-straight")
    recipe = from_dict(Recipe, _recipe(tmp_path / "straight", data, base, 8))
    live = [json.loads(line) for line in (tmp_path / "straight" / "log" / "metrics.jsonl").read_text().splitlines()]
    live_val = next(m["val_loss"] for m in live if "val_loss" in m and m["step"] == 8)
    assert validation_loss(qlora, recipe, Dist(), contextlib.nullcontext()) == pytest.approx(live_val, abs=1e-6)

    # merged: a plain fp32 transformers MPT whose block weights are the dequantized NF4 ones plus
    # the adapters. Both compute in fp32 from the same dequantized values and differ only in the
    # order of additions (x W^T + s (x A^T) B^T against x (W + s B A)^T): ~5e-6 here, 1e-4 allows
    # for other BLAS builds, while the same adapter on the unquantized base is off by more than 1
    export_hf(tmp_path / "straight" / "ckpt", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(merged).__name__ == "MptForCausalLM"
    full_precision = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                                    str(tmp_path / "a-straight")).eval()
    ids = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        a, b, c = merged(ids).logits, qlora(input_ids=ids).logits, full_precision(ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert (a - c).abs().max() > 0.1  # the merge used the 4-bit base, not the original weights

    # resuming against another base would pair the adapters with weights they never saw
    other = save_tiny_base(tmp_path / "other-base", seed=4)
    with pytest.raises(CheckpointError, match="trained on the 4-bit base"):
        _run(tmp_path / "straight", data, base, 9, model={"init_from": str(other)})


def test_qlora_layers_are_bitsandbytes_4bit_under_peft(base):
    from mpt.train.lora import apply_lora
    from mpt.train.recipe import LoraSection

    model = load_pretrained(base, dtype=torch.float32)
    with pytest.raises(LoraError, match="quantize the base first"):
        apply_lora(model, LoraSection(quantize_base=True))
    report = quantize_base(model, torch.float32, torch.device("cpu"))
    wrapped = apply_lora(model, LoraSection(r=4, alpha=8, quantize_base=True), log=lambda *_: None)
    layer = wrapped.base_model.model.transformer.blocks[0].attn.Wqkv
    assert type(layer).__module__ == "peft.tuners.lora.bnb" and isinstance(layer.base_layer, bnb.nn.Linear4bit)
    assert layer.base_layer.weight.dtype == torch.uint8 and not layer.base_layer.weight.requires_grad
    # 4 bits per weight, one 8-bit scale per 64 weights, and per layer its two code tables (16 and 256
    # fp32 values) and fp32 scales of the scales
    n = report.bytes_fp32 // 4
    assert n / 2 + n / 64 + report.layers * (64 + 1024) < report.bytes_4bit < n / 2 + n / 64 + report.layers * 1200
    assert {n for n, p in wrapped.named_parameters() if p.requires_grad} == {
        n for n, _ in wrapped.named_parameters() if ".lora_" in n}


def test_qlora_settings_that_cannot_work_fail_before_any_step(tmp_path, base, monkeypatch):
    data = make_shards(tmp_path / "data", samples=8)
    with pytest.raises(ConfigError, match=r"parallel.strategy.*quantize_base.*use parallel.strategy=ddp"):
        from_dict(Recipe, _recipe(tmp_path, data, base, 2, parallel={"strategy": "fsdp"}))
    with pytest.raises(ConfigError, match=r"lora.quantize_base.*set model.init_from"):
        from_dict(Recipe, _recipe(tmp_path, data, base, 2, model={"init_from": None, "preset": "mpt-tiny"}))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(LoraError, match=r"needs bitsandbytes: pip install 'mpt\[qlora\]'"):
        _run(tmp_path, data, base, 2)
    assert not (tmp_path / "ckpt").exists()
