"""Generation (QA) tasks: the generations equal a plain greedy loop."""

import pytest

from mpt.eval import TaskConfig
from mpt.eval.task_types import TASK_TYPES
from mpt.eval.task_types.generation import normalize_answer
from mpt.eval.tasks import build_prompts, load_task_records
from tests.eval.conftest import write_jsonl
from tests.eval.scoring import _greedy, _ref_ids, _run, _text


@pytest.mark.parametrize("which", ["mpt", "gpt2"])
def test_generation_matches_a_plain_greedy_loop(request, tokenizer, tmp_path, which):
    model, ref = request.getfixturevalue(which)
    recs = [{"context": f"Question: {_text(i, 2 + 2 * i)}?\nAnswer:", "answer": "zzz", "aliases": []} for i in range(5)]
    path = write_jsonl(tmp_path / "qa.jsonl", recs)
    task = TaskConfig("t", str(path), max_new_tokens=4)
    _, r = load_task_records(task, path)
    prompts = build_prompts(task, TASK_TYPES["generation_task_with_answers"], r, 0, prefix_space=True)
    expected = [tokenizer.decode(_greedy(ref, _ref_ids(tokenizer, p, p.contexts[0], "")[0], 4), skip_special_tokens=True)
                for p in prompts]
    for rec, text in zip(recs[:3], expected, strict=False):  # make some answers right
        rec["aliases"] = [text.strip()[:6] or "zzz"]
    write_jsonl(path, recs)
    out, _ = _run(model, tokenizer, path, max_new_tokens=4, batch=2)
    assert [row.generation for row in out.examples] == expected
    for row, rec, text in zip(out.examples, recs, expected, strict=True):
        assert row.correct == any(normalize_answer(text).startswith(normalize_answer(a))
                                     for a in [rec["answer"], *rec["aliases"]])
    assert sum(r.correct for r in out.examples) >= 1
