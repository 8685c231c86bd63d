"""MPTForCausalLM: cached decoding and generation past max_seq_len, initialisation, autocast, the loss, features
transformers lacks, and checkpoints whose tensors do not match."""

import math

import pytest
import torch
from transformers import DynamicCache

from mpt import KVCache, MPTCheckpointError, MPTForCausalLM
from mpt.infer import generate_ids
from mpt.model.hf import save_pretrained
from tests.tiny import tiny_config, tiny_model

from .helpers import MODEL_FIELDS
from .test_hf import _ids


@pytest.mark.parametrize("impl", ["torch", "flex"])
@pytest.mark.parametrize("cache_cls", ["ours", "transformers"])
def test_incremental_decoding_equals_full_forward(impl, cache_cls):
    model = tiny_model(**MODEL_FIELDS, attn_config={"attn_impl": impl})
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(0))  # 40 > max_seq_len 24
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache(model.config.n_layers, capacity=4) if cache_cls == "ours" else DynamicCache()
        chunks = [model(ids[:, :10], cache=cache, use_cache=True).logits]  # prefill 10, then 1 by 1 and a chunk
        chunks += [model(ids[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(10, 30)]
        chunks.append(model(ids[:, 30:], cache=cache, use_cache=True).logits)
    assert cache.get_seq_length() == 40
    assert (torch.cat(chunks, dim=1) - full).abs().max() <= 1e-4


def test_generation_continues_past_max_seq_len_and_matches_full_recompute():
    model = tiny_model(1, **MODEL_FIELDS)
    prompt = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(1))
    out = generate_ids(model, prompt, max_new_tokens=40)  # 48 tokens, max_seq_len 24
    assert out.shape == (1, 48)
    # Greedy decoding without any cache: each token is the argmax of a full forward.
    ids = prompt
    with torch.no_grad():
        for _ in range(40):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


def test_transformers_generate_works_on_our_model_past_max_seq_len():
    model = tiny_model(2, **MODEL_FIELDS)
    prompt = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(2))
    hf_out = model.generate(prompt, max_new_tokens=30, do_sample=False, min_new_tokens=30,
                            pad_token_id=0, attention_mask=torch.ones_like(prompt))
    assert hf_out.shape == (2, 36)
    assert torch.equal(hf_out, generate_ids(model, prompt, max_new_tokens=30))


@pytest.mark.parametrize("positions", [{}, {"learned_pos_emb": True, "attn_config": {"alibi": False}}],
                         ids=["alibi", "learned-positions"])
def test_batched_left_padded_generation_equals_one_by_one(positions):
    model = tiny_model(3, **MODEL_FIELDS, **positions)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(2, 97, (1, 9), generator=g), torch.randint(2, 97, (1, 5), generator=g)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    out = generate_ids(model, batch, max_new_tokens=10, attention_mask=mask)
    assert torch.equal(out[0, 9:], generate_ids(model, a, 10)[0, 9:])
    assert torch.equal(out[1, 9:], generate_ids(model, b, 10)[0, 5:])  # learned positions start at row's first token


def test_learned_position_embeddings_refuse_to_extrapolate():
    model = tiny_model(**MODEL_FIELDS, learned_pos_emb=True, attn_config={"alibi": False})
    assert model.transformer.wpe is not None
    with pytest.raises(ValueError, match="max_seq_len=24.*learned_pos_emb"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_transformers_generate_decodes_one_token_per_step_through_our_cache(monkeypatch):
    """Our config's use_cache is False (MosaicML's), so without our default generate would rerun the whole sequence."""
    model = tiny_model(4, **MODEL_FIELDS)
    prompt = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(4))
    seen = []
    update = KVCache.update

    def counting_update(self, k, v, layer_idx, *args, **kwargs):
        seen.append((layer_idx, k.shape[2]))
        return update(self, k, v, layer_idx, *args, **kwargs)

    monkeypatch.setattr(KVCache, "update", counting_update)
    out = model.generate(prompt, max_new_tokens=10, do_sample=False, min_new_tokens=10, pad_token_id=0,
                         attention_mask=torch.ones_like(prompt))
    assert [n for layer, n in seen if layer == 0] == [6] + [1] * 9
    monkeypatch.setattr(KVCache, "update", update)
    assert torch.equal(out, generate_ids(model, prompt, max_new_tokens=10))
    beam_args = dict(max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=0,
                     attention_mask=torch.ones_like(prompt))
    beams = model.generate(prompt, **beam_args)  # beam search reorders our cache
    assert beams.shape == (2, 10)
    assert torch.equal(beams, model.generate(prompt, use_cache=False, **beam_args))


def test_kaiming_init_matches_llm_foundry_recipe():
    torch.manual_seed(0)
    cfg = tiny_config(d_model=256, n_heads=4, n_layers=8, vocab_size=1000, max_seq_len=16)
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
    cfg = tiny_config(d_model=256, n_heads=4, n_layers=2, vocab_size=2000, max_seq_len=16,
                      init_config={"name": "small_init_", "emb_init_std": 0.05, "init_div_is_residual": False})
    model = MPTForCausalLM(cfg)
    assert abs(model.transformer.wte.weight.std().item() / 0.05 - 1) < 0.02
    small = math.sqrt(2 / (5 * 256))
    assert abs(model.transformer.blocks[0].attn.out_proj.weight.std().item() / small - 1) < 0.03


def test_bf16_autocast_forward_is_close_to_fp32():
    model = tiny_model(0, **MODEL_FIELDS)
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
        model = MPTForCausalLM(tiny_config(**MODEL_FIELDS, embedding_fraction=frac, tie_word_embeddings=False))
        out = model(ids, labels=ids)
        out.loss.backward()
        grads[frac] = (out.loss.item(), model.transformer.wte.weight.grad.clone())
    assert grads[1.0][0] == pytest.approx(grads[0.25][0])
    assert torch.allclose(grads[0.25][1], 0.25 * grads[1.0][1], atol=1e-7)


def test_loss_is_shifted_cross_entropy():
    model = tiny_model(0, **MODEL_FIELDS)
    ids = torch.randint(0, 97, (2, 10))
    labels = ids.clone()
    labels[0, 5] = -100
    out = model(ids, labels=labels)
    logp = out.logits.double().log_softmax(-1)
    picked = [-logp[b, t - 1, labels[b, t]] for b in range(2) for t in range(1, 10) if labels[b, t] != -100]
    assert out.loss.item() == pytest.approx(torch.stack(picked).mean().item(), rel=1e-5)


def test_features_transformers_lacks_change_the_output():
    """qk_ln, logit_scale and learned position embeddings are really applied by our model."""
    base = tiny_model(4, **MODEL_FIELDS)
    ids = _ids(base.config)
    for overrides in (dict(attn_config={"qk_ln": True}), dict(logit_scale=0.5)):
        other = tiny_model(4, **MODEL_FIELDS, **overrides)
        other.load_state_dict(base.state_dict(), strict=False)
        with torch.no_grad():
            assert (other(ids).logits - base(ids).logits).abs().max() > 1e-3
    scaled = tiny_model(None, **MODEL_FIELDS, logit_scale="inv_sqrt_d_model")
    scaled.load_state_dict(base.state_dict())
    with torch.no_grad():
        assert torch.allclose(scaled(ids).logits, base(ids).logits / 48**0.5, atol=1e-6)


def test_checkpoint_with_wrong_tensors_is_an_error_listing_them(tmp_path):
    from safetensors.torch import load_file, save_file

    ours = MPTForCausalLM(tiny_config(**MODEL_FIELDS))
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
