"""KV cache equivalence and generation past max_seq_len."""

import pytest
import torch
from transformers import DynamicCache

from mpt import KVCache, MPTForCausalLM
from mpt.infer import generate_ids

from .helpers import tiny_config


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return MPTForCausalLM(tiny_config(**overrides)).eval()


@pytest.mark.parametrize("impl", ["torch", "flex"])
@pytest.mark.parametrize("cache_cls", ["ours", "transformers"])
def test_incremental_decoding_equals_full_forward(impl, cache_cls):
    model = _model(attn_config={"attn_impl": impl})
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(0))  # 40 > max_seq_len 24
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache(model.config.n_layers, capacity=4) if cache_cls == "ours" else DynamicCache()
        chunks = [model(ids[:, :10], cache=cache, use_cache=True).logits]  # prefill 10, then 1 by 1 and a chunk
        chunks += [model(ids[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(10, 30)]
        chunks.append(model(ids[:, 30:], cache=cache, use_cache=True).logits)
    assert cache.get_seq_length() == 40
    assert (torch.cat(chunks, dim=1) - full).abs().max() <= 1e-4


def test_cache_grows_without_losing_contents():
    cache = KVCache(1, capacity=2)
    ks = [torch.randn(1, 2, n, 4) for n in (1, 2, 5, 1)]
    for k in ks:
        out_k, out_v = cache.update(k, -k, 0)
    assert torch.equal(out_k, torch.cat(ks, dim=2)) and torch.equal(out_v, -torch.cat(ks, dim=2))
    cache.crop(3)
    k, _ = cache.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), 0)
    assert torch.equal(k[:, :, :3], torch.cat(ks, dim=2)[:, :, :3]) and k.shape[2] == 4


def test_generation_continues_past_max_seq_len_and_matches_full_recompute():
    model = _model(seed=1)
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
    model = _model(seed=2)
    prompt = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(2))
    hf_out = model.generate(prompt, max_new_tokens=30, do_sample=False, min_new_tokens=30,
                            pad_token_id=0, attention_mask=torch.ones_like(prompt))
    assert hf_out.shape == (2, 36)
    assert torch.equal(hf_out, generate_ids(model, prompt, max_new_tokens=30))


@pytest.mark.parametrize("positions", [{}, {"learned_pos_emb": True, "attn_config": {"alibi": False}}],
                         ids=["alibi", "learned-positions"])
def test_batched_left_padded_generation_equals_one_by_one(positions):
    model = _model(seed=3, **positions)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(2, 97, (1, 9), generator=g), torch.randint(2, 97, (1, 5), generator=g)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    out = generate_ids(model, batch, max_new_tokens=10, attention_mask=mask)
    assert torch.equal(out[0, 9:], generate_ids(model, a, 10)[0, 9:])
    assert torch.equal(out[1, 9:], generate_ids(model, b, 10)[0, 5:])  # learned positions start at row's first token


def test_sampling_is_reproducible_with_a_seed_and_respects_eos():
    model = _model(seed=4)
    prompt = torch.randint(0, 97, (3, 4), generator=torch.Generator().manual_seed(4))
    kw = dict(max_new_tokens=20, temperature=1.0, top_k=20, top_p=0.9)
    one = generate_ids(model, prompt, generator=torch.Generator().manual_seed(7), **kw)
    two = generate_ids(model, prompt, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(one, two)
    eos = int(one[0, 6])
    stopped = generate_ids(model, prompt, eos_token_id=eos, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(stopped[0, :7], one[0, :7])
    assert (stopped[0, 7:] == eos).all()  # finished rows are padded with eos


def test_learned_position_embeddings_refuse_to_extrapolate():
    model = _model(learned_pos_emb=True, attn_config={"alibi": False})
    assert model.transformer.wpe is not None
    with pytest.raises(ValueError, match="max_seq_len=24.*learned_pos_emb"):
        model(torch.zeros(1, 25, dtype=torch.long))



def test_transformers_generate_decodes_one_token_per_step_through_our_cache(monkeypatch):
    """Our config's use_cache is False (MosaicML's), so without our default generate would rerun the whole sequence."""
    model = _model(seed=4)
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
