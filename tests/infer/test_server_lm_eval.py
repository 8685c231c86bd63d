"""lm-eval scores a running server: `local-completions` through /v1/completions (token-id prompts,
``echo``, ``logprobs``) gives the same per-example log-likelihoods as lm-eval's own ``--model hf``."""

import json
import os

import httpx
import pytest

from .conftest import RunningServer

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install -e '.[eval]')")
pytest.importorskip("accelerate", reason="lm-eval's hf model needs accelerate (pip install -e '.[eval]')")
pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api] (pip install -e '.[test]')")

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

DOCS = [
    {"prompt": "The quick brown fox", "choices": ["jumps over the lazy dog.", "is a server.", "Café"], "gold": 0},
    {"prompt": "MPT is a decoder-only", "choices": ["transformer", "dog", "12345"], "gold": 0},
    {"prompt": "Hello", "choices": ["world!", "naïve", "🙂 and numbers"], "gold": 1},
    {"prompt": "A server batches requests", "choices": ["together", "apart"], "gold": 0},
]
TASKS = {
    "mpt_http_choice": ("output_type: multiple_choice\ndoc_to_text: '{{prompt}}'\ndoc_to_choice: '{{choices}}'\n"
                        "doc_to_target: '{{gold}}'\nmetric_list:\n  - metric: acc\n"),
    # a single continuation: its log-likelihood and lm-eval's is_greedy
    "mpt_http_continuation": ("output_type: loglikelihood\ndoc_to_text: '{{prompt}}'\n"
                              "doc_to_target: ' {{choices[0]}}'\nmetric_list:\n  - metric: acc\n"),
}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_eval_http")
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, body in TASKS.items():
        (folder / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                             f"    test: {data}\ntest_split: test\n{body}")
    return folder


def run(model: str, model_args: str, tasks, batch_size: int = 1) -> dict:
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(TASKS), log_samples=True,
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                                  batch_size=batch_size, device="cpu")
    return {n: [s["resps"] for s in sorted(res["samples"][n], key=lambda s: s["doc_id"])] for n in TASKS}


def test_local_completions_through_the_server_equals_lm_eval_hf(llm, checkpoint, tasks):
    server = RunningServer(llm, context_length=2048)
    try:
        ours = run("local-completions", f"model=tiny,base_url={server.url}/v1/completions,tokenizer={checkpoint},"
                                        "tokenizer_backend=huggingface,num_concurrent=1,max_retries=1", tasks)
    finally:
        server.close()
    theirs = run("hf", f"pretrained={checkpoint},dtype=float32", tasks)
    for name in TASKS:
        assert len(ours[name]) == len(theirs[name]) == len(DOCS)
        for doc, (mine, hf) in enumerate(zip(ours[name], theirs[name], strict=True)):
            assert len(mine) == len(hf)
            for (ll, greedy), (ll_hf, greedy_hf) in zip((r[0] for r in mine), (r[0] for r in hf), strict=True):
                assert ll == pytest.approx(ll_hf, abs=1e-4), (name, doc)
                assert bool(greedy) == bool(greedy_hf), (name, doc)


def test_local_completions_with_the_batch_size_people_use(llm, checkpoint, tasks):
    """--batch_size 64: all 15 of these requests' prompts in one HTTP request (over --max-n's 8 choices, which
    limits generation, not scoring), answered with the scores of lm-eval's own hf model."""
    server = RunningServer(llm, context_length=2048)
    try:
        ours = run("local-completions", f"model=tiny,base_url={server.url}/v1/completions,tokenizer={checkpoint},"
                                        "tokenizer_backend=huggingface,num_concurrent=1,max_retries=1", tasks,
                   batch_size=64)
    finally:
        server.close()
    theirs = run("hf", f"pretrained={checkpoint},dtype=float32", tasks)
    for name in TASKS:
        for mine, hf in zip(ours[name], theirs[name], strict=True):
            for (ll, greedy), (ll_hf, greedy_hf) in zip((r[0] for r in mine), (r[0] for r in hf), strict=True):
                assert ll == pytest.approx(ll_hf, abs=1e-4) and bool(greedy) == bool(greedy_hf), name


def test_token_id_prompts_are_checked_against_the_vocabulary(server, llm):
    vocab = llm.model.config.vocab_size
    for prompt in ([vocab], [[1, 2], [3, vocab + 7]]):
        r = httpx.post(server.url + "/v1/completions", headers={"Authorization": "Bearer test-key"},
                       json={"model": "tiny", "prompt": prompt, "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
        assert str(prompt[-1][-1] if isinstance(prompt[-1], list) else prompt[0]) in r.json()["error"]["message"]


def test_echo_with_max_tokens_0_scores_the_prompt(server, llm):
    import torch

    ids = llm.encode("The quick brown fox jumps")
    r = server.client().completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=3)
    choice = r.choices[0]
    assert choice.text == llm.decode(ids) and r.usage.completion_tokens == 0
    with torch.no_grad():
        lp = llm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    expected = [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert choice.logprobs.token_logprobs[0] is None
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-5)
    assert all(len(top) <= 3 for top in choice.logprobs.top_logprobs[1:])
    assert len(choice.logprobs.tokens) == len(ids)
