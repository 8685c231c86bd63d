"""`mpt serve` under concurrent load, measured with the official `openai` client.

Builds the mpt-tiny preset (random weights, seeded) with the GPT-NeoX tokenizer from ../shared (a
small BPE trained on the spot when it is absent), starts `mpt serve` on a loopback port, and sends
the same R greedy chat-free completion requests (distinct prompts, max_tokens each) with 1 client
(one request at a time), then 4 and 8 concurrent clients. Reports aggregate completion tokens/s,
p50/p95 request latency, and the 8-client / 1-client throughput ratio (target >= 4x: continuous
batching shares decode steps between requests). Prints a table, then one JSON line.

    python benchmarks/bench_serve.py [--requests 32] [--max-tokens 64] [--threads 1]
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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEOX = REPO.parent / "shared" / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
WORDS = ("river mountain data model token batch server stream light paper music garden window engine "
         "history number winter ocean forest signal").split()


def build_checkpoint(out: Path) -> str:
    import torch
    from transformers import PreTrainedTokenizerFast

    from mpt import MPTForCausalLM
    from mpt.model.hf import save_pretrained
    from mpt.presets import load_model_config

    if NEOX.is_file():
        tok, source = PreTrainedTokenizerFast(tokenizer_file=str(NEOX), eos_token="<|endoftext|>"), "GPT-NeoX-20B"
    else:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        t = Tokenizer(models.BPE())
        t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        t.train_from_iterator([" ".join(WORDS)] * 50, trainers.BpeTrainer(
            vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok, source = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>"), "a small BPE"
    tok.save_pretrained(out)
    torch.manual_seed(0)
    save_pretrained(MPTForCausalLM(load_model_config("mpt-tiny")), out)
    return source


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(client, prompts: list[str], max_tokens: int, clients: int) -> dict:
    """Send every prompt once, ``clients`` at a time; return throughput and latency."""
    def one(prompt: str) -> tuple[float, int]:
        start = time.perf_counter()
        r = client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens, temperature=0)
        return time.perf_counter() - start, r.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - start
    latencies = sorted(lat for lat, _ in results)
    tokens = sum(n for _, n in results)
    return {"clients": clients, "requests": len(prompts), "tokens": tokens, "seconds": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1), "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))], 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32, help="requests per run (default: 32)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default: 64)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="concurrency levels (default: 1 4 8)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in the server, 0 = torch's default (default: 1; on a busy 2-core machine "
                         "a 2-thread pool stalls whenever another process holds a core)")
    args = ap.parse_args()
    from openai import OpenAI

    with tempfile.TemporaryDirectory() as tmp:
        source = build_checkpoint(Path(tmp))
        port = free_port()
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
        server = subprocess.Popen([sys.executable, "-m", "mpt.cli", "serve", tmp, "--port", str(port),
                                   "--model-name", "bench", "--device", "cpu", "--max-batch-size", "16"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.models.list()
                    break
                except Exception:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"mpt serve did not start:\n{server.stderr.read()}") from None
                    time.sleep(0.5)
            prompts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 9)) for i in range(args.requests)]
            run_load(client, prompts[:4], 8, 4)  # warm-up
            rows = [run_load(client, prompts, args.max_tokens, c) for c in args.clients]
        finally:
            server.terminate()
            server.wait(timeout=30)
    base = rows[0]["tokens_per_s"]
    print(f"mpt serve, mpt-tiny preset (random weights), tokenizer {source}, {args.requests} requests x "
          f"max_tokens {args.max_tokens}, greedy; torch threads in the server: {args.threads or 'default'}")
    print(f"{'clients':>8} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'p50 s':>7} {'p95 s':>7} {'vs 1':>6}")
    for r in rows:
        print(f"{r['clients']:>8} {r['tokens']:>7} {r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f} {r['p50_s']:>7.3f} "
              f"{r['p95_s']:>7.3f} {r['tokens_per_s'] / base:>5.2f}x")
    ratio = round(rows[-1]["tokens_per_s"] / base, 2)
    print(json.dumps({"bench": "serve", "tokenizer": source, "max_tokens": args.max_tokens, "threads": args.threads,
                      "rows": rows, f"ratio_{rows[-1]['clients']}_vs_{rows[0]['clients']}": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
