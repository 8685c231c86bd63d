"""One bad request fails alone: each probe of the issue gets a 4xx with OpenAI's error body (or, for a
model fault in its own row, a 5xx of its own) while innocent requests stream beside it and all succeed."""

import json

import httpx
import openai
import pytest
import torch

from .conftest import RunningServer
from .innocents import Innocents

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

KEY = {"Authorization": "Bearer test-key"}
BASE = {"model": "tiny", "prompt": "Hi", "max_tokens": 4}
# (what is wrong, the request body (bytes or a dict), the status, the field the error must name)
PROBES = [
    ("seed beyond 64 bits", {**BASE, "seed": 2**70}, 400, "seed"),
    ("seed below -2**63", {**BASE, "seed": -2**64}, 400, "seed"),
    ("top_k beyond any vocabulary", {**BASE, "top_k": 2**40}, 400, "top_k"),
    ("n beyond 64 bits", {**BASE, "n": 2**70}, 400, "n"),
    ("max_tokens beyond 64 bits", {**BASE, "max_tokens": 2**70}, 400, "max_tokens"),
    ("temperature NaN", json.dumps({**BASE, "temperature": float("nan")}).encode(), 400, "temperature"),
    ("top_p Infinity", json.dumps({**BASE, "top_p": float("inf")}).encode(), 400, "top_p"),
    ("repetition_penalty 1e300", {**BASE, "repetition_penalty": 1e300}, 400, "repetition_penalty"),
    ("four stop strings of 100k characters", {**BASE, "stop": ["x" * 100_000] * 4}, 400, "stop"),
    ("five stop strings", {**BASE, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("a 1 MB prompt", {**BASE, "prompt": "word " * 200_000}, 400, "prompt"),
    ("1 MB of chat messages", {"model": "tiny", "messages": [{"role": "user", "content": "word " * 200_000}]},
     400, "messages"),
]


def send(url: str, body) -> httpx.Response:
    path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, timeout=60, headers={**KEY, "Content-Type": "application/json"})


def assert_openai_error(r: httpx.Response, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert error["message"] and error["type"], error
    if field is not None:
        assert error["param"] == field and field in error["message"], error
    return error


def test_each_probe_gets_a_4xx_naming_its_field_while_innocents_stream(server):
    with Innocents(server, key="test-key", max_tokens=600) as innocents:  # long enough for all the probes
        for what, body, status, field in PROBES:
            error = assert_openai_error(send(server.url, body), status, field)
            assert error["type"] == "invalid_request_error", what
        assert innocents.running()
    assert server.wait_idle()


def test_huge_bodies_are_refused_before_tokenizing(server):
    with Innocents(server, key="test-key", max_tokens=1500) as innocents:
        # 8 MB: under the body cap, far over the characters any context can hold; refused before tokenizing
        error = assert_openai_error(send(server.url, {**BASE, "prompt": "word " * 1_600_000}), 400, "prompt")
        assert error["code"] == "context_length_exceeded" and "characters" in error["message"]
        # 50 MB: over the body cap, refused before it is read
        body = b'{"model": "tiny", "prompt": "' + b"x" * 50_000_000 + b'"}'
        error = assert_openai_error(send(server.url, body), 413)
        assert error["code"] == "request_too_large" and "8388608" in error["message"]
        assert innocents.running()


def test_a_tiny_temperature_decodes_greedily_beside_innocents(server, llm):
    """temperature 1e-40 overflowed in sampling and the engine reset the whole batch (everyone got 500)."""
    with Innocents(server, key="test-key") as innocents:
        for stream in (False, True):
            r = server.client().completions.create(model="tiny", prompt="Café 日本語", max_tokens=8,
                                                   temperature=1e-40, seed=3, stream=stream)
            text = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
            assert text == llm.generate("Café 日本語", max_new_tokens=8).text
        assert innocents.running()


@pytest.fixture(scope="module")
def broken_server(checkpoint):
    """A model whose embedding of one token is NaN: any row with that token in its input has no finite score.

    The output layer is tied to the embeddings, so every row's logits also hold a NaN for that token: the
    innocents survive only if sampling treats NaN as "never" and a failing row ends alone.
    """
    from mpt import load

    llm = load(checkpoint, device="cpu")
    bad_ids = llm.encode("🙂")
    with torch.no_grad():
        llm.model.transformer.wte.weight[bad_ids[0]] = float("nan")
    s = RunningServer(llm, api_key="test-key", context_length=2048, max_batch_size=8)
    yield s
    s.close()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_row_with_nan_scores_fails_alone(broken_server, temperature):
    with Innocents(broken_server, key="test-key", max_tokens=400) as innocents:
        with pytest.raises(openai.InternalServerError) as err:
            broken_server.client().completions.create(model="tiny", prompt="🙂 hello", max_tokens=8,
                                                      temperature=temperature, seed=1)
        assert "no finite score" in err.value.body["message"]
        body = {"model": "tiny", "prompt": "🙂", "max_tokens": 8, "stream": True, "temperature": temperature}
        r = httpx.post(broken_server.url + "/v1/completions", json=body, headers=KEY, timeout=60)
        events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and "no finite score" in json.loads(events[-2])["error"]["message"]
        assert innocents.running()
    assert broken_server.wait_idle()
