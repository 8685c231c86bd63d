"""The model tests' tiny MPT fields, a float64 reference implementation of MPT attention, and a count of the
compiled packed matmuls' weight lookups."""

import math
import weakref
from functools import partial

import torch

from tests.tiny import tiny_config

# Where the model tests' tiny MPT differs from tests.tiny.FIELDS: six heads, not a power of two.
MODEL_FIELDS = dict(d_model=48, n_heads=6, max_seq_len=24, vocab_size=97)
# tests/train builds the same model
model_config = partial(tiny_config, **MODEL_FIELDS)


def reference_slopes(n_heads: int, bias_max: float = 8.0) -> torch.Tensor:
    """The ALiBi paper's recipe, written independently in float64: slopes for the largest power
    of two below n_heads, then every other slope of twice that many."""
    def pow2(n):
        return [2.0 ** (-bias_max * (k + 1) / n) for k in range(n)]
    if math.log2(n_heads).is_integer():
        return torch.tensor(pow2(n_heads), dtype=torch.float64)
    m = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(pow2(m) + pow2(2 * m)[0::2][: n_heads - m], dtype=torch.float64)


def reference_attention(q, k, v, slopes, scale, key_mask=None):
    """softmax(q k^T * scale + slope*(j - i), causal, padding) v in float64; q is the last q_len keys."""
    q, k, v = (t.double() for t in (q, k, v))
    T, S = q.shape[2], k.shape[2]
    i = torch.arange(S - T, S, dtype=torch.float64)[:, None]
    j = torch.arange(S, dtype=torch.float64)[None, :]
    scores = q @ k.transpose(-1, -2) * scale
    if slopes is not None:
        scores = scores + slopes.double()[None, :, None, None] * (j - i)
    scores = scores.masked_fill(j > i, float("-inf"))
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def count_packed_lookups(monkeypatch) -> weakref.WeakValueDictionary:
    """Count the weight lookups of mpt.model.packed_ops' ops from now on (its ``lookups``): only compiled code calls
    the ops (eager layers hold their packed weights), so a compiled step over packed weights makes one per layer."""
    from mpt.model import packed_ops

    class Counted(weakref.WeakValueDictionary):
        lookups = 0

        def __getitem__(self, key):
            Counted.lookups += 1
            return super().__getitem__(key)

    counted = Counted(packed_ops._WEIGHTS)
    monkeypatch.setattr(packed_ops, "_WEIGHTS", counted)
    return counted
