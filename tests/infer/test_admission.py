"""Admission: a full server answers 429 before it tokenizes a prompt."""

import httpx
import pytest

from .conftest import RunningServer
from .innocents import Innocents

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")


def test_capacity_is_checked_before_the_prompt_is_tokenized(llm):
    """A full server answers 429 to a prompt too long for the context: it never tokenized it to find out."""
    s = RunningServer(llm, max_concurrent=1, context_length=2048)
    try:
        # Under the character limit (so only tokenizing can tell), over the context in tokens.
        long_prompt = {"model": "tiny", "prompt": "Hello world! " * 1000, "max_tokens": 4}
        with Innocents(s, n=1, max_tokens=300) as innocents:
            r = httpx.post(s.url + "/v1/completions", json=long_prompt, timeout=60)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", r.text
            assert innocents.running()
        assert s.wait_idle()
        r = httpx.post(s.url + "/v1/completions", json=long_prompt, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        assert "tokens; the prompt has" in r.json()["error"]["message"]
    finally:
        s.close()
