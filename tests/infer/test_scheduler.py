"""The scheduler's chunked prefill: a long prompt joins a chunk at a time (chunks paced by the measured
rates), with decode steps of the running rows in between, and every row still gets exactly the text it
would get alone."""

import pytest

from mpt.infer.batching import Row

from .conftest import LONG, RunningServer, greedy
from .innocents import Innocents


def test_a_long_prompt_joins_in_chunks_beside_innocents(llm):
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
    s = RunningServer(llm, context_length=2048, prefill_chunk=8)
    expected = llm.generate(LONG, max_new_tokens=10).text
    try:
        with Innocents(s, max_tokens=600) as innocents:
            for stream in (False, True):
                r = s.client().completions.create(model="tiny", prompt=LONG, max_tokens=10, temperature=0,
                                                  stream=stream)
                text = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
                assert text == expected
            assert innocents.running()
        assert s.wait_idle()
    finally:
        s.close()


def test_a_client_that_leaves_while_its_prompt_is_prefilling_frees_its_row(llm):
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
    import httpx

    s = RunningServer(llm, context_length=8192, prefill_chunk=1)  # one token per turn: a long join
    try:
        body = {"model": "tiny", "prompt": LONG * 20, "max_tokens": 6000, "stream": True, "temperature": 0}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=30):
            pass  # gone before the prompt is in the cache
        # Requests are prefilled in order, so this one joins after the long prompt has: by its answer the
        # row of the client that left must be gone, not decoding its 6000 tokens for nobody.
        assert s.client().completions.create(model="tiny", prompt="Hi", max_tokens=2).choices
        assert s.state.scheduler.running == 0, s.state.health()
        assert s.wait_idle()
    finally:
        s.close()


def test_paced_chunks_take_about_prefill_stall_decode_steps(llm):
    """While rows decode, a chunk's size is the measured prefill rate x step time x prefill_stall, per joining
    row, within [MIN_CHUNK, prefill_chunk]; with no row decoding the whole prefill_chunk runs at once."""
    from mpt.infer.scheduler import Scheduler

    engine = llm.engine()
    s = Scheduler(engine, prefill_chunk=512, prefill_stall=1.5)
    assert s._chunk_tokens(rows=1) is None  # nobody decoding: prefill_chunk tokens
    engine.add([Row("running", llm.encode("Hello"), greedy(50))])
    assert s._chunk_tokens(rows=1) == Scheduler.MIN_CHUNK  # rates not measured yet: a small probe
    s._step_s, s._prefill_rate = 0.010, 8000.0  # 10 ms steps; 8,000 prompt positions x rows per second
    assert s._chunk_tokens(rows=1) == 120  # 8000 * 0.010 * 1.5
    assert s._chunk_tokens(rows=4) == 30  # four rows joining share the budget
    assert s._chunk_tokens(rows=100) == Scheduler.MIN_CHUNK
    s._prefill_rate = 1e6
    assert s._chunk_tokens(rows=1) == 512  # never past prefill_chunk
    s.prefill_stall = 0
    assert s._chunk_tokens(rows=1) is None  # pacing off: fixed prefill_chunk-token chunks


def test_a_long_prompt_joins_with_the_default_pacing_beside_innocents(llm):
    """The server's defaults (paced chunks): the joining prompt's answer is its text alone, streams go on."""
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
    s = RunningServer(llm, context_length=2048)
    expected = llm.generate(LONG * 3, max_new_tokens=10).text
    try:
        with Innocents(s, max_tokens=600) as innocents:
            r = s.client().completions.create(model="tiny", prompt=LONG * 3, max_tokens=10, temperature=0)
            assert r.choices[0].text == expected
            assert innocents.running()
        assert s.state.scheduler._prefill_rate is not None  # the join was paced (timed chunks), not run whole
        assert s.wait_idle()
    finally:
        s.close()
