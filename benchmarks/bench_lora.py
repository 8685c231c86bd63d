"""Full finetuning vs LoRA vs QLoRA: trainable parameters, optimizer and weight memory, tokens/s.

The same MPT (d_model 512, 8 layers, 8 heads, vocab 50,432 by default; random weights) takes the
training step of ``mpt train``: the recipe's parameter groups, decoupled AdamW, forward with the
fused loss, backward, optimizer step, on batches of random token ids (the speed of a step does not
depend on the text). Three ways:

* full: every weight trains;
* LoRA r=8 on Wqkv, out_proj, up_proj, down_proj (``apply_lora``, the recipe's defaults);
* QLoRA: the same adapters over block linear layers frozen in bitsandbytes' NF4 (``quantize_base``;
  skipped with the reason when bitsandbytes is absent).

Memory is counted from the tensors themselves: optimizer state after a step, weights (a 4-bit
tensor by its bytes), gradients. Steps of the three alternate, so load from other processes on a
shared machine falls on all alike; the first step of each is warm-up. Also prints the same counts
computed for MPT-7B (no weights built). Prints a table, then one JSON line.

    python benchmarks/bench_lora.py [--steps 6] [--threads 2] [--d-model 512] [--layers 8] [--seq 512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mpt import MPTForCausalLM
from mpt.presets import load_model_config
from mpt.train.lora import apply_lora
from mpt.train.optim import decoupled_adamw, param_groups
from mpt.train.qlora import logical_numel
from mpt.train.recipe import LoraSection

MIB = 2**20


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def scale_bytes(state) -> int:
    """A 4-bit weight's block scales and code table (and theirs, when double-quantized)."""
    return tensor_bytes([state.absmax, state.code]) + (scale_bytes(state.state2) if state.nested else 0)


def build(kind: str, args):
    torch.manual_seed(0)
    config = load_model_config("mpt-tiny", d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                               max_seq_len=args.seq)
    model = MPTForCausalLM(config)
    note = ""
    if kind == "QLoRA":
        from mpt.train.qlora import quantize_base

        note = quantize_base(model, torch.float32, torch.device("cpu")).describe(torch.float32)
    if kind != "full":
        model = apply_lora(model, LoraSection(r=args.r), log=lambda *_: None)
    model.train()
    optimizer = decoupled_adamw(param_groups(model, 0.0), lr=1e-4)
    return model, optimizer, note


def step(model, optimizer, batch) -> float:
    start = time.perf_counter()
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # keep the gradients allocated, as the loop does between steps
    return time.perf_counter() - start


def mpt7b_counts(r: int) -> dict:
    """Trainable parameters and AdamW state of full finetuning vs LoRA for MPT-7B, from its shapes."""
    c = load_model_config("mpt-7b")
    d, f = c.d_model, c.d_model * c.expansion_ratio
    shapes = [(d, 3 * d), (d, d), (d, f), (f, d)]  # Wqkv, out_proj, up_proj, down_proj: (in, out)
    lora = c.n_layers * sum(r * (i + o) for i, o in shapes)
    full = c.n_layers * (sum(i * o for i, o in shapes) + 2 * d) + c.vocab_size * d + d  # 2 bias-free norms a block
    return {"full_params": full, "lora_params": lora, "full_adamw_gib": full * 8 / 2**30,
            "lora_adamw_gib": lora * 8 / 2**30, "block_linear_fp32_gib": c.n_layers * sum(i * o for i, o in shapes) * 4 / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps of each (default: 6)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--r", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    kinds, skipped = ["full", "LoRA"], {}
    try:
        import bitsandbytes  # noqa: F401

        kinds.append("QLoRA")
    except ImportError as err:
        skipped["QLoRA"] = f"bitsandbytes is not installed ({err}): pip install -e '.[qlora]'"
    runs = {k: build(k, args) for k in kinds}
    batch = torch.randint(0, 50432, (args.batch, args.seq))
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(args.steps + 1):
        for k in kinds:
            took = step(runs[k][0], runs[k][1], batch)
            if i:  # the first step of each is warm-up (and allocates the optimizer state)
                times[k].append(took)

    rows = []
    for k in kinds:
        model, optimizer, note = runs[k]
        params = list(model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(logical_numel(p) for p in params)
        state = [t for s in optimizer.state.values() for t in s.values()]
        weights = tensor_bytes(params) + sum(scale_bytes(p.quant_state) for p in params
                                             if getattr(p, "quant_state", None) is not None)
        grads = tensor_bytes(p.grad for p in params if p.grad is not None)
        seconds = statistics.median(times[k])
        rows.append({"kind": k, "trainable": trainable, "params": total, "optimizer_mib": tensor_bytes(state) / MIB,
                     "weights_mib": weights / MIB, "grads_mib": grads / MIB,
                     "tokens_per_s": args.batch * args.seq / seconds, "step_s": seconds, "note": note})
    full = rows[0]
    print(f"MPT d_model {args.d_model}, {args.layers} layers, vocab 50,432, batch {args.batch} x {args.seq}, "
          f"AdamW fp32, {args.threads} threads, median of {args.steps} interleaved steps")
    print(f"{'':<6} {'trainable':>12} {'of':>12} {'optimizer MiB':>14} {'weights MiB':>12} {'grads MiB':>10} "
          f"{'tokens/s':>9} {'vs full':>8}")
    for r in rows:
        print(f"{r['kind']:<6} {r['trainable']:>12,} {r['params']:>12,} {r['optimizer_mib']:>14.1f} "
              f"{r['weights_mib']:>12.1f} {r['grads_mib']:>10.1f} {r['tokens_per_s']:>9.0f} "
              f"{r['tokens_per_s'] / full['tokens_per_s']:>7.2f}x")
    for r in rows:
        if r["note"]:
            print(r["note"])
    for k, why in skipped.items():
        print(f"{k}: skipped: {why}")
    m = mpt7b_counts(args.r)
    print(f"MPT-7B (computed): full finetuning trains {m['full_params'] / 1e9:.2f}B parameters "
          f"({m['full_adamw_gib']:.1f} GiB of AdamW state); LoRA r={args.r} trains {m['lora_params'] / 1e6:.1f}M "
          f"({m['lora_adamw_gib'] * 1024:.0f} MiB); QLoRA holds the {m['block_linear_fp32_gib']:.1f} GiB of fp32 "
          f"block linear weights in about {m['block_linear_fp32_gib'] / 7.8:.1f} GiB")
    print(json.dumps({"bench": "lora", "d_model": args.d_model, "layers": args.layers, "seq": args.seq,
                      "batch": args.batch, "threads": args.threads, "rows": rows, "skipped": skipped, "mpt7b": m}))


if __name__ == "__main__":
    main()
