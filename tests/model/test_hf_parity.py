"""Our model against transformers' own MptForCausalLM, on the same files, in both directions."""

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, MptConfig, MptForCausalLM

from mpt import MPTCheckpointError, MPTConfig, MPTForCausalLM
from mpt.model.hf import save_pretrained

from .helpers import tiny_config

PARITY_CONFIGS = {
    "odd-heads": dict(n_heads=6),
    "twelve-heads": dict(d_model=96, n_heads=12),
    "clip-qkv": dict(attn_config={"clip_qkv": 0.5}),
    "softmax-scale": dict(attn_config={"softmax_scale": 0.5}),
    "untied": dict(tie_word_embeddings=False),
    "layernorm-fp32": dict(norm_type="layernorm"),
    # a packing-trained model: the flag only matters when sequence_id is passed, so no warning
    "sequence-id": dict(attn_config={"attn_uses_sequence_id": True}),
}


def _ids(cfg, B=2, T=20, seed=0):
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_ours_loads_in_plain_transformers_with_same_logits(tmp_path, name):
    torch.manual_seed(0)
    cfg = tiny_config(**PARITY_CONFIGS[name])
    ours = MPTForCausalLM(cfg).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing in these configs should warn
        save_pretrained(ours, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "mpt" and "auto_map" not in saved
    assert saved["architectures"] == ["MptForCausalLM"]  # the class tools like `transformers serve` look up
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(theirs) is MptForCausalLM
    ids = _ids(cfg)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in the second row
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max() <= 1e-4
        diff = (ours(ids, attention_mask=mask).logits - theirs(ids, attention_mask=mask).logits).abs()
        assert diff[mask.bool()].max() <= 1e-4


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("n_heads", [4, 6])
def test_we_load_transformers_checkpoints_with_same_logits(tmp_path, tied, n_heads):
    torch.manual_seed(1)
    hf_cfg = MptConfig(d_model=48, n_heads=n_heads, n_layers=2, max_seq_len=32, vocab_size=97,
                       tie_word_embeddings=tied, attn_config={"clip_qkv": 2.0})
    theirs = MptForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # transformers initialises norms to ones; make them matter
        for name, p in theirs.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    theirs.save_pretrained(tmp_path)
    ours = MPTForCausalLM.from_pretrained(tmp_path).eval()
    assert ours.config.tie_word_embeddings == tied
    assert (ours.lm_head is None) == tied
    ids = _ids(ours.config)
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max() <= 1e-4


def test_round_trip_ours_transformers_ours(tmp_path):
    torch.manual_seed(2)
    cfg = tiny_config(tie_word_embeddings=False)
    ours = MPTForCausalLM(cfg).eval()
    save_pretrained(ours, tmp_path / "a")
    AutoModelForCausalLM.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    back = MPTForCausalLM.from_pretrained(tmp_path / "b").eval()
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize("overrides,field", [
    (dict(attn_config={"qk_ln": True}), "attn_config.qk_ln"),
    (dict(logit_scale=0.5), "logit_scale"),
    (dict(learned_pos_emb=True, attn_config={"alibi": False}), "learned_pos_emb"),
    (dict(attn_config={"alibi_bias_max": 16}), "attn_config.alibi_bias_max"),
    (dict(expansion_ratio=2), "expansion_ratio"),
])
def test_export_warns_for_fields_transformers_ignores(tmp_path, overrides, field):
    torch.manual_seed(3)
    ours = MPTForCausalLM(tiny_config(**overrides)).eval()
    with pytest.warns(UserWarning, match=f"`{field}`"):
        save_pretrained(ours, tmp_path)
    # The export is still written, and transformers really does compute something else.
    back = MPTForCausalLM.from_pretrained(tmp_path).eval()
    ids = _ids(ours.config)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ours(ids).logits)
    if field == "expansion_ratio":  # transformers cannot even build the FFN with the saved shapes
        with pytest.raises(Exception, match="(?i)size|shape"):
            AutoModelForCausalLM.from_pretrained(tmp_path)
        return
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids).logits).abs().max() > 1e-3


def test_features_transformers_lacks_change_the_output():
    """qk_ln, logit_scale and learned position embeddings are really applied by our model."""
    torch.manual_seed(4)
    base = MPTForCausalLM(tiny_config()).eval()
    ids = _ids(base.config)
    for overrides in (dict(attn_config={"qk_ln": True}), dict(logit_scale=0.5)):
        torch.manual_seed(4)
        other = MPTForCausalLM(tiny_config(**overrides)).eval()
        other.load_state_dict(base.state_dict(), strict=False)
        with torch.no_grad():
            assert (other(ids).logits - base(ids).logits).abs().max() > 1e-3
    scaled = MPTForCausalLM(tiny_config(logit_scale="inv_sqrt_d_model")).eval()
    scaled.load_state_dict(base.state_dict())
    with torch.no_grad():
        assert torch.allclose(scaled(ids).logits, base(ids).logits / 48**0.5, atol=1e-6)


def test_checkpoint_with_wrong_tensors_is_an_error_listing_them(tmp_path):
    from safetensors.torch import load_file, save_file

    ours = MPTForCausalLM(tiny_config())
    save_pretrained(ours, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    del tensors["transformer.blocks.1.ffn.up_proj.weight"]
    tensors["transformer.blocks.0.attn.Wqkv.weight"] = torch.zeros(10, 48)
    tensors["transformer.extra.weight"] = torch.zeros(3)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(MPTCheckpointError) as err:
        MPTForCausalLM.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "transformer.blocks.1.ffn.up_proj.weight" in msg
    assert "transformer.extra.weight" in msg
    assert "transformer.blocks.0.attn.Wqkv.weight" in msg


def test_config_round_trips_through_json(tmp_path):
    cfg = tiny_config(attn_config={"clip_qkv": 1.5, "alibi_bias_max": 4}, init_config={"init_std": 0.01})
    cfg.save_pretrained(tmp_path)
    back = MPTConfig.from_pretrained(tmp_path)
    assert back.attn_config == cfg.attn_config and back.init_config == cfg.init_config
    assert back.to_dict()["attn_config"]["attn_pdrop"] == 0  # int, as transformers' strict config wants
