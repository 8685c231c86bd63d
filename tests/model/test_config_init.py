"""Config validation, initialisation and the low-precision LayerNorm."""

import math

import pytest
import torch
import torch.nn.functional as F

from mpt import MPTConfig, MPTConfigError, MPTForCausalLM
from mpt.model.norm import LayerNorm

from .helpers import tiny_config


@pytest.mark.parametrize("overrides,field,value", [
    (dict(n_heads=5), "n_heads", "5"),
    (dict(attn_config={"attn_impl": "triton"}), "attn_config.attn_impl", "'triton'"),
    (dict(attn_config={"attn_typo": 1}), "attn_config.attn_typo", "1"),
    (dict(norm_type="rmsnorm"), "norm_type", "'rmsnorm'"),
    (dict(d_model=0), "d_model", "0"),
    (dict(logit_scale=-1.0), "logit_scale", "-1.0"),
    (dict(attn_config={"clip_qkv": -2}), "attn_config.clip_qkv", "-2"),
    (dict(init_config={"name": "xavier"}), "init_config.name", "'xavier'"),
    (dict(attn_config={"attn_type": "multiquery_attention"}), "attn_config.attn_type", "'multiquery_attention'"),
])
def test_bad_config_names_field_value_and_allowed(overrides, field, value):
    with pytest.raises(MPTConfigError) as err:
        tiny_config(**overrides)
    msg = str(err.value)
    assert f"`{field}`" in msg and value in msg


def test_unknown_attn_impl_lists_allowed_values():
    with pytest.raises(MPTConfigError, match="allowed: torch, flash, flex"):
        tiny_config(attn_config={"attn_impl": "xformers"})


@pytest.mark.skipif(__import__("importlib").util.find_spec("flash_attn") is not None, reason="flash-attn installed")
def test_flash_without_flash_attn_is_an_error_before_any_weight():
    with pytest.raises(MPTConfigError, match="flash-attn is not installed"):
        MPTConfig(d_model=4096, n_heads=32, n_layers=32, attn_config={"attn_impl": "flash"})


def test_vocab_smaller_than_tokenizer_is_an_error():
    cfg = tiny_config(vocab_size=50000)
    with pytest.raises(MPTConfigError, match="`vocab_size` = 50000.*50277.*50304"):
        cfg.check_tokenizer(50277)
    tiny_config(vocab_size=50432).check_tokenizer(50277)


def test_kaiming_init_matches_llm_foundry_recipe():
    torch.manual_seed(0)
    cfg = MPTConfig(d_model=256, n_heads=4, n_layers=8, vocab_size=1000, max_seq_len=16)
    model = MPTForCausalLM(cfg)
    std = math.sqrt(2 / 256)  # kaiming normal, relu gain, fan_in
    block = model.transformer.blocks[0]
    assert abs(block.attn.Wqkv.weight.std().item() / std - 1) < 0.02
    assert abs(block.ffn.up_proj.weight.std().item() / std - 1) < 0.02
    # residual projections are divided by sqrt(2 * n_layers)
    assert abs(block.attn.out_proj.weight.std().item() / (std / 4) - 1) < 0.02
    assert abs(block.ffn.down_proj.weight.std().item() / (math.sqrt(2 / 1024) / 4) - 1) < 0.02
    assert torch.equal(block.norm_1.weight, torch.ones(256))


def test_emb_init_std_and_small_init_options():
    torch.manual_seed(0)
    cfg = MPTConfig(d_model=256, n_heads=4, n_layers=2, vocab_size=2000, max_seq_len=16,
                    init_config={"name": "small_init_", "emb_init_std": 0.05, "init_div_is_residual": False})
    model = MPTForCausalLM(cfg)
    assert abs(model.transformer.wte.weight.std().item() / 0.05 - 1) < 0.02
    small = math.sqrt(2 / (5 * 256))
    assert abs(model.transformer.blocks[0].attn.out_proj.weight.std().item() / small - 1) < 0.03


def test_low_precision_layernorm_runs_in_autocast_dtype():
    torch.manual_seed(0)
    x = torch.randn(4, 32)
    ln = LayerNorm(32, low_precision=True)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ln(x)
        plain = LayerNorm(32, low_precision=False).to(torch.float32)
        plain.load_state_dict(ln.state_dict())
        full = plain(x)
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, F.layer_norm(x.bfloat16(), (32,), ln.weight.bfloat16(), None, 1e-5))
    assert full.dtype == torch.float32
    assert torch.allclose(ln(x), F.layer_norm(x, (32,), ln.weight, None, 1e-5))  # fp32 without autocast


def test_bf16_autocast_forward_is_close_to_fp32():
    torch.manual_seed(0)
    model = MPTForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        ref = model(ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids).logits
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_embedding_fraction_scales_only_the_gradient():
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (1, 8))
    grads = {}
    for frac in (1.0, 0.25):
        torch.manual_seed(0)
        model = MPTForCausalLM(tiny_config(embedding_fraction=frac, tie_word_embeddings=False))
        out = model(ids, labels=ids)
        out.loss.backward()
        grads[frac] = (out.loss.item(), model.transformer.wte.weight.grad.clone())
    assert grads[1.0][0] == pytest.approx(grads[0.25][0])
    assert torch.allclose(grads[0.25][1], 0.25 * grads[1.0][1], atol=1e-7)


def test_loss_is_shifted_cross_entropy():
    torch.manual_seed(0)
    model = MPTForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 97, (2, 10))
    labels = ids.clone()
    labels[0, 5] = -100
    out = model(ids, labels=labels)
    logp = out.logits.double().log_softmax(-1)
    picked = [-logp[b, t - 1, labels[b, t]] for b in range(2) for t in range(1, 10) if labels[b, t] != -100]
    assert out.loss.item() == pytest.approx(torch.stack(picked).mean().item(), rel=1e-5)
