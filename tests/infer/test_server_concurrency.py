"""Continuous batching under real concurrent clients; disconnects free their rows; the in-flight limit."""

import threading
import time

import httpx
import openai
import pytest

from .conftest import RunningServer

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

PROMPTS = ["Hello world", "The quick brown fox jumps", "MPT is", "A server batches", "Café 日本語", "numbers 12345",
           "lazy dog", "decode steps"]


def test_concurrent_clients_all_get_their_own_greedy_answer(server, llm):
    """Clients start at staggered times with different lengths: requests join the running batch mid-way."""
    lengths = [40, 25, 60, 10, 35, 50, 20, 45]
    results, errors = {}, []
    steps_before = server.state.scheduler.steps

    def client(i):
        try:
            time.sleep(0.02 * i)
            kw = dict(model="tiny", max_tokens=lengths[i], temperature=0)
            if i % 2:
                stream = server.client().completions.create(prompt=PROMPTS[i], stream=True, **kw)
                results[i] = "".join(c.choices[0].text for c in stream)
            else:
                results[i] = server.client().completions.create(prompt=PROMPTS[i], **kw).choices[0].text
        except Exception as err:  # reported below; a thread's exception would be lost
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 8
    for i in range(8):
        assert results[i] == llm.generate(PROMPTS[i], max_new_tokens=lengths[i]).text, f"client {i}"
    # Shared decode steps: far fewer than the 285 tokens one-at-a-time serving would need.
    assert server.state.scheduler.steps - steps_before < sum(lengths) * 0.6
    assert server.wait_idle()


def test_streaming_client_that_disconnects_frees_its_row(server):
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 2000, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30,
                      headers={"Authorization": "Bearer test-key"}) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        assert server.state.scheduler.running == 1
    # closing the connection mid-stream cancels the row long before its 2000 tokens
    assert server.wait_idle(timeout=10), server.state.health()


def test_waiting_client_that_disconnects_frees_its_row(server):
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 2000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=httpx.Timeout(10, read=0.5),
                   headers={"Authorization": "Bearer test-key"})
    assert server.wait_idle(timeout=10), server.state.health()
    assert server.client().completions.create(model="tiny", prompt="Hi", max_tokens=3).choices[0].text is not None


def test_requests_beyond_the_in_flight_limit_get_429(llm):
    s = RunningServer(llm, max_concurrent=1, context_length=4096)
    try:
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 4000, "stream": True, "temperature": 0}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()  # keep a reference: a collected iterator closes the stream
            next(lines)
            with pytest.raises(openai.RateLimitError) as err:
                s.client().completions.create(model="tiny", prompt="Hi", max_tokens=2)
            assert err.value.body["code"] == "rate_limit_exceeded"
        assert s.wait_idle(timeout=10)
        assert s.client().completions.create(model="tiny", prompt="Hi", max_tokens=2).choices  # served again
    finally:
        s.close()
