"""Decode throughput while requests keep joining the batch: a joining prompt's chunks inside the decode step's
forward (the default, :mod:`mpt.model.ragged`) against a forward of their own (``engine.fuse_joins = False``).

Issue 21's model (peers.build_issue_model: d_model 512, GPT-NeoX tokenizer; needs ../shared), the server's
Scheduler in-process without HTTP, C clients that each send their next chat request as soon as one ends; the
requests' lengths differ (32-95 tokens), so rows end at different steps and every join meets running rows.
Rounds alternate the two modes; the model is loaded, and its engine built (compiled: ``--compile on``, the server's
default), as `mpt serve` does. Prints a table, then one JSON line.

    python benchmarks/bench_joins.py [--dtype fp32 bf16] [--clients 8] [--requests 32] [--rounds 3] [--compile off]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import peers

WORDS = "river mountain data model token batch server stream light paper music garden window engine history".split()


def measure(llm, prompts: list[str], clients: int, fuse: bool, compile: bool = False) -> float:
    """Generated tokens per second over all ``prompts``, ``clients`` in flight at once."""
    from mpt.infer.sampling import SamplingParams
    from mpt.infer.scheduler import Scheduler

    engine = llm.engine(compile)
    engine.fuse_joins = fuse
    scheduler = Scheduler(engine, 16, 512, 1.0).start()
    slots, finished, lock = threading.Semaphore(clients), threading.Event(), threading.Lock()
    count = {"tokens": 0, "done": 0}

    def on_update(u) -> None:
        with lock:
            count["tokens"] += u.token_id is not None
            if u.finish_reason:
                count["done"] += 1
                slots.release()
                if count["done"] == len(prompts):
                    finished.set()
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        slots.acquire()
        row = llm.requests([prompt], SamplingParams(max_new_tokens=32 + (i * 13) % 64, logit_bias={0: -100.0}))[0]
        row.key = i
        scheduler.submit([row], on_update)
    finished.wait()
    seconds = time.perf_counter() - start
    scheduler.stop()
    return count["tokens"] / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", choices=["on", "off"], default="on",
                    help="compiled decode steps, as mpt serve's default (--compile auto) runs them (default: on)")
    args = ap.parse_args()
    if not peers.NEOX.is_file():
        sys.exit(f"needs the GPT-NeoX tokenizer at {peers.NEOX} (../shared)")
    import mpt
    from mpt.infer.chat import Message, render
    from mpt.infer.server import on_a_passing_thread

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        on_a_passing_thread(partial(peers.build_issue_model, Path(tmp)))
        for dtype in args.dtype:
            # as `mpt serve` loads it: the decode thread must be the only one with OpenMP threads (server.py)
            llm = on_a_passing_thread(partial(mpt.load, tmp, dtype={"fp32": "float32", "bf16": "bfloat16"}[dtype]))
            prompts = [render([Message("user", " ".join(WORDS[i % 7:] + WORDS[:i % 5]))], llm.tokenizer)
                       for i in range(args.requests)]
            compile = args.compile == "on"
            measure(llm, prompts[:args.clients], args.clients, True, compile)  # warm-up (compiles every row bucket)
            runs = {True: [], False: []}
            for _ in range(args.rounds):
                for fuse in (True, False):
                    runs[fuse].append(measure(llm, prompts, args.clients, fuse, compile))
            rows.append({"dtype": dtype, "fused_tok_s": [round(x, 1) for x in runs[True]],
                         "apart_tok_s": [round(x, 1) for x in runs[False]],
                         "ratio_of_medians": round(statistics.median(runs[True]) / statistics.median(runs[False]), 2)})
    print(f"{args.clients} clients, {args.requests} chat requests of 32-95 tokens, {args.rounds} alternating rounds, "
          f"compile {args.compile}")
    print(f"{'dtype':>5} {'fused tok/s (each round)':>30} {'apart tok/s (each round)':>30} {'fused/apart':>12}")
    for r in rows:
        print(f"{r['dtype']:>5} {' '.join(map(str, r['fused_tok_s'])):>30} {' '.join(map(str, r['apart_tok_s'])):>30} "
              f"{r['ratio_of_medians']:>11}x")
    print(json.dumps({"bench": "joins", "clients": args.clients, "requests": args.requests, "compile": args.compile,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
