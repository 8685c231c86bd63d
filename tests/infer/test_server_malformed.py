"""A hypothesis sweep of a few hundred malformed (and some valid) requests: never a 5xx, never a hang.

The probes of issue 12 are among them (seeds past 64 bits, a temperature of 1e-40, NaN and infinite
numbers, long and many stop strings, long prompts, foreign content types), and a chorus of innocent
clients sends valid requests all through the sweep: every one of theirs must get its right answer.
"""

import json
import threading

import httpx
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from .conftest import RunningServer  # noqa: E402

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 12),
                    st.floats(allow_nan=False, allow_infinity=False), st.floats(), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)
message = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool"]), values),
                                 "content": st.one_of(st.text(max_size=30), values)})
FIELDS = {
    "model": st.one_of(st.just("tiny"), values),
    "prompt": st.one_of(st.text(max_size=40), st.lists(st.text(max_size=10), max_size=3), values,
                        st.sampled_from(["word " * 40_000, "🙂" * 70_000])),
    "messages": st.one_of(st.lists(message, max_size=3), values),
    "max_tokens": st.one_of(st.integers(-2, 10), st.integers(-2**40, 2**40), values),
    "temperature": st.one_of(st.floats(-1, 3), st.floats(0, 1e-30), st.just(1e-40), st.floats(), values),
    "top_p": st.one_of(st.floats(-0.5, 1.5), values),
    "top_k": st.one_of(st.integers(-5, 500), st.integers(2**31 - 2, 2**65), values),
    "n": st.one_of(st.integers(-1, 6), st.integers(2**62, 2**70), values),
    "stream": st.one_of(st.booleans(), values),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=6), values,
                      st.lists(st.sampled_from(["x" * 256, "y" * 257, "ab" * 50_000]), max_size=5)),
    "seed": st.one_of(st.integers(-2**63, 2**63), st.integers(-2**80, 2**80), st.sampled_from([2**64 - 1, 2**64]),
                      values),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), values),
    "repetition_penalty": st.one_of(st.floats(-1, 3), st.floats(), values),
    "logprobs": values,
    "logit_bias": st.one_of(st.dictionaries(st.one_of(st.integers(-5, 2**40).map(str), st.text(max_size=4)),
                                            st.one_of(st.floats(-150, 150), st.floats()), max_size=4), values),
}
bodies = st.one_of(
    st.binary(max_size=64),  # not JSON at all
    values.map(lambda v: json.dumps(v).encode()),  # JSON, but not an object
    st.fixed_dictionaries({}, optional=FIELDS).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries({"model": st.just("tiny")}, optional={k: v for k, v in FIELDS.items() if k != "model"}).map(
        lambda d: json.dumps(d, allow_nan=True).encode()),
)
targets = st.one_of(st.sampled_from([("POST", "/v1/completions"), ("POST", "/v1/chat/completions")] * 4
                                    + [("GET", "/v1/completions"), ("PUT", "/v1/models"), ("POST", "/v1/nope"),
                                       ("DELETE", "/health")]))
auth = st.sampled_from(["Bearer k", "Bearer k", "Bearer k", "", "Bearer wrong", "Basic k", "bearer k", "Bearer"])
content_types = st.sampled_from(["application/json"] * 4 + ["text/plain", "application/x-www-form-urlencoded", "",
                                                            "application/json; charset=utf-8"])
CHORUS = ["Hello world", "MPT is", "The quick brown fox"]


@pytest.fixture(scope="module")
def small_server(llm):
    """A server whose limits keep any valid request short (at most 8 new tokens)."""
    s = RunningServer(llm, api_key="k", context_length=64, max_tokens=8, max_n=3)
    yield s
    s.close()


class Chorus:
    """Innocent clients asking valid greedy questions over and over while the sweep runs."""

    def __init__(self, server, llm):
        self.client = server.client(key="k")
        self.expected = {p: llm.generate(p, max_new_tokens=8).text for p in CHORUS}
        self.answers, self.failures = 0, []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._sing, args=(p,), daemon=True) for p in CHORUS]
        for t in self.threads:
            t.start()

    def _sing(self, prompt):
        while not self.stop.is_set():
            try:
                r = self.client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
                if r.choices[0].text != self.expected[prompt]:
                    self.failures.append((prompt, r.choices[0].text))
                self.answers += 1
            except Exception as err:  # reported by test_still_serving_after_the_sweep
                self.failures.append((prompt, repr(err)))

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


@pytest.fixture(scope="module")
def chorus(small_server, llm):
    c = Chorus(small_server, llm)
    yield c
    c.finish()


def probe(path: str = "/v1/completions", **fields) -> dict:
    """One of issue 12's probes as an otherwise valid request (random ones rarely are valid enough to reach it)."""
    base = {"model": "tiny", "max_tokens": 4}
    base.update({"messages": [{"role": "user", "content": "Hi"}]} if "chat" in path else {"prompt": "Hi"})
    return dict(target=("POST", path), body=json.dumps({**base, **fields}).encode(), key="Bearer k",
                content_type="application/json")


PROBES = [probe(seed=2**70), probe(seed=2**64), probe("/v1/chat/completions", seed=-2**64),
          probe(temperature=1e-40), probe("/v1/chat/completions", temperature=1e-40, n=3),
          probe(temperature=1e-40, top_p=0.5, top_k=3), probe(top_k=2**40), probe(n=2**70),
          probe(stop=["x" * 100_000] * 4), probe(stop=["a"] * 5), probe(repetition_penalty=1e300),
          probe(prompt="word " * 40_000), probe(prompt=[10**12]), probe(prompt=[[1, 2], []]),
          probe(max_tokens=0), probe(max_tokens=0, echo=True, logprobs=2), probe(logprobs=25),
          probe(echo=True, stream=True)]


def with_probes(test):
    for fields in PROBES:
        test = example(**fields)(test)
    return test


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@with_probes
@given(target=targets, body=bodies, key=auth, content_type=content_types)
def test_no_request_breaks_the_server(small_server, chorus, target, body, key, content_type):
    method, path = target
    headers = {"Content-Type": content_type} if content_type else {}
    if key:
        headers["Authorization"] = key
    r = httpx.request(method, small_server.url + path, content=body, headers=headers, timeout=20)
    text = r.read().decode()
    assert r.status_code < 500, text
    if r.status_code >= 400:
        error = json.loads(text)["error"]
        assert isinstance(error["message"], str) and error["message"] and error["type"]
    elif "text/event-stream" in r.headers.get("content-type", ""):
        assert text.rstrip().endswith("data: [DONE]")


def test_still_serving_after_the_sweep(small_server, chorus):
    chorus.finish()
    assert not chorus.failures and chorus.answers >= 30, (chorus.answers, chorus.failures[:5])
    assert small_server.wait_idle()
    r = small_server.client(key="k").chat.completions.create(model="tiny", messages=[{"role": "user",
                                                                                     "content": "Hi"}])
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 8
