"""Language modeling tasks: accuracy is the greedy match, checked in float64."""

import pytest

from tests.eval.conftest import write_jsonl
from tests.eval.scoring import _greedy, _ref_ids, _ref_logprob, _run, _text


@pytest.mark.parametrize("which", ["mpt", "gpt2"])
def test_language_modeling_accuracy_is_greedy_match(request, tokenizer, tmp_path, which):
    model, ref = request.getfixturevalue(which)
    recs = []
    for i in range(6):
        ctx = _text(i, 5 + i)
        if i % 2 == 0:  # the model's own greedy continuation: must count as correct
            ids = _greedy(ref, tokenizer(ctx)["input_ids"], 3)
            cont = tokenizer.decode(ids)
            # keep only examples whose decoded text re-encodes to the same ids
            if tokenizer(" " + cont.lstrip(" "), add_special_tokens=False)["input_ids"] != ids:
                cont = "zebra"
        else:
            cont = "zebra quantum"
        recs.append({"context": ctx, "continuation": cont})
    path = write_jsonl(tmp_path / "lm.jsonl", recs)
    out, prompts = _run(model, tokenizer, path, batch=4)
    for row, p in zip(out.examples, prompts, strict=True):
        ctx_ids, cont_ids = _ref_ids(tokenizer, p, p.contexts[0], p.continuations[0])
        lp, greedy = _ref_logprob(ref, ctx_ids, cont_ids)
        assert row.correct == greedy and row.logprobs[0] == pytest.approx(lp, abs=2e-4)
    assert any(r.correct for r in out.examples), "no example exercised the correct branch"
