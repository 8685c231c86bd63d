"""LoRA through peft: adapters train alone, export merged or as a PEFT adapter that transformers' MPT loads."""

import pytest
import torch
from transformers import AutoModelForCausalLM, MptForCausalLM

from mpt import MPTForCausalLM as OurMPT
from mpt.config import ConfigError
from mpt.model.hf import save_pretrained
from mpt.train.lora import LoraError, LoraSection, apply_lora, export_adapter, export_merged, load_adapter
from tests.model.helpers import model_config as tiny_config

PeftModel = pytest.importorskip("peft", reason="LoRA needs `pip install peft`").PeftModel


def _base(**overrides) -> OurMPT:
    torch.manual_seed(0)
    return OurMPT(tiny_config(**overrides))


def _randomise_adapters(model) -> None:
    # peft starts lora_B at zero (the adapter is a no-op); give it weights as training would
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_only_adapters_train_and_their_count_is_logged():
    model = _base(attn_config={"attn_uses_sequence_id": True})
    messages = []
    lora = apply_lora(model, LoraSection(r=4), log=messages.append)
    trainable = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    d, ffn, layers = 48, 4 * 48, 2  # r * (in + out) for Wqkv, out_proj, up_proj, down_proj
    expected = layers * 4 * ((d + 3 * d) + (d + d) + (d + ffn) + (ffn + d))
    assert sum(p.numel() for p in trainable.values()) == expected
    assert f"{expected:,} trainable parameters" in messages[0]

    frozen = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    seq = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])  # packed rows reach the model through peft
    lora.train()
    before = lora(input_ids=ids, labels=ids, sequence_id=seq).loss
    before.backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in lora.named_parameters() if not p.requires_grad)
    assert lora(input_ids=ids, labels=ids, sequence_id=seq).loss.item() != before.item()


def test_unknown_target_module_is_an_error_listing_the_linear_layers():
    with pytest.raises(LoraError, match=r"\['q_proj'\] are not linear layers.*\['Wqkv', 'down_proj', 'out_proj', "
                                        r"'up_proj'\]"):
        apply_lora(_base(), LoraSection(target_modules=["Wqkv", "q_proj"]), log=lambda *_: None)
    with pytest.raises(ConfigError, match="model.lora.r` = 0"):
        apply_lora(_base(), LoraSection(r=0), log=lambda *_: None)


def test_adapter_loads_in_peft_on_transformers_mpt_and_matches_our_merged_export(tmp_path):
    base = _base()
    save_pretrained(base, tmp_path / "base")
    lora = apply_lora(base, LoraSection(r=4, alpha=8), log=lambda *_: None)
    _randomise_adapters(lora)
    export_adapter(lora, tmp_path / "adapter")
    export_merged(lora, tmp_path / "merged")

    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    theirs = PeftModel.from_pretrained(MptForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    merged_theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(merged_theirs) is MptForCausalLM  # the merged export is a plain transformers MPT
    ours_merged = OurMPT.from_pretrained(tmp_path / "merged").eval()
    lora.eval()
    with torch.no_grad():
        reference = theirs(input_ids=ids).logits
        plain = OurMPT.from_pretrained(tmp_path / "base").eval()(ids).logits
        assert (reference - plain).abs().max() > 1e-3  # the adapter changes the output
        for other in (ours_merged(ids).logits, merged_theirs(ids).logits, lora(input_ids=ids).logits):
            assert (other - reference).abs().max() < 1e-4
        # and our loader of the adapter gives the same
        again = load_adapter(OurMPT.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
        assert (again(input_ids=ids).logits - reference).abs().max() < 1e-4
    assert any("lora_" in n for n, _ in lora.named_parameters())  # merging a copy left the adapters on


def test_adapter_for_another_base_is_an_error_naming_the_tensor(tmp_path):
    lora = apply_lora(_base(), LoraSection(r=4), log=lambda *_: None)
    export_adapter(lora, tmp_path / "adapter")
    other = _base(d_model=96, n_heads=6)
    with pytest.raises(LoraError, match=r"transformer\.blocks\.0\.attn\.Wqkv\.lora_A\.weight: shape \(4, 48\), "
                                        r"the model needs \(4, 96\)"):
        load_adapter(other, tmp_path / "adapter")
    with pytest.raises(LoraError, match="no linear layer transformer.blocks.1"):
        load_adapter(_base(n_layers=1), tmp_path / "adapter")
