"""Prometheus /metrics counts requests, tokens and steps."""

import httpx
import pytest

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
