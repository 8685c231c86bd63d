"""Compiled decode against our eager decode on the CPU: batch 1, greedy, same model, same run.

Both go through ``generate_ids`` (the batching engine): ``compile=False`` runs each step eagerly
over the growing cache, ``compile=True`` the static-cache step compiled by inductor
(:mod:`mpt.model.decode`). The compile happens in an untimed warm-up (reported separately: on CPU it
is why compiling is opt-in); the timed runs are interleaved (eager, compiled, eager, ...) so both see
the same machine load, and the median counts. The tokens must be identical.

Models (random weights, fp32): ``tiny`` (d_model 128, 4 layers, vocab 4,096: a step is mostly per-op
overhead, which compiling removes), ``small`` is bench_model.py's (d_model 256, 4 layers, vocab 50,432:
the vocabulary projection dominates a step), ``body`` a model whose blocks outweigh its vocabulary
(d_model 768, 6 layers, vocab 8,192). At batch 1 on a CPU the larger two are bound by reading their
weights from memory every step, which no compiler changes; on a GPU the overhead share is far larger
(a 7B step is hundreds of kernel launches), which CUDA graphs remove.

    python benchmarks/bench_decode.py [--threads 2] [--new-tokens 128] [--repeats 3] [--models tiny,small,body]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mpt import MPTConfig, MPTForCausalLM
from mpt.infer import generate_ids

MODELS = {"tiny": dict(d_model=128, n_heads=4, n_layers=4, vocab_size=4096),
          "small": dict(d_model=256, n_heads=4, n_layers=4, vocab_size=50432),
          "body": dict(d_model=768, n_heads=12, n_layers=6, vocab_size=8192)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", default="32,512", help="prompt lengths")
    parser.add_argument("--models", default="tiny,small,body")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    new, results = args.new_tokens, []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = MPTForCausalLM(MPTConfig(**MODELS[name], max_seq_len=2048)).eval()
        for n in (int(x) for x in args.prompts.split(",")):
            prompt = torch.randint(0, MODELS[name]["vocab_size"], (1, n), generator=torch.Generator().manual_seed(n))
            start = time.perf_counter()
            compiled_out = generate_ids(model, prompt, new, compile=True)  # compiles this shape
            first = time.perf_counter() - start
            eager_out = generate_ids(model, prompt, new, compile=False)
            times = {"eager": [], "compiled": []}
            for _ in range(args.repeats):
                for label, flag in (("eager", False), ("compiled", True)):
                    start = time.perf_counter()
                    generate_ids(model, prompt, new, compile=flag)
                    times[label].append(time.perf_counter() - start)
            t_eager, t_comp = statistics.median(times["eager"]), statistics.median(times["compiled"])
            results.append(r := {"model": name, "prompt": n, "new_tokens": new, "eager_tok_s": new / t_eager,
                            "compiled_tok_s": new / t_comp, "ratio": t_eager / t_comp,
                            "first_compiled_run_s": first, "identical_tokens": bool(torch.equal(compiled_out,
                                                                                                eager_out))})
            print(f"[{name} prompt {n}: eager {r['eager_tok_s']:.1f} tok/s, compiled {r['compiled_tok_s']:.1f} tok/s]",
                  flush=True)
    print(f"CPU, {args.threads} threads, batch 1, {new} new tokens, torch {torch.__version__}")
    print(f"{'model':6} {'prompt':>6} {'eager tok/s':>12} {'compiled tok/s':>15} {'ratio':>6} {'compile s':>10}  same")
    for r in results:
        print(f"{r['model']:6} {r['prompt']:>6} {r['eager_tok_s']:>12.1f} {r['compiled_tok_s']:>15.1f} "
              f"{r['ratio']:>5.2f}x {r['first_compiled_run_s']:>10.1f}  {'yes' if r['identical_tokens'] else 'NO'}")
    print(json.dumps({"bench": "decode", "device": "cpu", "threads": args.threads, "torch": torch.__version__,
                      "results": results}))


if __name__ == "__main__":
    main()
