"""Compiled decode (static cache + torch.compile) and chunked prefill give the eager tokens.

The compiled test is slow on purpose: inductor compiles the tiny model's decode step once on CPU
(about 15-35 s on 2 cores, most of this file's time; seconds once inductor's on-disk cache holds it).
It compiles one graph only: rows padded to 4, the capacity and the attended columns dynamic on CPU.
"""

import logging

import pytest
import torch

from mpt import KVCache
from mpt.infer import generate_ids
from mpt.infer.batching import BatchEngine, Row, run
from mpt.infer.sampling import SamplingParams
from mpt.model.decode import StaticDecoder, bucket, decode_step, row_bucket
from tests.tiny import tiny_model

from .helpers import MODEL_FIELDS


def _padded_prompts(seed=1, rows=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (rows, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 is a 4-token prompt, left-padded
    return ids, mask


def test_compiled_greedy_decode_equals_eager_past_max_seq_len(caplog):
    """... with one graph for the whole generation: the cache grows past its first capacity and the attended
    columns grow every step, and neither compiles again (a compile stalls a server's streams for seconds)."""
    from torch._dynamo.utils import counters

    model = tiny_model(**MODEL_FIELDS)
    ids, mask = _padded_prompts(rows=4)
    mask[3, :5] = 0
    n = 70  # 7 + 70 positions: past max_seq_len = 24 (ALiBi goes on) and past the first capacity bucket (64)
    free = generate_ids(model, ids, n, attention_mask=mask, compile=False)[:, 7:]
    # An end-of-sequence token that ends row 0 early but not row 2: the batch shrinks mid-decode (4 rows,
    # then fewer; the compiled step pads them back to 4, so this still compiles once).
    eos = next(int(t) for t in free[0, 1:] if int(t) not in free[2].tolist())
    eager = generate_ids(model, ids, n, attention_mask=mask, eos_token_id=eos, compile=False)
    torch._dynamo.reset()  # this test's graphs alone: none cached (the counters go on across the process)
    graphs = counters["stats"]["unique_graphs"]
    with caplog.at_level(logging.WARNING, logger="mpt.model"):
        compiled = generate_ids(model, ids, n, attention_mask=mask, eos_token_id=eos, compile=True)
        # The server's engine reserves 16 positions, not n: its cache grows mid-generation.
        rows = [Row(i, ids[i][mask[i].bool()].tolist(), SamplingParams(n)) for i in range(4)]
        list(run(BatchEngine(model, None, [eos], compile=True), rows))
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert [r.out_ids for r in rows] == [row[:row.index(eos) + 1] if eos in row else row for row in eager[:, 7:].tolist()]
    # The engine falls back to eager decode if compiling fails; that must not be what passed here.
    assert not [r for r in caplog.records if "compiled decode failed" in r.getMessage()]
    assert eager.shape == (4, 7 + n) and (eager[0, 7:] == eos).any() and not (eager[2, 7:] == eos).any()
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("positions", [{}, {"learned_pos_emb": True, "attn_config": {"alibi": False}}],
                         ids=["alibi", "learned-positions"])
def test_static_step_logits_equal_the_eager_step(positions):
    """The uncompiled static step against the model's own forward, step by step, with padding and growth."""
    model = tiny_model(3, **MODEL_FIELDS, **positions)
    ids, mask = _padded_prompts(seed=4)
    with torch.inference_mode():
        eager_cache, static_cache = KVCache(2), KVCache(2)
        out = model(ids, attention_mask=mask, cache=eager_cache, use_cache=True)
        model(ids, attention_mask=mask, cache=static_cache, use_cache=True)
        decoder = StaticDecoder(model, compile=False)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        steps = 16 if positions else 60  # ALiBi: past max_seq_len and past the first capacity bucket (64)
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
            want = model(tok, attention_mask=mask, cache=eager_cache, use_cache=True).logits[:, -1]
            got = decoder(tok, static_cache, mask)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert static_cache.get_seq_length() == eager_cache.get_seq_length()
            tok = want.argmax(-1, keepdim=True)
    assert static_cache.keys[0].shape[2] == bucket(static_cache.keys[0].shape[2])


def test_capacity_buckets_are_few_and_tight():
    assert bucket(1) == bucket(64) == 64
    assert [row_bucket(n) for n in (1, 2, 3, 4, 5, 16)] == [1, 2, 4, 4, 8, 16]
    assert bucket(65) == 72 and bucket(1800 + 128) == 2048 and bucket(76_000) == 81_920
    for n in range(1, 5000):
        b = bucket(n)
        assert n <= b <= max(64, n * 1.125 + 1) and bucket(b) == b


def test_the_step_writes_only_its_column():
    model = tiny_model(5, **MODEL_FIELDS)
    cache = KVCache(2)
    with torch.inference_mode():
        model(torch.tensor([[5, 6, 7]]), cache=cache, use_cache=True)
        StaticDecoder(model, compile=False).prepare(cache, 3, 1)
        before = [k.clone() for k in cache.keys]
        key_mask = torch.zeros(1, cache.keys[0].shape[2], dtype=torch.bool)
        key_mask[:, :4] = True
        decode_step(model, torch.tensor([[8]]), torch.tensor([3]), key_mask, cache.keys, cache.values)
    for b, k in zip(before, cache.keys, strict=True):
        assert torch.equal(b[:, :, :3], k[:, :, :3]) and torch.equal(b[:, :, 4:], k[:, :, 4:])
        assert not torch.equal(b[:, :, 3], k[:, :, 3])
