"""Reading task files, named errors for bad input, and prompt strings exactly as LLM Foundry builds them."""

import random

import pytest

from mpt.data.readers import DataInputError
from mpt.eval.suite import load_suite, task_from_dict
from mpt.eval.task_types import TASK_TYPES
from mpt.eval.tasks import (
    EvalTaskError,
    TaskConfig,
    build_prompts,
    infer_task_type,
    load_task_records,
    read_records,
    sample_fewshot,
)

from .conftest import write_jsonl

MC = [{"query": f"Question: q{i}?\n", "choices": [f"a{i}", f"b{i}"], "gold": i % 2} for i in range(5)]


# ---- bad input -----------------------------------------------------------------------------
def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "choices": ["a"], "gold": 0}\n{"query": "q", oops}\n')
    with pytest.raises(DataInputError, match=r"bad\.jsonl:2: malformed JSON"):
        read_records(path)


def test_missing_field_names_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [MC[0], {"query": "q", "gold": 0, "choices": ["x", "y"]},
                                              {"query": "q", "gold": 0}])
    with pytest.raises(EvalTaskError, match=r"t\.jsonl:3: field 'choices' is missing"):
        load_task_records(TaskConfig("t", str(path), icl_task_type="multiple_choice"), path)


def test_gold_out_of_range_names_value_and_fix(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [MC[0], {"query": "q", "choices": ["x", "y"], "gold": 2}])
    with pytest.raises(EvalTaskError, match=r"t\.jsonl:2: field 'gold' = 2 is out of range for 2 choices "
                                            r"\(use an index from 0 to 1\)"):
        load_task_records(TaskConfig("t", str(path)), path)


def test_empty_choices_and_wrong_types(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [{"query": "q", "choices": [], "gold": 0}])
    with pytest.raises(EvalTaskError, match=r"e\.jsonl:1: field 'choices' is empty"):
        load_task_records(TaskConfig("e", str(path)), path)
    path = write_jsonl(tmp_path / "w.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": "1"}])
    with pytest.raises(EvalTaskError, match=r"w\.jsonl:1: field 'gold' should be int, got str"):
        load_task_records(TaskConfig("w", str(path)), path)


def test_unknown_task_type_and_fields(tmp_path):
    with pytest.raises(EvalTaskError, match="icl_task_type='ranking' is not valid; use one of language_modeling"):
        TaskConfig("x", "x.jsonl", icl_task_type="ranking").validate()
    with pytest.raises(EvalTaskError, match=r"cannot tell the task type from the fields \(prompt, target\)"):
        infer_task_type({"prompt": "p", "target": "t", "_line": 1}, "f.jsonl")
    with pytest.raises(EvalTaskError, match="unknown task setting 'num_shots'"):
        task_from_dict({"label": "x", "file": "x.jsonl", "num_shots": 3}, "suite.yaml icl_tasks[0]")


def test_type_inference_for_each_schema():
    assert infer_task_type({"context": "c", "continuation": "x"}, "f").name == "language_modeling"
    assert infer_task_type({"choices": [], "query": "q", "gold": 0}, "f").name == "multiple_choice"
    assert infer_task_type({"context_options": [], "continuation": "c", "gold": 0}, "f").name == "schema"
    assert infer_task_type({"context": "c", "answer": "a", "aliases": []}, "f").name == "generation_task_with_answers"


def test_fields_that_fit_two_types_need_the_type_named():
    with pytest.raises(EvalTaskError, match=r"f:3: the fields fit language_modeling and "
                                            r"generation_task_with_answers; set icl_task_type"):
        infer_task_type({"context": "c", "continuation": "x", "answer": "a", "_line": 3}, "f")


def test_lines_split_on_newline_only(tmp_path):
    # U+0085 inside a string is data, not a line break (triviaqa.jsonl has one)
    path = tmp_path / "nel.jsonl"
    path.write_text('{"context": "a\u0085b", "answer": "x"}\n{"context": "c", "answer": "y"}\n', encoding="utf-8")
    recs = read_records(path)
    assert len(recs) == 2 and recs[0]["context"] == "a\u0085b"


def test_shared_triviaqa_has_3000_records(eval_data):
    assert len(read_records(eval_data / "triviaqa.jsonl")) == 3000


# ---- few-shot sampling ------------------------------------------------------------------------
def test_fewshot_never_includes_the_example_and_is_reproducible():
    for n, k in [(5, 4), (10, 3), (3, 5)]:
        rng = random.Random(1234)
        draws = [sample_fewshot(n, k, i, rng) for i in range(n)]
        for i, shots in enumerate(draws):
            assert i not in shots and len(shots) == min(k, n - 1) and len(set(shots)) == len(shots)
        rng = random.Random(1234)
        assert draws == [sample_fewshot(n, k, i, rng) for i in range(n)]


def test_fewshot_draws_follow_llm_foundry():
    # LLM Foundry: set(rng.sample(range(n), k)); if the example was drawn, remove it and draw
    # rng.choice(range(n)) until a new index comes up. Replayed by hand for n=4, k=2, seed 1234.
    rng = random.Random(1234)
    expected = []
    for i in range(4):
        picked = set(rng.sample(range(4), 2))
        if i in picked:
            picked.remove(i)
            r = rng.choice(range(4))
            while r in picked or r == i:
                r = rng.choice(range(4))
            picked.add(r)
        expected.append(list(picked))
    rng = random.Random(1234)
    assert [sample_fewshot(4, 2, i, rng) for i in range(4)] == expected


