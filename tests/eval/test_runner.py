"""Batch planning, and prefix reuse on a Hugging Face Llama (RoPE) model: the reuse path, the plain
path and an independent float64 forward of each whole sequence must give the same scores."""

import copy

import pytest

from mpt.eval import TaskConfig, evaluate, load_model
from mpt.eval.runner import _common_prefix, _Driver, _fill, _split, plan

from .conftest import write_jsonl
from .scoring import _ref_ids, _ref_logprob, _text


def test_fill_respects_rows_and_tokens():
    lengths = [100, 2000, 50, 60]
    order = [1, 0, 3, 2]  # longest first
    assert _fill(order, lengths, max_rows=64, max_tokens=10**9) == [[1, 0, 3, 2]]
    assert _fill(order, lengths, max_rows=2, max_tokens=10**9) == [[1, 0], [3, 2]]
    # 2 rows x 2000 tokens > 3000: the long one goes alone; 3 x 100 fits
    assert _fill(order, lengths, max_rows=64, max_tokens=3000) == [[1], [0, 3, 2]]
    # the fixed part (a padded prefix every row attends to) counts per row
    assert _fill(order[1:], lengths, max_rows=64, max_tokens=3 * 150, fixed=50) == [[0, 3, 2]]
    assert _fill(order[1:], lengths, max_rows=64, max_tokens=3 * 150 - 1, fixed=50) == [[0, 3], [2]]
    # an item over the budget still runs, alone
    assert _fill([0], [100], max_rows=1, max_tokens=10) == [[0]]


def test_split_minimises_padding_within_the_budget():
    lengths = [100, 10, 10, 10]
    # filling greedily pads two short rows to 100; the cut after the long one pads nothing
    assert _fill([0, 1, 2, 3], lengths, max_rows=3, max_tokens=10**9) == [[0, 1, 2], [3]]
    assert _split([0, 1, 2, 3], lengths, max_rows=3, max_tokens=10**9, overhead=1) == [[0], [1, 2, 3]]
    # a forward's own cost keeps batches together when padding is cheap
    assert _split([0, 1, 2], [10, 9, 8], max_rows=3, max_tokens=10**9, overhead=64) == [[0, 1, 2]]
    assert _split([0, 1, 2], [10, 9, 8], max_rows=3, max_tokens=10**9, overhead=0) == [[0], [1], [2]]
    # budgets: rows, and rows x (fixed + longest) tokens; an item over the budget runs alone
    assert _split([0, 1, 2], [10, 3, 2], max_rows=2, max_tokens=10**9) == [[0], [1, 2]]
    assert _split([0, 1, 2], [10, 9, 8], max_rows=3, max_tokens=2 * 19, fixed=10) == [[0], [1, 2]]
    assert _split([0, 1, 2], [10, 9, 8], max_rows=3, max_tokens=2 * 19 - 1, fixed=10) == [[0], [1], [2]]
    assert _split([0], [100], max_rows=1, max_tokens=10) == [[0]] and _split([], [], 4, 100) == []


def test_plan_sorts_prefixes_then_suffixes():
    prefixes = [10, 0, 30, 20]
    rows_of = [[0, 1], [2], [3, 4, 5], [6, 7]]
    row_len = [5, 3, 9, 2, 4, 6, 1, 8]
    chunks = plan(prefixes, rows_of, row_len, max_rows=64, max_tokens=10**9)
    assert [(c.groups, c.prefix_len, c.prefix_batches) for c in chunks] == [([2, 3, 0], 30, [[0, 1, 2]]),
                                                                            ([], 0, [])]
    assert chunks[0].batches == [[7, 5, 0, 4, 1, 3, 6]]  # every row of the chunk, longest suffix first
    assert chunks[1].batches == [[2]]  # an example with nothing shared runs whole, after the others
    chunks = plan(prefixes, rows_of, row_len, max_rows=2, max_tokens=10**9)
    assert chunks[0].prefix_batches == [[0, 1], [2]]
    assert chunks[0].batches == [[7], [5, 0], [4, 1], [3, 6]]  # 8+12+8+4 padded tokens, not 16+10+6+1
    # a chunk's cache holds at most 280 / 4 = 70 tokens (2 x 30), and 2 x max_rows examples
    chunks = plan(prefixes, rows_of, row_len, max_rows=64, max_tokens=280)
    assert [c.groups for c in chunks] == [[2, 3], [0], []] and chunks[0].batches == [[7, 5, 4, 3, 6]]
    chunks = plan(prefixes, rows_of, row_len, max_rows=1, max_tokens=10**9)
    assert [c.groups for c in chunks] == [[2, 3], [0], []]


