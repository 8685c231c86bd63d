"""Inter-token latency of running streams while a long prompt joins `mpt serve` (chunked prefill).

Builds the mpt-tiny preset (random weights, seeded; tokenizer as in bench_serve.py), serves it
in-process with uvicorn on a loopback port, starts C greedy streaming clients, and once they are
all streaming sends one request with a P-token prompt. Reports the gaps between consecutive
tokens the streaming clients received before the long prompt arrived and while it was being
prefilled (until its answer), p50 / p95 / max: with whole-prompt prefill (--prefill-chunk 0 --prefill-stall 0), with
fixed chunks of --chunk tokens (--prefill-stall 0), and with the server's defaults (chunks paced by
measured step times). Target (issue 12): p95 during within 2x of before. Prints a table, then JSON.

    python benchmarks/bench_serve_join.py [--prompt-tokens 2000] [--clients 4] [--chunk 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import build_tiny  # noqa: E402
from peers import free_port  # noqa: E402


def stream(url: str, prompt: str, max_tokens: int, arrivals: list[float], started: threading.Event,
           stop: threading.Event) -> None:
    import httpx

    body = {"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.perf_counter())
                started.set()
            if stop.is_set():
                return


def gaps(arrivals: list[float], start: float, end: float) -> list[float]:
    """Gaps (ms) between consecutive tokens whose second token arrived within [start, end]."""
    return [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False) if start <= b <= end]


def measure(llm, label: str, chunk: int, stall: float, args) -> dict:
    import httpx

    from mpt.infer.server import ServeConfig, create_app, uvicorn_server

    port = free_port()
    app = create_app(llm, ServeConfig(model="m", model_name="m", context_length=args.prompt_tokens + 4096,
                                      prefill_chunk=chunk, prefill_stall=stall,
                                      max_batch_size=args.clients + 1))
    server = uvicorn_server(app, "127.0.0.1", port, "warning")
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    long_ids = (llm.encode(" river mountain data model token batch") * args.prompt_tokens)[:args.prompt_tokens]
    arrivals = [[] for _ in range(args.clients)]
    started = [threading.Event() for _ in range(args.clients)]
    stop = threading.Event()
    threads = [threading.Thread(target=stream, args=(url, f"Stream {i}:", 4000, arrivals[i], started[i],
                                                     stop), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    for e in started:
        e.wait(120)
    time.sleep(args.warmup)
    join_start = time.perf_counter()
    r = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": long_ids, "max_tokens": 1, "echo": False,
                                                  "temperature": 0}, timeout=600)
    join_end = time.perf_counter()
    assert r.status_code == 200, r.text
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    server.should_exit = True
    serving.join(timeout=60)  # the decode thread stops with the app; exiting under it aborts the interpreter
    before = [g for a in arrivals for g in gaps(a, join_start - args.warmup / 2, join_start)]
    during = [g for a in arrivals for g in gaps(a, join_start, join_end)]

    def stats(xs):
        xs = sorted(xs)
        return {"n": len(xs), "p50": statistics.median(xs), "p95": xs[int(0.95 * (len(xs) - 1))], "max": xs[-1]}

    return {"prefill": label, "chunk": chunk, "stall": stall, "join_ms": (join_end - join_start) * 1000, "before": stats(before),
            "during": stats(during)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-tokens", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    import torch

    from mpt import load

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        # as `mpt serve` does: the server's decode thread must be the only one with OpenMP threads (server.py)
        from mpt.infer.server import on_a_passing_thread

        llm = on_a_passing_thread(lambda: (build_tiny(Path(tmp)), load(tmp, device=args.device))[1])
        from mpt.infer.serve_config import ServeConfig

        default = ServeConfig()
        rows = [measure(llm, "whole prompt", 0, 0.0, args),
                measure(llm, f"chunk {args.chunk}", args.chunk, 0.0, args),
                measure(llm, "paced (default)", default.prefill_chunk, default.prefill_stall, args)]
    print(f"{args.clients} streaming clients, one {args.prompt_tokens}-token prompt joins; gaps between tokens (ms)")
    print(f"{'prefill':>16} {'join ms':>8} {'before p50':>10} {'p95':>7} {'during p50':>10} {'p95':>7} {'max':>7} "
          f"{'p95 ratio':>9}")
    for r in rows:
        b, d = r["before"], r["during"]
        print(f"{r['prefill']:>16} {r['join_ms']:8.0f} {b['p50']:10.1f} {b['p95']:7.1f} {d['p50']:10.1f} {d['p95']:7.1f} "
              f"{d['max']:7.1f} {d['p95'] / b['p95']:9.2f}")
    print(json.dumps({"device": str(llm.device), "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
