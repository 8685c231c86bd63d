"""Fitting a prompt in the window: demonstrations go first, then the context is cut, never the continuation."""

from tests.eval.conftest import write_jsonl
from tests.eval.scoring import _run, _text


def test_truncation_drops_shots_then_cuts_context_never_the_continuation(mpt, tokenizer, tmp_path):
    model, _ = mpt
    recs = [{"query": _text(i, 40), "choices": [_text(i, 6), _text(i + 1, 6)], "gold": 0} for i in range(4)]
    path = write_jsonl(tmp_path / "long.jsonl", recs)
    out, _ = _run(model, tokenizer, path, num_fewshot=[3], window=100)
    res = out.tasks[0]
    assert res.fewshot_dropped == 4  # 4 x 40+ words cannot fit 100 tokens
    assert all(r.fewshot_used < 3 for r in out.examples)
    out, prompts = _run(model, tokenizer, path, num_fewshot=[0], window=20)
    assert out.tasks[0].context_cut == 4
    for row, p in zip(out.examples, prompts, strict=True):
        full = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in p.continuations]
        assert row.n_tokens == full and row.context_cut > 0
