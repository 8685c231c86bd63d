"""What one client's requests cost the others on a real `mpt serve` process (issue 22, items 1 and 2).

Builds the mpt-tiny preset (random weights, seeded; the GPT-NeoX tokenizer when ../shared has it, as
in bench_serve.py) and serves it with `mpt serve` in a child process (``--src DIR`` runs another
checkout's ``src``, e.g. an older commit's, to compare). Then:

1. Disconnects: a client asks for ``n=8, max_tokens=250`` and closes its socket after 0.3 s, not
   streaming and streaming; reported: decode steps and seconds until its rows left the batch. Then 8
   such non-streaming clients at once under ``--max-concurrent 8``: for how long an innocent request
   sent every 50 ms after they left got 429.
2. Scoring: one greedy stream runs; one ``echo: true, logprobs: 5, max_tokens: 0`` request with 8
   prompts of 2,000 token ids arrives. Reported: the stream's gaps between tokens before (median) and
   while the scoring request ran (p95, max), how long it took, and the server's RSS before and at its
   peak (sampled every 10 ms).

    python benchmarks/bench_serve_harm.py [--src /tmp/old/src] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import build_checkpoint, free_port  # noqa: E402


def start_server(ckpt: str, port: int, src: str | None, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if src:
        env["PYTHONPATH"] = src
    proc = subprocess.Popen([sys.executable, "-m", "mpt.cli", "serve", ckpt, "--port", str(port), "--device", "cpu",
                             "--model-name", "m", "--context-length", "4096", "--max-concurrent", "8",
                             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mpt serve did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)


def health(url: str) -> dict:
    import httpx

    return httpx.get(url + "/health", timeout=30).json()


def leave_after(port: int, body: dict, seconds: float, before_close=None) -> None:
    """POST ``body`` on a raw socket, then close it after ``seconds`` without reading the answer."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        time.sleep(seconds)
        if before_close is not None:
            before_close()


def wait_free(url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(url)
        if h["requests_in_flight"] == 0 and h["rows_running"] == 0 and h["rows_waiting"] == 0:
            return h
        time.sleep(0.01)
    raise RuntimeError("the server never went idle")


def disconnects(url: str, port: int) -> dict:
    import httpx

    out = {}
    for stream in (False, True):
        body = {"model": "m", "prompt": "Once upon a time", "n": 8, "max_tokens": 250, "temperature": 0,
                "stream": stream}
        steps, seen = health(url)["decode_steps"], []
        leave_after(port, body, 0.3, lambda seen=seen: seen.append(health(url)["decode_steps"]))
        closed, at_close = time.perf_counter(), seen[0]
        after = wait_free(url)
        out["streaming" if stream else "non-streaming"] = {
            "steps_before_close": at_close - steps, "steps_after_close": after["decode_steps"] - at_close,
            "seconds_after_close": round(time.perf_counter() - closed, 3)}
    body = {"model": "m", "prompt": "Once upon a time", "n": 8, "max_tokens": 250, "temperature": 0}
    clients = [threading.Thread(target=leave_after, args=(port, body, 0.3)) for _ in range(8)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    closed, refused = time.perf_counter(), 0
    while True:
        r = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 2}, timeout=120)
        if r.status_code != 429:
            break
        refused += 1
        time.sleep(0.05)
    out["8 clients gone: innocent got 429 for (s)"] = round(time.perf_counter() - closed, 3)
    out["8 clients gone: 429 answers"] = refused
    wait_free(url)
    return out


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def scoring(url: str, pid: int, ids: list[int]) -> dict:
    import httpx

    arrivals, stop = [], threading.Event()

    def stream() -> None:
        body = {"model": "m", "prompt": "Stream:", "max_tokens": 4000, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.perf_counter())
                if stop.is_set():
                    return

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    time.sleep(3)
    base, peak, sampling = rss(pid), [0], threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    prompts = [(ids * 2000)[i:i + 2000] for i in range(8)]
    start = time.perf_counter()
    r = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": prompts, "echo": True, "logprobs": 5,
                                                  "max_tokens": 0}, timeout=600)
    end = time.perf_counter()
    sampling.set()
    sampler.join()
    assert r.status_code == 200, r.text[:300]
    time.sleep(0.3)
    stop.set()
    t.join(timeout=60)
    def gaps(a: float, b: float) -> list[float]:
        return sorted((y - x) * 1000 for x, y in zip(arrivals, arrivals[1:], strict=False) if a <= y <= b)

    before, during = gaps(start - 2, start), gaps(start, end + 0.05)
    return {"scoring_s": round(end - start, 2), "gap_before_p50_ms": round(statistics.median(before), 1),
            "gap_during_p95_ms": round(during[int(0.95 * (len(during) - 1))], 1) if during else None,
            "gap_during_max_ms": round(during[-1], 1) if during else None, "tokens_during": len(during),
            "rss_before_mb": round(base / 2**20), "rss_peak_mb": round(max(peak[0], base) / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=None, help="run the server from this src folder (PYTHONPATH)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = build_checkpoint(Path(tmp))
        port = free_port()
        proc = start_server(tmp, port, args.src, args.threads)
        url = f"http://127.0.0.1:{port}"
        try:
            from transformers import PreTrainedTokenizerFast

            ids = PreTrainedTokenizerFast.from_pretrained(tmp)(" river mountain data model token batch")["input_ids"]
            result = {"src": args.src or "this checkout", "tokenizer": source, "disconnects": disconnects(url, port),
                      "scoring": scoring(url, proc.pid, ids)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