# ---- prompt strings ---------------------------------------------------------------------------
def _prompts(tmp_path, records, **settings):
    path = write_jsonl(tmp_path / "t.jsonl", records)
    task = TaskConfig("t", str(path), **settings)
    task.validate()
    task_type, recs = load_task_records(task, path)
    return build_prompts(task, task_type, recs, settings.get("num_fewshot", [0])[0], prefix_space=True)


def test_multiple_choice_zero_shot_answer_delimiter(tmp_path):
    p = _prompts(tmp_path, MC, continuation_delimiter="\nAnswer: ")[0]
    # the query's trailing "\n" is stripped; the delimiter's trailing space moves to the choices
    assert p.preamble == "" and p.contexts == ["Question: q0?\nAnswer:"]
    assert p.continuations == [" a0", " b0"] and p.gold == 0


def test_multiple_choice_few_shot_default_delimiter(tmp_path):
    prompts = _prompts(tmp_path, MC, num_fewshot=[2])
    for p in prompts:
        assert p.index not in p.fewshot
        demos = [f"Question: q{j}? {MC[j]['choices'][MC[j]['gold']]}" for j in p.fewshot]
        assert p.preamble == "\n".join(demos)
        assert p.contexts == [f"\nQuestion: q{p.index}?"]
        assert p.continuations == [f" a{p.index}", f" b{p.index}"]


def test_language_modeling_few_shot_answer_delimiter(tmp_path):
    recs = [{"context": f"ctx {i} ", "continuation": f"cont {i}"} for i in range(4)]
    prompts = _prompts(tmp_path, recs, num_fewshot=[1], continuation_delimiter="\nAnswer: ", prelimiter="Q: ")
    for p in prompts:
        (j,) = p.fewshot
        assert p.preamble == f"Q: ctx {j}\nAnswer: cont {j}"  # demonstration answer: no added space
        assert p.contexts == [f"\nQ: ctx {p.index}\nAnswer:"]
        assert p.continuations == [f" cont {p.index}"]


def test_schema_zero_and_few_shot(tmp_path):
    recs = [{"context_options": [f"A{i} did it because A{i}", f"A{i} did it because B{i}"],
             "continuation": f"was tired {i}.", "gold": i % 2} for i in range(4)]
    p0 = _prompts(tmp_path, recs)[1]
    assert p0.contexts == ["A1 did it because A1", "A1 did it because B1"]
    assert p0.continuations == [" was tired 1."] and p0.gold == 1
    for p in _prompts(tmp_path, recs, num_fewshot=[2]):
        demos = [f"{recs[j]['context_options'][recs[j]['gold']]} {recs[j]['continuation']}" for j in p.fewshot]
        assert p.preamble == "\n".join(demos)
        i = p.index
        assert p.contexts == [f"\nA{i} did it because A{i}", f"\nA{i} did it because B{i}"]


def test_generation_prompt_and_answers(tmp_path):
    recs = [{"context": f"Question: q{i}?\nAnswer:", "answer": f"ans{i}", "aliases": [f"alias{i}", f"ans{i}"]}
            for i in range(3)]
    for p in _prompts(tmp_path, recs, num_fewshot=[1]):
        (j,) = p.fewshot
        assert p.preamble == f"Question: q{j}?\nAnswer: ans{j}"
        assert p.contexts == [f"\nQuestion: q{p.index}?\nAnswer:"]
        assert p.continuations == [] and p.answers == sorted({f"ans{p.index}", f"alias{p.index}"})


def test_prefix_space_rule(tmp_path):
    recs = [{"query": "q", "choices": [" spaced", "plain"], "gold": 0}]
    path = write_jsonl(tmp_path / "t.jsonl", recs)
    task = TaskConfig("t", str(path))
    _, r = load_task_records(task, path)
    (with_space,) = build_prompts(task, TASK_TYPES["multiple_choice"], r, 0, prefix_space=True)
    (without,) = build_prompts(task, TASK_TYPES["multiple_choice"], r, 0, prefix_space=False)
    assert with_space.continuations == [" spaced", " plain"]  # no second space
    assert without.continuations == [" spaced", "plain"]


def test_categories_draw_demonstrations_within_the_category(eval_data):
    task = next(t for t in load_suite("mpt7b").tasks if t.label == "mmlu")
    task_type, recs = load_task_records(task, eval_data / task.file)
    prompts = build_prompts(task, task_type, recs, 5, prefix_space=True, limit=3)
    for p in prompts:
        assert len(p.fewshot) == 5 and all(recs[p.pool[j]]["category"] == p.category for j in p.fewshot)
        assert p.contexts[0].endswith("\nAnswer:") and p.continuations == [" A", " B", " C", " D"]
    # an example's prompt does not depend on how many examples are evaluated
    assert build_prompts(task, task_type, recs, 5, True, limit=1)[0] == prompts[0]


def test_real_piqa_prompt(eval_data):
    task = next(t for t in load_suite("mpt7b").tasks if t.label == "piqa")
    task_type, recs = load_task_records(task, eval_data / task.file)
    (p,) = build_prompts(task, task_type, recs, 0, prefix_space=True, limit=1)
    raw = read_records(eval_data / "piqa.jsonl")[0]
    assert p.contexts == [raw["query"].strip() + "\nAnswer:"]
    assert p.continuations == [" " + c for c in raw["choices"]]
