"""Prometheus metrics for `mpt serve` (``GET /metrics``), with the optional ``prometheus-client``.

Each app gets its own registry, not the library's global one: two servers in one process (tests,
notebooks) must not share or clash over counters.
"""

from __future__ import annotations

from collections.abc import Callable

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, in_flight: Callable[[], int], running: Callable[[], int], waiting: Callable[[], int]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("mpt_requests", "HTTP requests answered, by route and status", ["route", "status"],
                                registry=r)
        self.prompt_tokens = Counter("mpt_prompt_tokens", "prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter("mpt_generation_tokens", "tokens generated", registry=r)
        Gauge("mpt_requests_in_flight", "requests admitted and not finished", registry=r).set_function(in_flight)
        Gauge("mpt_rows_running", "sequences in the decode batch", registry=r).set_function(running)
        Gauge("mpt_rows_waiting", "sequences queued for a batch slot", registry=r).set_function(waiting)
        self.batch_size = Histogram("mpt_batch_size", "sequences per decode step", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.request_seconds = Histogram("mpt_request_seconds", "time from admission to the last token",
                                         registry=r, buckets=LATENCY_BUCKETS)
        self.first_token_seconds = Histogram("mpt_time_to_first_token_seconds",
                                             "time from admission to the first token", registry=r,
                                             buckets=LATENCY_BUCKETS)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def create_metrics(**sources: Callable[[], int]) -> Metrics | None:
    """Metrics, or None when prometheus-client is not installed (``/metrics`` then says how to get it)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return None
    return Metrics(**sources)
