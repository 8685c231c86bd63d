"""Scores checked against an independent float64 computation: a plain forward of each whole
sequence, one at a time, no cache, no batching, no prefix reuse."""

import copy

import pytest
import torch

from mpt.eval import TaskConfig, evaluate, load_model
from mpt.eval.task_types import TASK_TYPES
from mpt.eval.task_types.choice import choice_scores, pick
from mpt.eval.task_types.generation import normalize_answer, qa_correct
from mpt.eval.tasks import build_prompts, load_task_records

from .conftest import write_jsonl

WORDS = "the cat sat on a mat while dogs ran far away from home and birds sang loudly".split()


def _text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


def _ref_ids(tokenizer, p, ctx: str, cont: str):
    """LLM Foundry's recipe: preamble with special tokens, context and continuation without."""
    pre = tokenizer(p.preamble)["input_ids"]
    c = tokenizer(ctx, add_special_tokens=False)["input_ids"]
    return pre + c, tokenizer(cont, add_special_tokens=False)["input_ids"]


def _ref_logprob(ref, ctx_ids, cont_ids):
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logp = torch.log_softmax(ref(ids).logits[0].double(), -1)
    pos = range(len(ctx_ids) - 1, len(ctx_ids) + len(cont_ids) - 1)
    lp = sum(logp[p, t].item() for p, t in zip(pos, cont_ids, strict=True))
    greedy = all(logp[p].argmax().item() == t for p, t in zip(pos, cont_ids, strict=True))
    return lp, greedy


def _run(model, tokenizer, path, **settings):
    task = TaskConfig("t", str(path), **{k: v for k, v in settings.items() if k not in ("batch", "reuse", "window")})
    task.validate()
    out = evaluate(model, tokenizer, [task], batch_size=settings.get("batch", 5), keep_examples=True,
                   progress=False, prefix_reuse=settings.get("reuse", True), max_seq_len=settings.get("window"))
    task_type, recs = load_task_records(task, path)
    prompts = build_prompts(task, task_type, recs, task.num_fewshot[0], prefix_space=True)
    return out, prompts


@pytest.fixture(scope="module")
def mpt(tiny_mpt_dir):
    model = load_model(str(tiny_mpt_dir), device="cpu")
    return model, copy.deepcopy(model).double()


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    return model, copy.deepcopy(model).double()


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


def _greedy(ref, ids, n):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = ref(torch.tensor([ids])).logits[0, -1].argmax().item()
            out.append(nxt)
            ids.append(nxt)
    return out


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


def test_scoring_rules_by_hand():
    assert choice_scores([-6.0, -4.0], [3, 1], [10, 2], "token") == [-2.0, -4.0]
    assert choice_scores([-6.0, -4.0], [3, 1], [12, 2], "char") == [-0.5, -2.0]
    assert choice_scores([-6.0, -4.0], [3, 1], [12, 2], "none") == [-6.0, -4.0]
    assert pick([-2.0, -1.0, -1.0]) == 1  # ties go to the first
    assert normalize_answer("The  Beatles'_song!") == "beatles song"
    assert qa_correct(" The Onion skins\nQuestion:", ["Onion"], [], True)  # prefix match after normalising
    assert not qa_correct(" On", ["Onion"], [], True)
    assert not qa_correct(" a\nOnion", ["Onion"], ["\n"], True)
    assert qa_correct("Paris, France", ["paris"], [], True) and not qa_correct("Paris", ["paris"], [], False)
