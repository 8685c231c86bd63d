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
