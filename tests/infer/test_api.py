"""mpt.load + the batched generate / stream API, checked against full recomputation and transformers;
int8 weights generate greedily."""

import pytest
import torch

from mpt.infer import SamplingParams
from mpt.infer.batching import BatchEngine, Row, run

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy", "MPT", "A server batches requests together:"]


def reference(llm, prompt, n):
    """Greedy continuation without the engine: each token is the argmax of a forward over everything so
    far (no KV cache, no batching, no padding; tests/model checks these logits against transformers')."""
    ids = torch.tensor([llm.encode(prompt)])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, llm.model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, ids.shape[1] - n:].tolist()


def test_load_returns_model_and_tokenizer(llm, checkpoint):
    model, tokenizer = llm
    assert model.config.model_type == "mpt" and not model.training
    assert tokenizer.eos_token == "<|endoftext|>"
    assert llm.stop_token_ids == [0, tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_load_names_a_folder_without_a_checkpoint(tmp_path):
    from mpt import load

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load(tmp_path)


def test_batched_greedy_equals_one_at_a_time(llm):
    outs = llm.generate(PROMPTS, max_new_tokens=12)  # different prompt lengths: left padding in one batch
    for p, o in zip(PROMPTS, outs, strict=True):
        assert o.token_ids == reference(llm, p, 12)
        assert o.finish_reason == "length" and o.prompt_tokens == len(llm.encode(p))
        assert o.text == llm.tokenizer.decode(o.token_ids, skip_special_tokens=True)


def test_rows_join_and_leave_mid_batch(llm):
    """Two rows at a time, different lengths: rows finish at different steps and waiting ones join."""
    engine = llm.engine()
    lengths = [3, 20, 7, 15]
    reqs = [Row(i, llm.encode(p), SamplingParams(max_new_tokens=n)) for i, (p, n) in
            enumerate(zip(PROMPTS, lengths, strict=True))]
    widths = []
    for _ in run(engine, reqs, max_rows=2):
        widths.append(0 if engine.mask is None else engine.mask.shape[1])
    for r, p, n in zip(reqs, PROMPTS, lengths, strict=True):
        assert r.out_ids == reference(llm, p, n)
    # the cache is trimmed when the long rows leave: never wider than the longest live row
    assert max(widths) <= max(len(r.prompt_ids) + len(r.out_ids) for r in reqs)


def test_generation_continues_past_max_seq_len(llm):
    n = llm.model.config.max_seq_len + 20
    out = llm.generate(["Hello", "The quick brown fox"], max_new_tokens=n)
    assert [len(o.token_ids) for o in out] == [n, n]
    assert out[1].token_ids == reference(llm, "The quick brown fox", n)


def test_stream_pieces_add_up_to_generate(llm):
    chunks = list(llm.stream(PROMPTS[:2], max_new_tokens=10))
    for i in range(2):
        mine = [c for c in chunks if c.index == i]
        assert [c.token_id for c in mine] == reference(llm, PROMPTS[i], 10)
        assert "".join(c.text for c in mine) == llm.generate(PROMPTS[i], max_new_tokens=10).text
        assert [c.finish_reason for c in mine] == [None] * 9 + ["length"]


def test_stop_string_ends_generation_and_is_not_returned(llm):
    full = llm.generate("Hello world", max_new_tokens=20)
    stop = full.text[5:8]
    assert stop and full.text.find(stop) == 5
    out = llm.generate("Hello world", max_new_tokens=20, stop=[stop, "never-appears"])
    assert out.text == full.text[:5] and out.finish_reason == "stop"
    assert out.token_ids == full.token_ids[:len(out.token_ids)] and len(out.token_ids) < 20


def test_stop_token_ends_generation(llm):
    greedy = reference(llm, "Hello world", 10)
    engine = BatchEngine(llm.model, llm.decode, stop_token_ids=[greedy[4]])
    r = Row(0, llm.encode("Hello world"), SamplingParams(max_new_tokens=10))
    updates = list(run(engine, [r]))
    assert r.out_ids == greedy[:greedy.index(greedy[4]) + 1] and r.finish_reason == "stop"
    assert updates[-1].finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(llm):
    kw = dict(max_new_tokens=15, temperature=1.0, top_p=0.9, top_k=50)
    a = llm.generate(PROMPTS[:3], seed=7, **kw)
    b = llm.generate(PROMPTS[:3], seed=7, **kw)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    # prompt i samples with seed 7 + i, alone or in a batch
    assert llm.generate(PROMPTS[1], seed=8, **kw).token_ids == a[1].token_ids
    assert llm.generate(PROMPTS[0], seed=99, **kw).token_ids != a[0].token_ids


def test_repetition_penalty_matches_transformers(llm):
    ids = torch.tensor([llm.encode(PROMPTS[1])])
    hf = llm.model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False, repetition_penalty=1.5,
                            pad_token_id=1)[0, ids.shape[1]:].tolist()
    ours = llm.generate(PROMPTS[1], max_new_tokens=12, repetition_penalty=1.5).token_ids
    assert ours == hf and ours != reference(llm, PROMPTS[1], 12)


@pytest.mark.parametrize("field,value", [("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1),
                                         ("max_new_tokens", 0), ("repetition_penalty", 0.0)])
def test_bad_sampling_settings_are_named(llm, field, value):
    with pytest.raises(ValueError, match=field):
        llm.generate("Hello", **{"max_new_tokens": 4, field: value})


def test_generate_compiled_and_in_prefill_chunks_gives_the_eager_tokens(llm, plain_llm):
    """mpt.load(...).generate passes compile and prefill_chunk to the engine: same greedy tokens, compiled or
    eager, with prepacked weights and without. (A compiled engine over the prepacked weights is the compiled case
    of tests/infer/test_batching.py's fused-join test, on this same model: not compiled a second time here.)"""
    prompt = llm.encode(PROMPTS[3] * 3)
    eager = llm.generate([prompt], max_new_tokens=6)[0].token_ids
    assert plain_llm.generate([prompt], max_new_tokens=6)[0].token_ids == eager
    assert llm.generate([prompt], max_new_tokens=6, prefill_chunk=8)[0].token_ids == eager
    assert plain_llm.generate([prompt], max_new_tokens=6, compile=True)[0].token_ids == eager
    assert llm.engine(compile=True).decoder is not None


def test_load_int8_generates_greedily(llm8, llm):
    assert getattr(llm8.model, "quantized", None) == "int8"
    a = llm8.generate(["Hello world", "MPT is"], max_new_tokens=12)
    assert [len(c.token_ids) for c in a] == [12, 12]
    # Greedy is deterministic: the batch and the lone prompt agree (padding and cache merging are exact).
    assert llm8.generate("MPT is", max_new_tokens=12).token_ids == a[1].token_ids
    # The first greedy token is the float model's top choice unless that choice was a near tie.
    ids = llm.encode("MPT is")
    with torch.inference_mode():
        ref = llm.model(torch.tensor([ids])).logits[0, -1]
    top2 = ref.topk(2).values
    if float(top2[0] - top2[1]) > 0.2:
        assert a[1].token_ids[0] == int(ref.argmax())
