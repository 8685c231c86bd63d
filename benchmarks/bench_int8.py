"""int8 weights (``--quantize int8``) against float32 and bfloat16 on CPU, in the same run.

Two models, because speed needs a model whose weights dominate and perplexity needs a trained one:

* Speed and memory: d_model 1024, 8 layers, 16 heads, the GPT-NeoX-20B vocabulary (50,432 rows),
  random weights (seeded). Greedy generation through ``LLM.generate`` (the engine ``mpt serve``
  runs), a 32-token prompt and ``--new-tokens`` new tokens, batch 1 and batch 8. The variants run
  interleaved (fp32, bf16, int8, fp32, ...) ``--repeats`` times so that all see the same machine
  load; the median is reported. Memory: bytes of the weights as held (int8 tables and their scales
  included). Not the process RSS: the three variants share one process, and freed float32 blocks
  stay in the allocator's heap.
* Perplexity: a small model (d_model 384, 4 layers) trained here for ``--train-steps`` steps on the
  first 90 % of The Great Gatsby (../shared/data/longcontext/great_gatsby.txt, GPT-NeoX tokens
  remapped to the ids the book uses, so the output layer is small and the training short), then
  scored in fp32, bf16 and int8 on the last 10 % and on as many tokens of the training text. No trained checkpoint ships with the repository;
  a briefly trained model is less sharp than a real one, so this measures the rounding's effect on
  a model that has learnt something, not on a production model.

Target (issue 12): int8 >= 1.5x the tokens/s of fp32 on CPU, perplexity within 2 %.
Prints two tables, then one JSON line.

    python benchmarks/bench_int8.py [--threads 1] [--repeats 3] [--new-tokens 32] [--train-steps 150]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NEOX = SHARED / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
GATSBY = SHARED / "data" / "longcontext" / "great_gatsby.txt"


def variants(model):
    """fp32, bf16 and int8 copies of a float32 model, with their weight bytes."""
    from mpt.model.quantize import quantize_model, weight_bytes

    out = {}
    for name, make in (("fp32", lambda m: m), ("bf16", lambda m: m.to(torch.bfloat16)),
                       ("int8", quantize_model)):
        m = make(copy.deepcopy(model)).eval()
        out[name] = (m, weight_bytes(m))
    return out


def tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(NEOX), eos_token="<|endoftext|>", pad_token="<|padding|>")


def speed(args, tok) -> list[dict]:
    from mpt import MPTConfig, MPTForCausalLM
    from mpt.infer.api import LLM

    torch.manual_seed(0)
    model = MPTForCausalLM(MPTConfig(d_model=1024, n_heads=16, n_layers=8, max_seq_len=2048, vocab_size=50432))
    built = variants(model.eval())
    del model
    text = GATSBY.read_text(encoding="utf-8-sig")
    ids = tok(text[20000:40000], add_special_tokens=False)["input_ids"]
    rows = []
    for batch in (1, 8):
        prompts = [ids[i * 40:i * 40 + 32] for i in range(batch)]
        times = {name: [] for name in built}
        tokens = {}
        for rep in range(args.repeats + 1):  # the first round warms up
            for name, (m, _) in built.items():
                llm = LLM(m, tok)
                start = time.perf_counter()
                outs = llm.generate(prompts, max_new_tokens=args.new_tokens, batch_size=batch)
                took = time.perf_counter() - start
                tokens[name] = sum(len(o.token_ids) for o in outs)
                if rep:
                    times[name].append(took)
        for name, (_, nbytes) in built.items():
            t = statistics.median(times[name])
            rows.append({"batch": batch, "dtype": name, "tokens": tokens[name], "seconds": round(t, 3),
                         "tokens_per_s": round(tokens[name] / t, 1), "weights_mb": round(nbytes / 2**20, 1)})
    return rows


def perplexity(args, tok) -> tuple[list[dict], dict]:
    from mpt import MPTConfig, MPTForCausalLM

    text = GATSBY.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    vocab = sorted(set(ids))
    remap = {t: i for i, t in enumerate(vocab)}
    data = torch.tensor([remap[t] for t in ids])
    split = int(0.9 * len(data))
    train, held = data[:split], data[split:]
    seq = 128
    torch.manual_seed(0)
    cfg = MPTConfig(d_model=384, n_heads=6, n_layers=4, max_seq_len=seq, vocab_size=len(vocab))
    model = MPTForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.train_steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    start, loss = time.perf_counter(), float("nan")
    for _ in range(args.train_steps):
        at = torch.randint(0, len(train) - seq - 1, (8,), generator=g)
        batch = torch.stack([train[a:a + seq] for a in at.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        loss = loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    trained = {"steps": args.train_steps, "seconds": round(time.perf_counter() - start, 1),
               "final_train_loss": round(loss.item(), 3), "vocab": len(vocab), "train_tokens": len(train),
               "heldout_tokens": len(held)}
    rows = []
    # Held-out text, and as many tokens of the training text (where this small model is sharper, so
    # rounding has more to spoil).
    sets = {"heldout": held, "train": train[:len(held)]}
    for name, (m, nbytes) in variants(model.eval()).items():
        row = {"dtype": name, "weights_mb": round(nbytes / 2**20, 2)}
        for label, tokens in sets.items():
            windows = tokens[: len(tokens) // seq * seq].view(-1, seq)
            nll = 0.0
            with torch.inference_mode():
                for chunk in windows.split(16):
                    logits = m(chunk).logits.float()
                    nll += float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                                                   chunk[:, 1:].flatten(), reduction="sum"))
            row[f"perplexity_{label}"] = round(math.exp(nll / (windows.shape[0] * (seq - 1))), 3)
        rows.append(row)
    return rows, trained


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1; 0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per variant, after one warm-up")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt")
    ap.add_argument("--train-steps", type=int, default=150, help="steps of the perplexity model's training")
    args = ap.parse_args()
    if not (NEOX.is_file() and GATSBY.is_file()):
        print(f"needs {NEOX} and {GATSBY}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = tokenizer()
    speed_rows = speed(args, tok)
    ppl_rows, trained = perplexity(args, tok)

    print(f"int8 vs float on CPU ({torch.get_num_threads()} torch thread(s), torch {torch.__version__})")
    print(f"\nSpeed: d_model 1024, 8 layers, vocab 50,432, random weights; 32-token prompts, "
          f"{args.new_tokens} new tokens, greedy; median of {args.repeats}")
    print(f"{'batch':>5} {'dtype':>5} {'tokens/s':>9} {'vs fp32':>8} {'weights MB':>11}")
    by = {(r["batch"], r["dtype"]): r for r in speed_rows}
    for r in speed_rows:
        ratio = r["tokens_per_s"] / by[(r["batch"], "fp32")]["tokens_per_s"]
        r["vs_fp32"] = round(ratio, 2)
        print(f"{r['batch']:>5} {r['dtype']:>5} {r['tokens_per_s']:>9.1f} {ratio:>7.2f}x {r['weights_mb']:>11.1f}")
    print(f"\nPerplexity: d_model 384, 4 layers, trained {trained['steps']} steps ({trained['seconds']} s, final "
          f"loss {trained['final_train_loss']}) on {trained['train_tokens']:,} Gatsby tokens; held-out "
          f"{trained['heldout_tokens']:,} tokens")
    base = next(r for r in ppl_rows if r["dtype"] == "fp32")
    print(f"{'dtype':>5} {'held-out ppl':>13} {'vs fp32':>8} {'train-text ppl':>15} {'vs fp32':>8}")
    for r in ppl_rows:
        for label in ("heldout", "train"):
            r[f"vs_fp32_pct_{label}"] = round(100 * (r[f"perplexity_{label}"] / base[f"perplexity_{label}"] - 1), 2)
        print(f"{r['dtype']:>5} {r['perplexity_heldout']:>13.3f} {r['vs_fp32_pct_heldout']:>+7.2f}% "
              f"{r['perplexity_train']:>15.3f} {r['vs_fp32_pct_train']:>+7.2f}%")
    int8 = {b: by[(b, "int8")]["vs_fp32"] for b in (1, 8)}
    int8_ppl = next(r for r in ppl_rows if r["dtype"] == "int8")
    ppl8 = max(abs(int8_ppl["vs_fp32_pct_heldout"]), abs(int8_ppl["vs_fp32_pct_train"]))
    print(json.dumps({"bench": "int8", "threads": torch.get_num_threads(), "speed": speed_rows, "perplexity": ppl_rows,
                      "trained": trained, "int8_speedup_batch1": int8[1], "int8_speedup_batch8": int8[8],
                      "int8_perplexity_change_pct_max": ppl8,
                      "target_met": min(int8.values()) >= 1.5 and ppl8 <= 2.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
