"""`mpt serve` beside `transformers serve` under concurrent load, measured with the official `openai` client.

Builds the mpt-tiny preset (random weights, seeded) with the GPT-NeoX tokenizer from ../shared (a
small BPE trained on the spot when it is absent), saved once in Hugging Face format, and serves it on
loopback ports, each server with the same torch thread count: `mpt serve` and `transformers serve`
(transformers' own OpenAI-compatible server, the peer a user would reach for first). First, alone,
`transformers serve --continuous-batching` gets one warm-up round: its continuous batching crashed
on MPT in earlier runs; if it still fails, its error is recorded, else it is measured with the
others. Each server gets the same R greedy completion requests (distinct prompts, max_tokens each)
with 1 client (one request at a time), then 4 and 8 concurrent clients; servers and levels are
interleaved over --rounds rounds and each one's best round is kept, so a change in the (shared)
machine's load falls on all of them alike. Reports aggregate completion tokens/s, p50/p95 request
latency, our 8-client / 1-client ratio (target >= 4x) and ours / the peer's at 8 clients (target
>= 6x). Prints a table, then one JSON line.

    python benchmarks/bench_serve.py [--requests 32] [--max-tokens 64] [--threads 1] [--rounds 2] [--no-peer]
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
    # config.json names transformers' MptForCausalLM (save_pretrained writes it), which `transformers serve` needs
    return source


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(client, model: str, prompts: list[str], max_tokens: int, clients: int) -> dict:
    """Send every prompt once, ``clients`` at a time; return throughput and latency."""
    def one(prompt: str) -> tuple[float, int]:
        start = time.perf_counter()
        r = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
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


SERVERS = {
    "mpt serve": lambda ckpt, port: [sys.executable, "-m", "mpt.cli", "serve", ckpt, "--port", str(port),
                                     "--model-name", "bench", "--device", "cpu", "--max-batch-size", "16"],
    "transformers serve": lambda ckpt, port: [sys.executable, "-m", "transformers.cli.transformers", "serve", ckpt,
                                              "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                              "--dtype", "float32"],
}
SERVERS["transformers serve --continuous-batching"] = lambda ckpt, port: [
    *SERVERS["transformers serve"](ckpt, port), "--continuous-batching"]


class Running:
    """One server process on a loopback port, its output in a temporary file."""

    def __init__(self, name: str, ckpt: str, threads: int) -> None:
        from openai import OpenAI

        self.name, self.model = name, ("bench" if name == "mpt serve" else ckpt)
        port = free_port()
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(SERVERS[name](ckpt, port), env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     text=True)
        self.client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)

    def ready(self, prompts: list[str]) -> str | None:
        """Wait for the server and send a warm-up round; None when it works, else what went wrong."""
        deadline = time.monotonic() + 300
        while True:
            try:
                self.client.models.list()
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    return f"did not start: {self.errors()}"
                time.sleep(0.5)
        try:
            run_load(self.client, self.model, prompts[:4], 8, 4)
        except Exception as err:
            time.sleep(1)
            return f"{type(err).__name__}: {str(err)[:200]}; server log: {self.errors()}"
        return None

    def errors(self) -> str:
        """The log's last lines that name an error (else its last lines)."""
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().splitlines() if line.strip()]
        named = [line for line in lines if any(w in line for w in ("Error", "error", "died", "Exception", "failed"))]
        return " | ".join((named or lines)[-4:])[-800:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32, help="requests per run (default: 32)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default: 64)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="concurrency levels (default: 1 4 8)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds over every level and server, interleaved; the best of them is reported (default: 2)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in each server, 0 = torch's default (default: 1; on a busy 2-core machine "
                         "a 2-thread pool stalls whenever another process holds a core)")
    ap.add_argument("--no-peer", action="store_true", help="measure mpt serve only")
    args = ap.parse_args()

    failed: dict[str, str] = {}
    best: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = build_checkpoint(Path(tmp))
        prompts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 9)) for i in range(args.requests)]
        if not args.no_peer:  # alone first: if it works it is measured like the others, else its error is kept
            cb = Running("transformers serve --continuous-batching", tmp, args.threads)
            try:
                problem = cb.ready(prompts)
            finally:
                cb.stop()
            if problem:
                failed[cb.name] = problem
        names = ["mpt serve"] + ([] if args.no_peer else
                                 [n for n in SERVERS if n != "mpt serve" and n not in failed])
        servers = [Running(name, tmp, args.threads) for name in names]
        try:
            for srv in servers:
                problem = srv.ready(prompts)
                if problem:
                    failed[srv.name] = problem
            live = [srv for srv in servers if srv.name not in failed]
            # Servers and levels interleaved, so a change in the machine's load falls on all of them alike.
            for _ in range(args.rounds):
                for clients in args.clients:
                    for srv in live:
                        row = run_load(srv.client, srv.model, prompts, args.max_tokens, clients)
                        key = (srv.name, clients)
                        if key not in best or row["tokens_per_s"] > best[key]["tokens_per_s"]:
                            best[key] = row
        finally:
            for srv in servers:
                srv.stop()
    if "mpt serve" in failed:
        raise SystemExit(f"mpt serve failed: {failed['mpt serve']}")
    ours_at = {c: best[("mpt serve", c)]["tokens_per_s"] for c in args.clients}
    base, top = ours_at[args.clients[0]], args.clients[-1]
    print(f"mpt-tiny preset (random weights), tokenizer {source}, {args.requests} requests x max_tokens "
          f"{args.max_tokens}, greedy; torch threads in each server: {args.threads or 'default'}; best of "
          f"{args.rounds} interleaved rounds")
    print(f"{'server':<42} {'clients':>7} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'p50 s':>7} {'p95 s':>7} "
          f"{'ours/it':>8}")
    measured = sorted({name for name, _ in best}, key=lambda n: list(SERVERS).index(n))
    summary = {}
    for name in measured:
        for c in args.clients:
            r = best[(name, c)]
            print(f"{name:<42} {c:>7} {r['tokens']:>7} {r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f} "
                  f"{r['p50_s']:>7.3f} {r['p95_s']:>7.3f} {ours_at[c] / r['tokens_per_s']:>7.2f}x")
        if name != "mpt serve":
            summary[name] = round(ours_at[top] / best[(name, top)]["tokens_per_s"], 2)
    for name, problem in failed.items():
        print(f"{name:<42} failed: {problem}")
    ratio = round(ours_at[top] / base, 2)
    print(f"mpt serve: {top} clients / {args.clients[0]} = {ratio}x (target >= 4x); at {top} clients, mpt serve / "
          + (", ".join(f"{k}: {v}x" for k, v in summary.items()) or "no peer measured") + " (target >= 6x)")
    print(json.dumps({"bench": "serve", "tokenizer": source, "max_tokens": args.max_tokens, "threads": args.threads,
                      "rounds": args.rounds, "rows": [{"server": n, **r} for (n, _), r in best.items()],
                      "failed": failed, f"ratio_{top}_vs_{args.clients[0]}": ratio, f"ours_vs_peer_at_{top}": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
