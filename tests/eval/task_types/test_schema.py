"""Schema tasks: scores and picks match an independent float64 computation."""

import pytest

from tests.eval.conftest import write_jsonl
from tests.eval.scoring import _ref_ids, _ref_logprob, _run, _text


def test_schema_matches_float64(mpt, tokenizer, tmp_path):
    model, ref = mpt
    recs = [{"context_options": [f"{_text(i, 4)} because {_text(i + k, 1 + k)}" for k in range(2)],
             "continuation": _text(i + 5, 2 + i % 3), "gold": i % 2} for i in range(7)]
    path = write_jsonl(tmp_path / "schema.jsonl", recs)
    for shots in (0, 2):
        out, prompts = _run(model, tokenizer, path, num_fewshot=[shots], batch=3)
        for row, p in zip(out.examples, prompts, strict=True):
            ref_lp, ref_n = [], []
            for ctx in p.contexts:
                ctx_ids, cont_ids = _ref_ids(tokenizer, p, ctx, p.continuations[0])
                ref_lp.append(_ref_logprob(ref, ctx_ids, cont_ids)[0])
                ref_n.append(len(cont_ids))
            assert row.logprobs == pytest.approx(ref_lp, abs=2e-4)
            per_token = [lp / n for lp, n in zip(ref_lp, ref_n, strict=True)]
            assert row.prediction == max(range(2), key=lambda k: (per_token[k], -k))
            assert row.correct == (row.prediction == p.gold)
