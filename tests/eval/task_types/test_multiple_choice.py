"""Multiple choice: scores and picks match an independent float64 computation."""

import pytest

from tests.eval.conftest import write_jsonl
from tests.eval.scoring import _ref_ids, _ref_logprob, _run, _text

MC = [{"query": f"Question: {_text(i, 3 + i % 5)}?", "choices": [_text(i + k, 1 + (i + k) % 6) for k in range(3)],
       "gold": i % 3} for i in range(9)]


@pytest.mark.parametrize("which,reuse,shots", [("mpt", True, 2), ("mpt", False, 0), ("gpt2", True, 1)])
def test_multiple_choice_matches_float64(request, tokenizer, tmp_path, which, reuse, shots):
    model, ref = request.getfixturevalue(which)
    path = write_jsonl(tmp_path / "mc.jsonl", MC)
    out, prompts = _run(model, tokenizer, path, num_fewshot=[shots], continuation_delimiter="\nAnswer: ",
                        reuse=reuse, batch=7)
    rows = out.examples
    assert len(rows) == len(MC)
    correct = 0
    for row, p in zip(rows, prompts, strict=True):
        ref_lp, ref_n = [], []
        for cont in p.continuations:
            ctx_ids, cont_ids = _ref_ids(tokenizer, p, p.contexts[0], cont)
            ref_lp.append(_ref_logprob(ref, ctx_ids, cont_ids)[0])
            ref_n.append(len(cont_ids))
        assert row.logprobs == pytest.approx(ref_lp, abs=2e-4)
        assert row.n_tokens == ref_n
        per_token = [lp / n for lp, n in zip(ref_lp, ref_n, strict=True)]
        expected = max(range(len(per_token)), key=lambda k: (per_token[k], -k))
        assert row.prediction == expected
        correct += expected == p.gold
    assert out.tasks[0].accuracy == pytest.approx(correct / len(MC))
