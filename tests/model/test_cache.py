"""KVCache: growing its buffers keeps what they hold."""

import torch

from mpt import KVCache


def test_cache_grows_without_losing_contents():
    cache = KVCache(1, capacity=2)
    ks = [torch.randn(1, 2, n, 4) for n in (1, 2, 5, 1)]
    for k in ks:
        out_k, out_v = cache.update(k, -k, 0)
    assert torch.equal(out_k, torch.cat(ks, dim=2)) and torch.equal(out_v, -torch.cat(ks, dim=2))
    cache.crop(3)
    k, _ = cache.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), 0)
    assert torch.equal(k[:, :, :3], torch.cat(ks, dim=2)[:, :, :3]) and k.shape[2] == 4


def test_a_cache_of_its_own_dtype_converts_what_it_stores_and_the_model_attends_in_it():
    """A bfloat16 model over a float32 cache: keys are stored (and attended) in float32, the logits stay bfloat16
    and match the float32-cache model run all at once."""
    from mpt.model.cache import attention_dtype
    from tests.tiny import tiny_model

    cache = KVCache(1, dtype=torch.float32)
    k = torch.randn(1, 2, 3, 4).bfloat16()
    out_k, _ = cache.update(k, k, 0)
    assert out_k.dtype == torch.float32 and torch.equal(out_k, k.float())
    from mpt.model.load import cpu_has_bf16

    assert attention_dtype(torch.float16, "cpu") == torch.float32
    assert attention_dtype(torch.bfloat16, "cpu") == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert attention_dtype(torch.float32, "cpu") == torch.float32 and attention_dtype(torch.bfloat16, "meta") == torch.bfloat16

    model = tiny_model(3).to(torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        whole = model(ids, cache=KVCache(model.config.n_layers, dtype=torch.float32), use_cache=True).logits
        stepped = KVCache(model.config.n_layers, dtype=torch.float32)
        model(ids[:, :5], cache=stepped, use_cache=True)
        last = model(ids[:, 5:], cache=stepped, use_cache=True).logits
    assert whole.dtype == last.dtype == torch.bfloat16 and stepped.keys[0].dtype == torch.float32
    assert torch.allclose(last.float(), whole[:, 5:].float(), atol=3e-2, rtol=3e-2)
