"""`mpt train` against a plain training loop over transformers' MptForCausalLM, same run, same data.

Both train the same config (by default d_model 256, 4 layers, 4 heads, vocab 50,432, seq 256: the
vocabulary outweighs the body; `--d-model 768 --layers 6 --heads 12` the other way round) on the same
token shards with global batch 8 and AdamW, for --steps steps each; the first 2 steps are warm-up.
Ours runs the whole `mpt train` loop (data loader, token-weighted accumulation, clipping, guard,
metrics); theirs is the shortest correct loop a user would write.

    python benchmarks/bench_train.py [--steps 10] [--threads 2] [--d-model 768 --layers 6 --heads 12]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import MptConfig, MptForCausalLM

from mpt.config import from_dict
from mpt.data.shards import ShardWriter
from mpt.data.streaming import Source, StreamConfig, StreamingDataLoader, StreamingDataset
from mpt.train import Recipe, train

VOCAB, SEQ, BATCH = 50432, 256, 8


def make_data(folder: Path, samples: int) -> Path:
    rng = np.random.default_rng(0)
    writer = ShardWriter(folder, vocab_size=VOCAB, eos_id=0, mode="concat", seq_len=SEQ, tokenizer="random")
    for _ in range(samples):
        writer.add(rng.integers(0, 50277, SEQ))
    writer.close()
    return folder


def ours(tmp: Path, data: Path, steps: int, precision: str, shape: dict) -> float:
    recipe = from_dict(Recipe, {
        "model": {"preset": "mpt-tiny", "fields": {**shape, "vocab_size": VOCAB, "max_seq_len": SEQ}},
        "data": {"kind": "pretrain", "sources": [{"path": str(data)}]},
        "optimizer": {"name": "adamw", "lr": 1e-4, "betas": [0.9, 0.95]},
        "scheduler": {"name": "constant"},
        "train": {"max_duration": f"{steps}ba", "global_batch_size": BATCH, "micro_batch_size": BATCH,
                  "precision": precision},
        "checkpoint": {"folder": str(tmp / "ckpt"), "every_batches": 0, "autoresume": False},
        "log": {"folder": str(tmp / "log")},
        "watchdog": {"enabled": False},
    })
    train(recipe, log=lambda *a: None)
    rates = [json.loads(line)["tokens_per_s"] for line in (tmp / "log" / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[2:])


def theirs(data: Path, steps: int, precision: str, shape: dict) -> float:
    torch.manual_seed(0)
    model = MptForCausalLM(MptConfig(**shape, vocab_size=VOCAB, max_seq_len=SEQ)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    loader = StreamingDataLoader(StreamingDataset(StreamConfig([Source(str(data))], batch_size=BATCH, seed=0)))
    rates = []
    batches = iter(loader)
    for _ in range(steps):
        start = time.perf_counter()
        ids = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rates.append(ids.numel() / (time.perf_counter() - start))
    return statistics.median(rates[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args()
    shape = {"d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads}
    torch.set_num_threads(args.threads)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", BATCH * (args.steps + 2))
        for precision in ("fp32", "bf16"):
            t = theirs(data, args.steps, precision, shape)
            o = ours(Path(tmp) / f"ours-{precision}", data, args.steps, precision, shape)
            results[precision] = {"ours_tok_s": o, "transformers_loop_tok_s": t, "ratio": o / t}
            rows.append((f"train {precision} (b{BATCH} s{SEQ} d{args.d_model} L{args.layers})", f"{o:,.0f}", f"{t:,.0f}",
                         f"{o / t:.2f}x"))
    header = (f"benchmark (CPU, {args.threads} threads)", "mpt train tok/s", "transformers loop tok/s", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(json.dumps({"device": "cpu", "threads": args.threads, "torch": torch.__version__, "shape": shape,
                      "results": results}))


if __name__ == "__main__":
    main()
