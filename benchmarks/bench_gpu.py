"""GPU benchmark (one CUDA device, < 8 minutes): our MPT vs transformers' MptForCausalLM.

  * MPT-125M, 350M and 1B training at seq 2048, bf16 autocast: tokens/s and MFU (LLM Foundry's formula,
    6 * params + 12 * n_layers * d_model * seq FLOPs per token; peak 989 TFLOP/s dense bf16 on an H100,
    override with --peak-tflops). Ours with FlexAttention + torch.compile (and SDPA for 1B); transformers eager (1B).
  * MPT-7B (random weights, bf16) batch-1 greedy decode of 128 tokens after prompts of 128 and
    1,800 tokens: tokens/s, ours vs transformers, and whether the tokens are identical.

    python benchmarks/bench_gpu.py [--peak-tflops 989] [--skip-train] [--skip-decode]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import MptConfig, MptForCausalLM

from mpt import MPTForCausalLM
from mpt.infer import generate_ids
from mpt.presets import load_model_config, model_info


def _sync_time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def bench_train(peak: float, batch: int, iters: int, sizes: list[str]) -> list[dict]:
    """Ours (FlexAttention + torch.compile, fused loss) for each preset; transformers eager on MPT-1B."""
    seq = 2048
    rows = []
    ids = torch.randint(0, 50277, (batch, seq), device="cuda")
    runs = [(size, "ours flex+compile", "flex", True) for size in sizes]
    runs += [("1b", "ours sdpa+compile", "torch", True), ("1b", "transformers eager", None, False)]
    for size, label, impl, compile_ in runs:
        cfg = load_model_config(f"mpt-{size}", max_seq_len=seq)
        flops_per_token = model_info(cfg).train_flops_per_token
        torch.manual_seed(0)
        if impl is None:
            model = MptForCausalLM(MptConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers,
                                             max_seq_len=seq, vocab_size=cfg.vocab_size)).cuda()
        else:
            cfg.attn_config["attn_impl"] = impl
            model = MPTForCausalLM(cfg).cuda()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        fwd = torch.compile(model) if compile_ else model

        def step(fwd=fwd, opt=opt):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        name = f"MPT-{size} train b{batch} s{seq} bf16"
        try:
            t = _sync_time(step, warmup=3, iters=iters)
            tok_s = batch * seq / t
            rows.append({"bench": name, "impl": label, "tok_s": tok_s, "mfu": tok_s * flops_per_token / (peak * 1e12)})
        except torch.OutOfMemoryError:
            rows.append({"bench": name, "impl": label, "tok_s": None, "mfu": None, "note": "out of memory"})
        del model, opt, fwd, step
        torch.cuda.empty_cache()
    return rows


def bench_decode(new: int) -> list[dict]:
    rows = []
    cfg = load_model_config("mpt-7b")
    torch.manual_seed(0)
    with torch.device("cuda"):
        ours = MPTForCausalLM(cfg).to(torch.bfloat16).eval()
    theirs = MptForCausalLM(MptConfig(d_model=4096, n_heads=32, n_layers=32, max_seq_len=2048,
                                      vocab_size=50432)).to(dtype=torch.bfloat16, device="cuda").eval()
    theirs.load_state_dict(ours.state_dict(), strict=False)
    for prompt_len in (128, 1800):
        prompt = torch.randint(0, 50277, (1, prompt_len), device="cuda")
        t_ours = _sync_time(lambda p=prompt: generate_ids(ours, p, new), warmup=1, iters=2)
        out_ours = generate_ids(ours, prompt, new)

        def hf(p=prompt):
            with torch.inference_mode():
                return theirs.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=new,
                                       min_new_tokens=new, do_sample=False, pad_token_id=0)
        t_theirs = _sync_time(hf, warmup=1, iters=2)
        same = bool(torch.equal(out_ours, hf()))
        for label, t in (("ours", t_ours), ("transformers", t_theirs)):
            rows.append({"bench": f"MPT-7B decode prompt {prompt_len} +{new}", "impl": label, "tok_s": new / t,
                         "identical_tokens": same})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--train-sizes", default="125m,350m,1b", help="presets to time training for")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device; benchmarks/bench_model.py runs the CPU comparison")
    rows = []
    if not args.skip_train:
        rows += bench_train(args.peak_tflops, args.batch, args.iters, args.train_sizes.split(","))
    if not args.skip_decode:
        rows += bench_decode(args.new_tokens)
    print(f"{'benchmark':36} {'impl':20} {'tok/s':>10} {'MFU':>7}  same tokens")
    for r in rows:
        tok = f"{r['tok_s']:,.0f}" if r.get("tok_s") else r.get("note", "-")
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        same = {True: "yes", False: "NO"}.get(r.get("identical_tokens"), "-")
        print(f"{r['bench']:36} {r['impl']:20} {tok:>10} {mfu:>7}  {same}")
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
