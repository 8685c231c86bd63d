"""Operating the server: Prometheus /metrics, SIGTERM draining a real `serve` process, the exposure warning."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from mpt.infer.server import ServeConfig

from .conftest import free_port

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
KEY = {"Authorization": "Bearer test-key"}


def scrape(server) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(server.url + "/metrics", headers=KEY)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_requests_tokens_and_steps(server):
    assert httpx.get(server.url + "/metrics").status_code == 401  # behind the key, like the API
    before = scrape(server)
    ok = (("route", "/v1/completions"), ("status", "200"))
    for stream in (False, True):
        r = server.client().completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0,
                                               stream=stream)
        assert list(r) if stream else r.choices
    httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "seed": 2**70}, headers=KEY)
    after = scrape(server)
    assert after[("mpt_requests_total", ok)] - before.get(("mpt_requests_total", ok), 0) == 2
    bad = (("route", "/v1/completions"), ("status", "400"))
    assert after[("mpt_requests_total", bad)] - before.get(("mpt_requests_total", bad), 0) == 1
    assert after[("mpt_generation_tokens_total", ())] - before[("mpt_generation_tokens_total", ())] == 10
    assert after[("mpt_prompt_tokens_total", ())] > before[("mpt_prompt_tokens_total", ())]
    assert after[("mpt_batch_size_count", ())] - before[("mpt_batch_size_count", ())] >= 10
    assert after[("mpt_request_seconds_count", ())] - before[("mpt_request_seconds_count", ())] == 2
    assert after[("mpt_time_to_first_token_seconds_count", ())] > before[("mpt_time_to_first_token_seconds_count", ())]
    assert ("mpt_requests_in_flight", ()) in after and ("mpt_rows_waiting", ()) in after


def stream(port: int, max_tokens: int, events: list, started: threading.Event) -> None:
    # "MPT is": the tiny model writes no end-of-text for thousands of greedy tokens, so only the cut ends it
    body = {"model": "tiny", "prompt": "MPT is", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    try:
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    started.set()
    except Exception as err:  # checked by the test
        events.append(repr(err))
    finally:
        started.set()


def test_sigterm_finishes_short_rows_and_cuts_long_ones_with_a_final_event(checkpoint):
    port = free_port()
    code = ("import sys; from mpt.infer.server import ServeConfig, serve; serve(ServeConfig(model=sys.argv[1], "
            "port=int(sys.argv[2]), model_name='tiny', device='cpu', context_length=8192, shutdown_grace=2))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(checkpoint), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        runs = {"short": 10, "long": 6000}
        events = {name: [] for name in runs}
        started = {name: threading.Event() for name in runs}
        threads = [threading.Thread(target=stream, args=(port, n, events[name], started[name]))
                   for name, n in runs.items()]
        for t in threads:
            t.start()
        for e in started.values():
            assert e.wait(60)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    short = [json.loads(e) for e in events["short"][:-1]]
    assert events["short"][-1] == "[DONE]" and short[-1]["choices"][0]["finish_reason"] == "length", events["short"]
    long = events["long"]
    assert long[-1] == "[DONE]", long[-3:]
    assert json.loads(long[-2])["error"]["code"] == "server_shutting_down", long[-3:]
    assert not any('"error"' in e for e in long[:-2])
    assert "Traceback" not in out, out


def test_serving_beyond_loopback_without_a_key_warns(monkeypatch):
    monkeypatch.delenv("MPT_API_KEY", raising=False)
    assert "without an API key" in ServeConfig(host="0.0.0.0").validate().exposure_warning()
    assert ServeConfig(host="0.0.0.0", api_key="k").validate().exposure_warning() is None
    assert ServeConfig(host="127.0.0.1").validate().exposure_warning() is None
