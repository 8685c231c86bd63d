"""A decode step and a joining prompt's chunk in one forward give what two separate forwards give."""

import pytest
import torch

from mpt import KVCache
from mpt.model.ragged import Group, forward_groups
from tests.tiny import tiny_model

from .helpers import MODEL_FIELDS


def _prefilled(model, ids, mask):
    cache = KVCache(model.config.n_layers)
    model(ids, attention_mask=mask, cache=cache, use_cache=True)
    return cache


@pytest.mark.parametrize("fields", [{}, {"attn_config": {"alibi": False}, "learned_pos_emb": False}, {"attn_config": {"qk_ln": True,
                                                                                            "clip_qkv": 3.0}}])
def test_fused_groups_equal_separate_forwards(fields):
    model = tiny_model(**{**MODEL_FIELDS, **fields}).double().eval()
    g = torch.Generator().manual_seed(0)
    # Running rows: two sequences (one left-padded) with 6 cached positions, decoding one token each.
    run_ids = torch.randint(1, 97, (2, 6), generator=g)
    run_mask = torch.ones_like(run_ids)
    run_mask[1, :2] = 0
    step_ids = torch.randint(1, 97, (2, 1), generator=g)
    step_mask = torch.cat([run_mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    # Joining rows: a 9-token and a 5-token prompt; the first chunk of 4 is already in, the next 3 run now.
    join_ids = torch.randint(1, 97, (2, 9), generator=g)
    join_mask = torch.ones_like(join_ids)
    join_mask[1, :4] = 0

    sep_run, sep_join = _prefilled(model, run_ids, run_mask), _prefilled(model, join_ids[:, :4], join_mask[:, :4])
    with torch.inference_mode():
        want_run = model(step_ids, attention_mask=step_mask, cache=sep_run, use_cache=True).logits[:, -1]
        want_join = model(join_ids[:, 4:7], attention_mask=join_mask[:, :7], cache=sep_join, use_cache=True).logits[:, -1]

    run, join = _prefilled(model, run_ids, run_mask), _prefilled(model, join_ids[:, :4], join_mask[:, :4])
    got_run, got_join = forward_groups(model, [Group(step_ids, run, step_mask), Group(join_ids[:, 4:7], join, join_mask[:, :7])])
    torch.testing.assert_close(got_run, want_run, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_join, want_join, rtol=1e-12, atol=1e-12)
    for a, b in ((run, sep_run), (join, sep_join)):  # the caches advanced alike
        assert a.lengths == b.lengths
        for k1, k2 in zip(a.keys, b.keys, strict=True):
            torch.testing.assert_close(k1[:, :, :a.lengths[0]], k2[:, :, :b.lengths[0]], rtol=1e-12, atol=1e-12)


def test_learned_positions_are_refused():
    model = tiny_model(**{**MODEL_FIELDS, "learned_pos_emb": True, "attn_config": {"alibi": False}})
    with pytest.raises(ValueError, match="learned_pos_emb"):
        forward_groups(model, [Group(torch.ones(1, 1, dtype=torch.long), KVCache(model.config.n_layers))])