def test_common_prefix():
    assert _common_prefix([[1, 2, 3], [1, 2, 4, 5], [1, 2]]) == 2
    assert _common_prefix([[7, 8], [7, 8]]) == 2 and _common_prefix([[1], [2]]) == 0


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), device="cpu")
    return model, copy.deepcopy(model).double()


def _tokens_through(model, fn):
    """(result of fn(), token positions that went through the model's body)."""
    seen = []
    hook = model.base_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True)
    try:
        return fn(), sum(seen)
    finally:
        hook.remove()


# Options of different lengths after queries of different lengths: prefixes are left-padded and
# suffixes right-padded within a batch, so every row's positions differ from its column.
MC = [{"query": f"Question: {_text(i, 2 + 3 * (i % 4))}?",
       "choices": [_text(i + k, 1 + (i + 2 * k) % 7) for k in range(4)], "gold": i % 4} for i in range(10)]
SCHEMA = [{"context_options": [f"{_text(i, 3 + i % 3)} because {_text(i + k, 1 + k)}" for k in range(2)],
           "continuation": _text(i + 5, 2 + i % 3), "gold": i % 2} for i in range(6)]


@pytest.mark.parametrize("records,shots,tokens", [(MC, 2, 65536), (MC, 0, 300), (SCHEMA, 1, 65536)])
def test_llama_prefix_reuse_equals_plain_and_float64(llama, tokenizer, tmp_path, records, shots, tokens):
    model, ref = llama
    driver = _Driver(model, prefix_reuse=True)
    assert driver.kind == "hf" and driver.reuse, "a Llama model must take the prefix-reuse path"
    path = write_jsonl(tmp_path / "t.jsonl", records)
    task = TaskConfig("t", str(path), num_fewshot=[shots], continuation_delimiter="\nAnswer: ",
                      normalization="none")
    task.validate()

    def run(reuse):
        return evaluate(model, tokenizer, [task], batch_size=6, keep_examples=True, progress=False,
                        prefix_reuse=reuse, max_batch_tokens=tokens).examples

    fast, fast_tokens = _tokens_through(model, lambda: run(True))
    plain, plain_tokens = _tokens_through(model, lambda: run(False))
    assert fast_tokens < plain_tokens  # the shared prefixes really ran once
    schema = "context_options" in records[0]
    for a, b in zip(fast, plain, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
        assert a.prediction == b.prediction and a.n_tokens == b.n_tokens
    # and both equal a float64 forward of each whole sequence, alone
    from mpt.eval.tasks import build_prompts, load_task_records

    task_type, recs = load_task_records(task, path)
    for row, p in zip(fast, build_prompts(task, task_type, recs, shots, prefix_space=True), strict=True):
        pairs = [(c, p.continuations[0]) for c in p.contexts] if schema else \
            [(p.contexts[0], c) for c in p.continuations]
        want = [_ref_logprob(ref, *_ref_ids(tokenizer, p, ctx, cont))[0] for ctx, cont in pairs]
        assert row.logprobs == pytest.approx(want, abs=2e-4)
        assert row.prediction == max(range(len(want)), key=lambda k: (want[k], -k))


def test_learned_position_mpt_takes_the_plain_path():
    from mpt import MPTForCausalLM
    from tests.tiny import tiny_config

    model = MPTForCausalLM(tiny_config(n_layers=1, max_seq_len=64, vocab_size=100,
                                       learned_pos_emb=True, attn_config={"alibi": False}))
    assert not _Driver(model, prefix_reuse=True).reuse
    assert _Driver(MPTForCausalLM(tiny_config(n_layers=1, max_seq_len=64, vocab_size=100)),
                   prefix_reuse=True).reuse
