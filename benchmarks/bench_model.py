"""Our MPT against transformers' MptForCausalLM on the same weights, in the same run.

CPU (always, 2 threads unless --threads):
  * training step (forward + backward + AdamW step), d_model 256, 4 layers, seq 256, batch 8,
    fp32 and bf16 autocast: tokens/s for each, and the ratio;
  * greedy generation, batch 1, 128 new tokens, prompts of 32 and 512 tokens: tokens/s for each,
    the ratio, and whether the generated tokens are identical (required).
GPU (when CUDA is available): see benchmarks/bench_gpu.py.

Prints a table, then one JSON line with every number.

    python benchmarks/bench_model.py [--threads 2] [--steps 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from transformers import MptForCausalLM

from mpt import MPTConfig
from mpt import MPTForCausalLM as OurMPT
from mpt.infer import generate_ids


def build_pair(max_seq_len: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = MPTConfig(d_model=256, n_heads=4, n_layers=4, expansion_ratio=4, max_seq_len=max_seq_len,
                    vocab_size=50432)
    ours = OurMPT(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        theirs = MptForCausalLM.from_pretrained(tmp)
    return ours, theirs


def time_train_pair(models, ids: torch.Tensor, steps: int, bf16: bool) -> list[float]:
    """Median seconds per optimizer step of each model, their steps interleaved (A B A B ...) so that both
    see the same machine load; one warm-up step each."""
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]
    times: list[list[float]] = [[] for _ in models]
    for step in range(steps + 1):
        for i, (model, opt) in enumerate(zip(models, opts, strict=True)):
            model.train()
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step:
                times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def time_generate_pair(fns, repeats: int):
    """Median seconds of each generation function, runs interleaved, after one warm-up run each."""
    times: list[list[float]] = [[] for _ in fns]
    outs = [None] * len(fns)
    for r in range(repeats + 1):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = fn()
            if r:
                times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per configuration")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per prompt length")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    rows = []

    batch, seq = 8, 256
    for bf16 in (False, True):
        ours, theirs = build_pair(max_seq_len=seq)
        ids = torch.randint(0, 50277, (batch, seq), generator=torch.Generator().manual_seed(0))
        t_theirs, t_ours = time_train_pair([theirs, ours], ids, args.steps, bf16)
        name = f"train step {'bf16' if bf16 else 'fp32'} (b{batch} s{seq})"
        tok = batch * seq
        results[name] = {"ours_tok_s": tok / t_ours, "transformers_tok_s": tok / t_theirs,
                         "ratio": t_theirs / t_ours}
        rows.append((name, f"{tok / t_ours:,.0f}", f"{tok / t_theirs:,.0f}", f"{t_theirs / t_ours:.2f}x", "-"))

    ours, theirs = build_pair(max_seq_len=1024)
    ours.eval()
    theirs.eval()
    new = 128
    for prompt_len in (32, 512):
        prompt = torch.randint(0, 50277, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))

        def run_theirs(prompt=prompt):
            with torch.inference_mode():
                return theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                       min_new_tokens=new, do_sample=False, pad_token_id=0)

        (t_theirs, t_ours), (out_theirs, out_ours) = time_generate_pair(
            [run_theirs, lambda p=prompt: generate_ids(ours, p, max_new_tokens=new)], args.repeats)
        same = bool(torch.equal(out_ours, out_theirs))
        name = f"greedy generate (prompt {prompt_len}, {new} new)"
        results[name] = {"ours_tok_s": new / t_ours, "transformers_tok_s": new / t_theirs,
                         "ratio": t_theirs / t_ours, "identical_tokens": same}
        rows.append((name, f"{new / t_ours:,.0f}", f"{new / t_theirs:,.0f}", f"{t_theirs / t_ours:.2f}x",
                     "yes" if same else "NO"))

    header = (f"benchmark (CPU, {args.threads} threads)", "ours tok/s", "transformers tok/s", "ratio",
              "same tokens")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print(json.dumps({"device": "cpu", "threads": args.threads, "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
