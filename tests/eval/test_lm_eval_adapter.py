"""Per-example agreement with lm-evaluation-harness (``--model hf``) on the same model, the same
task data and the same prompt strings (our prompts exported as local lm-eval tasks).

multiple_choice: per-choice log-likelihoods and lm-eval's acc / acc_norm predictions against
ours with normalization none / char; schema: the same in lm-eval's multiple-input mode;
language_modeling: lm-eval's is_greedy against our accuracy; generation: the generated text. A tiny
Llama (RoPE) scored with prefix reuse is checked against lm-eval on multiple choice and schema too.
"""

import os

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install -e '.[eval]')")
pytest.importorskip("accelerate", reason="lm-eval's hf model needs accelerate (pip install -e '.[eval]')")

from mpt.eval import evaluate, load_model, load_suite  # noqa: E402
from mpt.eval.lm_eval_adapter import export_task, register  # noqa: E402

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

CASES = [("piqa", 0, 6), ("arc_easy", 3, 4), ("winogrande", 5, 4), ("lambada_openai", 0, 4), ("triviaqa_sm_sub", 3, 3)]
GEN_TOKENS = 6


def _lm_eval(model: str, model_dir, names, include):
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(model=model, model_args=f"pretrained={model_dir},dtype=float32", tasks=names,
                                  task_manager=TaskManager(include_path=str(include)), log_samples=True,
                                  batch_size=4, device="cpu")
    return {n: sorted(res["samples"][n], key=lambda s: s["doc_id"]) for n in names}


@pytest.fixture(scope="module")
def runs(tiny_mpt_dir, tokenizer, eval_data, tmp_path_factory):
    include = tmp_path_factory.mktemp("lm_eval_tasks")
    suite = {t.label: t for t in load_suite("mpt7b").tasks}
    names = {}
    for label, k, n in CASES:
        names[label] = export_task(suite[label], k, tokenizer, include, eval_data, limit=n,
                                   max_new_tokens=GEN_TOKENS if label.startswith("triviaqa") else None)
    theirs = _lm_eval("hf", tiny_mpt_dir, list(names.values()), include)
    model = load_model(str(tiny_mpt_dir), device="cpu")
    ours = {}
    for label, k, n in CASES:
        for norm in ("none", "char"):
            task = suite[label]
            task.num_fewshot, task.normalization = [k], norm
            if label.startswith("triviaqa"):
                task.max_new_tokens = GEN_TOKENS
            out = evaluate(model, tokenizer, [task], data_dir=eval_data, limit=n, batch_size=8, keep_examples=True,
                           progress=False)
            ours[label, norm] = out.examples
    return names, theirs, ours, include


@pytest.mark.parametrize("label", ["piqa", "arc_easy", "winogrande"])
def test_choice_predictions_equal_lm_eval(runs, label):
    names, theirs, ours, _ = runs
    samples = theirs[names[label]]
    assert len(samples) == len(ours[label, "none"]) > 0
    for s, mine, mine_char in zip(samples, ours[label, "none"], ours[label, "char"], strict=True):
        lls = [r[0] for r in s["filtered_resps"]]
        assert mine.logprobs == pytest.approx(lls, abs=2e-3), s["doc_id"]
        assert float(mine.correct) == s["acc"]
        if "acc_norm" in s:
            assert float(mine_char.correct) == s["acc_norm"]


def test_language_modeling_equals_lm_eval_is_greedy(runs):
    names, theirs, ours, _ = runs
    for s, mine in zip(theirs[names["lambada_openai"]], ours["lambada_openai", "none"], strict=True):
        ll, greedy = s["filtered_resps"][0]
        assert mine.logprobs[0] == pytest.approx(ll, abs=2e-3)
        assert mine.correct == bool(greedy) == bool(s["acc"])


def test_generations_equal_lm_eval(runs):
    names, theirs, ours, _ = runs
    for s, mine in zip(theirs[names["triviaqa_sm_sub"]], ours["triviaqa_sm_sub", "none"], strict=True):
        assert mine.prediction == s["filtered_resps"][0]


def test_lm_eval_model_mpt_equals_model_hf(runs, tiny_mpt_dir):
    names, theirs, _, include = runs
    register()
    mine = _lm_eval("mpt", tiny_mpt_dir, [names["piqa"]], include)[names["piqa"]]
    for a, b in zip(mine, theirs[names["piqa"]], strict=True):
        assert [r[0] for r in a["filtered_resps"]] == pytest.approx([r[0] for r in b["filtered_resps"]], abs=1e-3)
        assert a["acc"] == b["acc"]


LLAMA_CASES = [("piqa", 0, 6), ("arc_easy", 3, 4), ("winogrande", 5, 4)]


@pytest.fixture(scope="module")
def llama_runs(tiny_llama_dir, tokenizer, eval_data, tmp_path_factory):
    """A Llama-architecture model (RoPE) scored with prefix reuse, against lm-eval's whole sequences."""
    from mpt.eval.runner import _Driver

    include = tmp_path_factory.mktemp("lm_eval_llama_tasks")
    suite = {t.label: t for t in load_suite("mpt7b").tasks}
    names = {label: export_task(suite[label], k, tokenizer, include, eval_data, limit=n) for label, k, n in LLAMA_CASES}
    theirs = _lm_eval("hf", tiny_llama_dir, list(names.values()), include)
    model = load_model(str(tiny_llama_dir), device="cpu")
    assert _Driver(model, prefix_reuse=True).reuse
    ours = {}
    for label, k, n in LLAMA_CASES:
        task = suite[label]
        task.num_fewshot, task.normalization = [k], "none"
        ours[label] = evaluate(model, tokenizer, [task], data_dir=eval_data, limit=n, batch_size=8,
                               keep_examples=True, progress=False).examples
    return names, theirs, ours


@pytest.mark.parametrize("label", [c[0] for c in LLAMA_CASES])
def test_llama_prefix_reuse_equals_lm_eval(llama_runs, label):
    names, theirs, ours = llama_runs
    samples = theirs[names[label]]
    assert len(samples) == len(ours[label]) > 0
    for s, mine in zip(samples, ours[label], strict=True):
        assert mine.logprobs == pytest.approx([r[0] for r in s["filtered_resps"]], abs=2e-3), s["doc_id"]
        assert float(mine.correct) == s["acc"]
