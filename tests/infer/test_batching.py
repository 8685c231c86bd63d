"""The batching engine: a prompt prefilled in chunks gives the tokens of one forward, and running rows
step between the chunks of a joining prompt."""

import math

import pytest
import torch

from mpt.infer import generate_ids
from mpt.infer.batching import Row
from mpt.infer.sampling import SamplingParams
from tests.model.helpers import MODEL_FIELDS, count_packed_lookups
from tests.model.test_decode import _padded_prompts
from tests.tiny import tiny_model

from .conftest import LONG, greedy


@pytest.mark.parametrize("chunk", [1, 4])
def test_chunked_prefill_gives_the_tokens_of_one_forward(chunk):
    model = tiny_model(6, **MODEL_FIELDS)
    ids, mask = _padded_prompts(seed=7)
    whole = generate_ids(model, ids, 20, attention_mask=mask)
    assert torch.equal(generate_ids(model, ids, 20, attention_mask=mask, prefill_chunk=chunk), whole)


def test_run_with_chunked_prefill_gives_the_tokens_of_whole_prompts():
    from mpt.infer.batching import BatchEngine, Row, run

    model = tiny_model(8, **MODEL_FIELDS)

    def rows():
        return [Row(i, p, SamplingParams(8)) for i, p in enumerate([[5, 6, 7, 8, 9, 10, 11], [3, 4], [9] * 5])]
    whole, chunked = rows(), rows()
    list(run(BatchEngine(model, None, []), whole, max_rows=2))
    list(run(BatchEngine(model, None, []), chunked, max_rows=2, prefill_chunk=3))
    assert [r.out_ids for r in chunked] == [r.out_ids for r in whole] and all(len(r.out_ids) == 8 for r in whole)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_running_rows_step_between_the_chunks_of_a_joining_prompt(llm, chunk):
    engine = llm.engine()
    running = Row("running", llm.encode("Hello world"), greedy(200))
    engine.add([running])
    joining = Row("joining", llm.encode(LONG), greedy(12))
    prefill = engine.prefill([joining], chunk)
    during = 0
    while not prefill.advance():
        during += len([u for u in engine.step() if u.token_id is not None])
    # one decode step for the running row between every two chunks of the joining prompt
    assert during == math.ceil(len(joining.prompt_ids) / chunk) - 1
    engine.join(prefill)
    while any(r.key == "joining" for r in engine.rows):
        engine.step()
    assert llm.decode(joining.out_ids) == llm.generate(LONG, max_new_tokens=12).text
    while engine.rows:
        engine.step()
    assert llm.decode(running.out_ids) == llm.generate("Hello world", max_new_tokens=200).text


@pytest.mark.parametrize("chunk, compile", [(3, False), (64, False), (5, True)])
def test_a_joining_prompt_run_inside_the_decode_steps_gives_every_row_its_text_alone(llm, chunk, compile, monkeypatch):
    """The engine fuses each chunk of a joining prompt into a decode step (mpt.model.ragged): one forward. A
    compiling engine on CPU does too (that step eager, over the compiled steps' padded buffers), and every buffer
    it keeps stays an inference tensor, as its graphs were built on: one made outside inference mode (the merge
    of a join was) fails their guards, and the recompile stalls every stream for seconds. Compiled, its other
    steps run over the prepacked weights (``llm``'s) through mpt.model.packed_ops' ops."""
    counted = count_packed_lookups(monkeypatch)
    engine = llm.engine(compile)
    assert engine.fuses and (engine.decoder is not None) == compile
    running = Row("running", llm.encode("Hello world"), greedy(40))
    engine.add([running])
    joining = Row("joining", llm.encode(LONG), greedy(12))
    prefill, steps = engine.prefill([joining], chunk), 0
    while not prefill.finished:
        assert engine.step(prefill) and prefill.error is None
        steps += 1
    assert steps == math.ceil(len(joining.prompt_ids) / chunk)
    engine.join(prefill)
    assert all(t.is_inference() for t in (*engine.cache.keys, *engine.cache.values))
    forwards = 0  # decode steps after the join: every one compiled, when compiling (a last step may only retire)
    while engine.rows:
        engine.step()
        forwards += bool(engine.rows)
    assert llm.decode(joining.out_ids) == llm.generate(LONG, max_new_tokens=12).text
    assert llm.decode(running.out_ids) == llm.generate("Hello world", max_new_tokens=40).text
    layers = sum(getattr(m, "packed", None) is not None for m in llm.model.modules())
    assert layers == 4 * llm.model.config.n_layers + 1 and forwards > 10
    assert counted.lookups == (forwards * layers if compile else 0)


def test_a_joining_prompt_whose_chunk_fails_fails_alone(llm, caplog):
    """A chunk that cannot run (a token id past the vocabulary) fails the fused forward: the running rows' step
    runs again on its own, and the error is the joining prompt's."""
    engine = llm.engine()
    running = Row("running", llm.encode("Hello world"), greedy(20))
    engine.add([running])
    prefill = engine.prefill([Row("bad", [5, 6, llm.model.config.vocab_size + 10], greedy(4))])
    assert len(engine.step(prefill)) == 1
    assert isinstance(prefill.error, IndexError) and not prefill.finished
    assert "running them apart" in caplog.text
    while engine.rows:
        engine.step()
    assert llm.decode(running.out_ids) == llm.generate("Hello world", max_new_tokens=20).text


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_engine_on_cpu_decodes_over_a_cache_of_its_attention_dtype_as_the_plain_forward_does(dtype):
    """The engine keeps its cache in attention_dtype (float16 on CPU: float32, where half-precision SDPA is slow;
    bfloat16: itself on a CPU with native bfloat16), and its greedy tokens are the model's own forward's over such
    a cache."""
    from mpt import KVCache
    from mpt.infer.batching import BatchEngine
    from mpt.model.cache import attention_dtype

    model = tiny_model(8, **MODEL_FIELDS).to(dtype)
    prompt = [5, 6, 7, 8, 9]
    engine = BatchEngine(model, None, [])
    engine.add([Row(0, prompt, SamplingParams(6))])
    cache_dtype = attention_dtype(dtype, "cpu")
    assert engine.cache.keys[0].dtype == cache_dtype
    out = []
    while engine.rows:
        out += [u.token_id for u in engine.step()]
    cache, ids, want = KVCache(model.config.n_layers, dtype=cache_dtype), torch.tensor([prompt]), []
    with torch.inference_mode():
        for _ in range(6):
            logits = model(ids, cache=cache, use_cache=True).logits[0, -1]
            want.append(int(logits.argmax()))
            ids = torch.tensor([[want[-1]]])
    assert out == want
