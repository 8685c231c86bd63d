"""generate_ids runs on the batching engine: one decode loop, one stop rule, checked against full
recomputation (each token the argmax of a forward over everything so far: no cache, no batching)."""

import math

import pytest
import torch

from mpt.infer import SamplingParams, generate_ids
from mpt.infer.batching import BatchEngine, Row, run
from mpt.infer.sampling import greedy_tokens, pick_token
from tests.model.helpers import MODEL_FIELDS
from tests.tiny import tiny_model

from .conftest import INFER_FIELDS

LEARNED = {"learned_pos_emb": True, "attn_config": {"alibi": False}, "max_seq_len": 24}


def recompute(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


def test_eos_ends_a_row_and_pads_it_while_the_others_go_on():
    model = tiny_model(5, **INFER_FIELDS)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(2, 400, (9,), generator=g).tolist(), torch.randint(2, 400, (5,), generator=g).tolist()
    eos = recompute(model, a, 12)[3]  # row a meets it at its 4th new token
    batch = torch.tensor([a, [0] * 4 + b])
    mask = (torch.arange(9) >= torch.tensor([[0], [4]])).long()
    out = generate_ids(model, batch, 12, eos_token_id=eos, attention_mask=mask)
    wants = []
    for prompt in (a, b):
        want = recompute(model, prompt, 12)
        wants.append(want[:want.index(eos) + 1] if eos in want else want)  # the EOS itself is kept
    assert len(wants[0]) == 4
    assert out.shape[1] == 9 + max(len(w) for w in wants)  # the batch ends when its last row does
    for row, want in zip(out, wants, strict=True):
        assert row[9:9 + len(want)].tolist() == want
        assert (row[9 + len(want):] == eos).all()  # a finished row is padded with EOS


def test_a_learned_position_model_stops_when_its_window_is_full():
    model = tiny_model(6, **(INFER_FIELDS | LEARNED))
    prompt = torch.randint(2, 400, (1, 8), generator=torch.Generator().manual_seed(6))
    out = generate_ids(model, prompt, max_new_tokens=40)  # the model refuses a 25th position
    assert out.shape == (1, 25)  # 24 positions fed, and the token predicted at the last one
    assert out[0, 8:].tolist() == recompute(model, prompt[0].tolist(), 17)
    # the same rule in the engine the server runs: the row ends with "length", no error
    row = Row(0, prompt[0].tolist(), SamplingParams(max_new_tokens=40))
    updates = list(run(BatchEngine(model, None, []), [row]))
    assert row.out_ids == out[0, 8:].tolist() and updates[-1].finish_reason == "length"
    assert all(u.error is None for u in updates)


def test_learned_positions_in_a_padded_batch_end_row_by_row():
    model = tiny_model(7, **(INFER_FIELDS | LEARNED))
    g = torch.Generator().manual_seed(7)
    a, b = torch.randint(2, 400, (10,), generator=g).tolist(), torch.randint(2, 400, (4,), generator=g).tolist()
    mask = torch.tensor([[1] * 10, [0] * 6 + [1] * 4])
    out = generate_ids(model, torch.tensor([a, [0] * 6 + b]), 30, attention_mask=mask)
    assert out.shape == (2, 10 + 21)  # row b: 4 + 21 = 25 tokens; row a ends after 15, padded with 0 (no EOS)
    assert out[0, 10:25].tolist() == recompute(model, a, 15) and (out[0, 25:] == 0).all()
    assert out[1, 10:].tolist() == recompute(model, b, 21)


def test_greedy_rows_picked_together_equal_picked_one_by_one():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(6, 50, generator=g)
    logits[0, 3] = logits[0].max()  # a tie: the first index wins, as in argmax
    logits[1, 7] = float("nan")  # NaN is "never"
    logits[2, 9] = float("inf")  # +inf is the best score
    logits[3] = float("-inf")  # no finite score: this row fails
    logits[4] = float("nan")
    greedy = SamplingParams(temperature=0.0)
    for dtype in (torch.float32, torch.bfloat16):
        together = greedy_tokens(logits.to(dtype))
        for row, tok in zip(logits.to(dtype), together, strict=True):
            if tok is not None:
                assert tok == pick_token(row, greedy, [], None)
    assert together[0] == 3 and isinstance(together[5], int)
    assert together[1] is None and pick_token(logits[1], greedy, [], None) == int(logits[1].nan_to_num(-math.inf).argmax())
    assert together[2] is None and pick_token(logits[2], greedy, [], None) == 9
    for bad in (3, 4):
        assert together[bad] is None
        with pytest.raises(ValueError, match="no finite score"):
            pick_token(logits[bad], greedy, [], None)


def test_greedy_rows_with_logit_bias_are_picked_together_as_one_by_one():
    """Greedy rows with and without logit_bias share one batched pick; each gets pick_token's token."""
    engine = BatchEngine(tiny_model(0, **INFER_FIELDS), None, [0])
    g = torch.Generator().manual_seed(9)
    biases = [None, {5: 100.0}, {3: -100.0, 17: 2.5}, None, {int(i): -100.0 for i in range(40)}]
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(len(biases), 64, generator=g).to(dtype)
        logits[2, 3] = logits[2].max() + 1  # the bias must push this row's best token away
        engine.rows = [Row(i, [1], SamplingParams(temperature=0.0, logit_bias=b)) for i, b in enumerate(biases)]
        engine.logits = logits.clone()
        picks = engine._pick()
        assert picks == [pick_token(logits[i], r.params, [], None) for i, r in enumerate(engine.rows)]
        assert picks[1] == 5 and picks[2] != 3 and picks[4] >= 40
        assert torch.equal(engine.logits, logits)  # the scores a row's logprobs read are not changed


def test_the_blockwise_row_max_equals_torch_max_ties_and_nan_included():
    """greedy_tokens' CPU fast path (blocks of 64 scores) gives max(dim=-1)'s values and first indices."""
    from mpt.infer.sampling import _row_max

    g = torch.Generator().manual_seed(9)
    logits = torch.randn(8, 50432, generator=g)
    logits[0, [1000, 40000]] = 9.0  # a tie across blocks: the first index
    logits[1, [130, 140]] = 9.0  # a tie within a block
    logits[2, 5] = float("nan")  # NaN: the row's maximum is NaN, as with max
    logits[3] = torch.arange(50432.0).flip(0)  # the best score in the first block, at index 0
    logits[4, -1] = 99.0  # in the last block
    logits[5] = 0.0  # every score tied: index 0
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        best, ids = _row_max(x)
        ref_best, ref_ids = x.max(dim=-1)
        assert torch.equal(best.nan_to_num(7.0), ref_best.nan_to_num(7.0))
        assert ids[[0, 1, 3, 4, 5]].tolist() == [1000, 130, 0, 50431, 0]
        assert torch.equal(ids[[0, 1, 3, 4, 5, 6, 7]], ref_ids[[0, 1, 3, 4, 5, 6, 7]])
    assert greedy_tokens(logits)[2] is None and greedy_tokens(logits)[4] == 50431


def test_a_broken_model_is_an_error_not_garbage_tokens():
    model = tiny_model(9, **INFER_FIELDS)
    with torch.no_grad():
        model.transformer.wte.weight[5] = float("nan")
    with pytest.raises(ValueError, match="no finite score"):
        generate_ids(model, torch.tensor([[3, 4, 5]]), 4)


def test_zero_new_tokens_returns_the_prompt():
    model = tiny_model(10, **INFER_FIELDS)
    prompt = torch.tensor([[3, 4, 5]])
    assert torch.equal(generate_ids(model, prompt, 0), prompt)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(model, prompt, -1)


def test_sampling_is_reproducible_with_a_seed_and_respects_eos():
    model = tiny_model(4, **MODEL_FIELDS)
    prompt = torch.randint(0, 97, (3, 4), generator=torch.Generator().manual_seed(4))
    kw = dict(max_new_tokens=20, temperature=1.0, top_k=20, top_p=0.9)
    one = generate_ids(model, prompt, generator=torch.Generator().manual_seed(7), **kw)
    two = generate_ids(model, prompt, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(one, two)
    eos = int(one[0, 6])
    stopped = generate_ids(model, prompt, eos_token_id=eos, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(stopped[0, :7], one[0, :7])
    assert (stopped[0, 7:] == eos).all()  # finished rows are padded with eos
