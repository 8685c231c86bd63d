"""Every GPU measurement in one process (one CUDA device, under 8 minutes on an H100/H200).

Sections (``--only`` picks some):

  * ``train``: ``mpt train`` itself (``mpt.train.train``: the real loop, recipe, data loader and
    monitor) for MPT-125M, 350M and 1B at seq 2048, bf16, compiled blocks, ``--train-steps`` measured
    steps after ``--warmup`` steps; tokens/s and MFU are read from the run's own metrics.jsonl (the
    numbers its step lines print). Beside them transformers' ``MptForCausalLM`` MPT-1B in a plain
    bf16-autocast loop (fused AdamW), MFU with the same FLOPs-per-token formula.
  * ``decode``: MPT-7B (random weights, bf16), batch 1, 128 greedy tokens after prompts of 128 and
    1,800 tokens: ours compiled (static cache + torch.compile, CUDA graphs), ours eager, transformers;
    tokens compared with our eager ones.
  * ``batch``: the same at batch 16 (16 prompts of 128 tokens): decode throughput.
  * ``gatsby``: The Great Gatsby (~76k tokens) prefilled into the MPT-7B shape in chunks
    (benchmarks/bench_gatsby.py, the engine's chunked prefill), then compiled decode after it.
  * ``eval``: ``mpt eval`` vs lm-eval (``--model hf``) on PIQA and HellaSwag (0-shot) with a random
    MPT-1B in bf16: examples/s and identical predictions.

``--smoke`` runs every section's code path at tiny sizes on the CPU (tests/test_gpu_smoke.py runs it),
so the script cannot rot before a GPU runs it.

    python benchmarks/bench_gpu.py [--smoke] [--only train,decode,batch,gatsby,eval] [--train-steps 30]

Prints a table per section, then one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = Path(os.environ.get("MPT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
SECTIONS = ("train", "decode", "batch", "gatsby", "eval")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


# ---- train ---------------------------------------------------------------------------------------

def _token_shards(folder: Path, seq: int, samples: int, vocab: int) -> Path:
    from mpt.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    writer = ShardWriter(folder, vocab_size=vocab, eos_id=0, mode="concat", seq_len=seq, tokenizer="random")
    for _ in range(samples):
        writer.add(rng.integers(0, min(vocab, 50277), seq))
    writer.close()
    return folder


def train_ours(size: str, fields: dict, seq: int, batch: int, warmup: int, steps: int, args, tmp: Path) -> dict:
    """One ``mpt train`` run; tokens/s and MFU are the medians of its metrics.jsonl after the warm-up."""
    from mpt.config import from_dict
    from mpt.train import Recipe, train

    run = tmp / f"train-{size}"
    data = _token_shards(run / "data", seq, (warmup + steps) * batch, fields.get("vocab_size", 50432))
    recipe = from_dict(Recipe, {
        "run_name": f"bench-{size}",
        "model": {"preset": args.preset_prefix + size, "fields": {**fields, "max_seq_len": seq}},
        "data": {"kind": "pretrain", "sources": [{"path": str(data)}]},
        "optimizer": {"name": "adamw", "lr": 2e-4, "betas": [0.9, 0.95]},
        "scheduler": {"name": "constant"},
        "train": {"max_duration": f"{warmup + steps}ba", "global_batch_size": batch, "micro_batch_size": batch,
                  "precision": args.precision, "compile": args.compile_train, "device": args.device},
        "checkpoint": {"folder": str(run / "ckpt"), "every_batches": 0, "autoresume": False},
        "log": {"folder": str(run / "log"), "every_batches": 1},
        "watchdog": {"enabled": False},
    })
    train(recipe, log=lambda *a, **k: None)
    lines = [json.loads(x) for x in (run / "log" / "metrics.jsonl").read_text().splitlines()]
    steps_ = [r for r in lines if "tokens_per_s" in r][warmup:]
    mfu = [r["mfu"] for r in steps_ if r.get("mfu") is not None]
    return {"bench": f"train {size} s{seq} b{batch}", "impl": "mpt train", "tok_s": statistics.median(
        r["tokens_per_s"] for r in steps_), "mfu": statistics.median(mfu) if mfu else None, "steps": len(steps_)}


def train_transformers(fields: dict, seq: int, batch: int, warmup: int, steps: int, args) -> dict:
    """transformers' MPT in the shortest correct bf16 loop; MFU with our FLOPs-per-token formula and peak."""
    from transformers import MptConfig, MptForCausalLM

    from mpt.presets import load_model_config, model_info
    from mpt.train.monitor import peak_tflops

    cfg = load_model_config(args.preset_prefix + args.hf_size, **{**fields, "max_seq_len": seq})
    torch.manual_seed(0)
    model = MptForCausalLM(MptConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers,
                                     expansion_ratio=cfg.expansion_ratio, max_seq_len=seq,
                                     vocab_size=cfg.vocab_size)).to(args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=args.device == "cuda")
    ids = torch.randint(0, min(cfg.vocab_size, 50277), (batch, seq), device=args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    def step():
        with torch.autocast(args.device, dtype=dtype, enabled=args.precision == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for _ in range(warmup):
        step()
    seconds, _ = _timed(lambda: [step() for _ in range(steps)], args.device)
    tok_s = batch * seq * steps / seconds
    peak, _ = peak_tflops(torch.device(args.device), None)
    flops = model_info(cfg).train_flops_per_token
    return {"bench": f"train {args.hf_size} s{seq} b{batch}", "impl": "transformers loop", "tok_s": tok_s,
            "mfu": tok_s * flops / (peak * 1e12) if peak else None, "steps": steps}


def bench_train(args, tmp: Path) -> list[dict]:
    rows = []
    for size in args.train_sizes:
        rows.append(train_ours(size, args.fields, args.seq, args.train_batch, args.warmup, args.train_steps, args, tmp))
        if args.device == "cuda":
            torch.cuda.empty_cache()
    batch = args.train_batch
    while True:  # transformers' eager attention keeps every layer's (B, H, T, T) scores: halve the batch on OOM
        try:
            rows.append(train_transformers(args.fields, args.seq, batch, args.warmup, args.train_steps, args))
            return rows
        except torch.OutOfMemoryError:
            if batch == 1:
                rows.append({"bench": f"train {args.hf_size} s{args.seq}", "impl": "transformers loop",
                             "tok_s": None, "mfu": None, "note": "out of memory at batch 1"})
                return rows
            batch //= 2
            torch.cuda.empty_cache()


# ---- decode --------------------------------------------------------------------------------------

def decode_models(args):
    """Ours and transformers' MPT with the same random weights, in the decode dtype."""
    from transformers import MptConfig, MptForCausalLM

    from mpt import MPTForCausalLM
    from mpt.presets import load_model_config

    cfg = load_model_config(args.decode_preset, **args.decode_fields)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(args.device):
        ours = MPTForCausalLM(cfg).to(dtype).eval()
    theirs = MptForCausalLM(MptConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers,
                                      expansion_ratio=cfg.expansion_ratio, max_seq_len=cfg.max_seq_len,
                                      vocab_size=cfg.vocab_size)).to(dtype=dtype, device=args.device).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    return ours, theirs


def _decode_rows(ours, theirs, prompt: torch.Tensor, new: int, label: str, args) -> list[dict]:
    from mpt.infer import generate_ids

    def hf():
        with torch.inference_mode():
            return theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                   min_new_tokens=new, do_sample=False, pad_token_id=0)
    runs = {"ours compiled": lambda: generate_ids(ours, prompt, new, compile=True),
            "ours eager": lambda: generate_ids(ours, prompt, new, compile=False),
            "transformers": hf}
    outs, times = {}, {}
    for name, fn in runs.items():
        fn()  # warm-up: compiles (CUDA graphs recorded) for the compiled run
        times[name], outs[name] = min((_timed(fn, args.device) for _ in range(args.repeats)), key=lambda r: r[0])
    rows = []
    for name in runs:
        rows.append({"bench": label, "impl": name, "tok_s": prompt.shape[0] * new / times[name],
                     "identical_tokens": bool(torch.equal(outs[name], outs["ours eager"]))})
    return rows


def bench_decode(args) -> list[dict]:
    ours, theirs = decode_models(args)
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in args.prompt_lens:
        prompt = torch.randint(0, min(50277, ours.config.vocab_size), (1, n), generator=g).to(args.device)
        rows += _decode_rows(ours, theirs, prompt, args.new_tokens, f"decode b1 prompt {n} +{args.new_tokens}", args)
    return rows


def bench_batch(args) -> list[dict]:
    ours, theirs = decode_models(args)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, min(50277, ours.config.vocab_size), (args.batch_rows, args.prompt_lens[0]), generator=g)
    return _decode_rows(ours, theirs, prompt.to(args.device), args.new_tokens,
                        f"decode b{args.batch_rows} prompt {args.prompt_lens[0]} +{args.new_tokens}", args)


# ---- Gatsby --------------------------------------------------------------------------------------

def bench_gatsby_section(args) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gatsby import book_ids, prefill_and_decode

    from mpt import MPTForCausalLM
    from mpt.presets import load_model_config

    ids = book_ids(SHARED / "data/longcontext/great_gatsby.txt", SHARED / "tokenizers/gpt-neox-20b/tokenizer.json")
    ids = ids[:args.gatsby_tokens] if args.gatsby_tokens else ids
    cfg = load_model_config(args.decode_preset, **args.decode_fields)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = MPTForCausalLM(cfg).to(torch.bfloat16 if args.device == "cuda" else torch.float32).eval()
    ids = [i % cfg.vocab_size for i in ids]  # (the smoke's tiny vocabulary; the real one holds every id)
    r = prefill_and_decode(model, ids, args.gatsby_chunk, args.gatsby_new, compile=True)
    return [{"bench": f"gatsby {len(ids)} tok, chunk {args.gatsby_chunk}", "impl": "ours", **r}]


# ---- eval ----------------------------------------------------------------------------------------

def bench_eval(args, tmp: Path) -> list[dict]:
    """``mpt eval`` vs lm-eval on the same exported prompts, the same random MPT checkpoint and dtype.

    Each time covers loading the model and scoring the task. lm-eval's task manager reads only the
    exported task (``include_defaults=False``): indexing its hundreds of built-in tasks takes ~12 s on
    a CPU, which neither harness's scoring needs.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedTokenizerFast

    from mpt import MPTForCausalLM
    from mpt.eval import evaluate, load_model, load_suite, load_tokenizer
    from mpt.eval.lm_eval_adapter import export_task
    from mpt.model.hf import save_pretrained
    from mpt.presets import load_model_config

    model_dir = tmp / "eval-model"
    torch.manual_seed(0)
    save_pretrained(MPTForCausalLM(load_model_config(args.preset_prefix + args.hf_size, **args.eval_fields)), model_dir)
    PreTrainedTokenizerFast(tokenizer_file=str(SHARED / "tokenizers/gpt-neox-20b/tokenizer.json"),
                            eos_token="<|endoftext|>").save_pretrained(model_dir)
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    rows = []
    for label in ("piqa", "hellaswag"):
        task = next(t for t in load_suite("mpt7b").tasks if t.label == label)
        task.num_fewshot, task.normalization = [0], "none"  # lm-eval's acc: the highest summed log-likelihood
        include = tmp / f"{label}-task"
        name = export_task(task, 0, load_tokenizer(str(model_dir)), include, SHARED / "data/eval", limit=args.eval_limit)

        def ours(task=task):
            model = load_model(str(model_dir), device=args.device, dtype=dtype)
            out = evaluate(model, load_tokenizer(str(model_dir)), [task], data_dir=SHARED / "data/eval",
                           limit=args.eval_limit, batch_size=64, keep_examples=True, progress=False)
            return [r.prediction for r in out.examples]

        def theirs(name=name, include=include):
            lm = HFLM(pretrained=str(model_dir), dtype=dtype, batch_size=32, device=args.device)
            res = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=TaskManager(include_path=str(include), include_defaults=False),
                                          log_samples=True)
            samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
            return [max(range(len(s["filtered_resps"])), key=lambda k: (s["filtered_resps"][k][0], -k))
                    for s in samples]
        t_ours, p_ours = _timed(ours, args.device)
        t_theirs, p_theirs = _timed(theirs, args.device)
        same = sum(a == b for a, b in zip(p_ours, p_theirs, strict=True))
        for impl, t in (("mpt eval", t_ours), ("lm_eval hf", t_theirs)):
            rows.append({"bench": f"eval {label} 0-shot ({len(p_ours)} ex)", "impl": impl,
                         "examples_per_s": len(p_ours) / t, "identical_predictions": f"{same}/{len(p_ours)}"})
        rows[-2]["speedup"] = t_theirs / t_ours
    return rows


# ---- driver --------------------------------------------------------------------------------------

def configure(args) -> None:
    """Full sizes on CUDA; ``--smoke``: the same code paths at tiny sizes on the CPU."""
    if args.smoke:
        # One thread: tiny matrices gain nothing from more, and a shared CI machine's other work would
        # make OpenMP threads wait for each other (the smoke checks paths, not speed).
        torch.set_num_threads(1)
        args.device, args.precision, args.compile_train = "cpu", "fp32", False
        args.preset_prefix, args.train_sizes, args.hf_size = "mpt-", ["tiny"], "tiny"
        tiny = {"d_model": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 512}
        args.fields, args.seq, args.train_batch, args.warmup, args.train_steps = tiny, 64, 2, 1, 2
        args.decode_preset, args.decode_fields = "mpt-tiny", {**tiny, "max_seq_len": 64}
        args.prompt_lens, args.new_tokens, args.batch_rows, args.repeats = [8, 40], 6, 4, 1
        # 56 tokens + 4 fit the decode section's capacity bucket (64): no compile of its own
        args.gatsby_tokens, args.gatsby_chunk, args.gatsby_new = 56, 16, 4
        args.eval_fields, args.eval_limit = {**tiny, "vocab_size": 50432}, 4
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench_gpu.py needs a CUDA device (or --smoke for the CPU check of every path)")
        args.device, args.precision, args.compile_train = "cuda", "bf16", True
        args.preset_prefix, args.hf_size, args.fields, args.seq = "mpt-", "1b", {}, 2048
        args.decode_preset, args.decode_fields = "mpt-7b", {}
        args.prompt_lens, args.new_tokens, args.batch_rows = [128, 1800], 128, 16
        args.gatsby_tokens, args.gatsby_chunk, args.gatsby_new = 0, 512, 64
        args.eval_fields = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: every code path, no figures")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--train-sizes", default="125m,350m,1b")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=30, help="measured steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=5, help="steps before measuring (compilation)")
    parser.add_argument("--repeats", type=int, default=2, help="decode runs per case; the fastest counts")
    parser.add_argument("--eval-limit", type=int, default=500, help="first N examples of PIQA and HellaSwag")
    args = parser.parse_args()
    args.train_sizes = args.train_sizes.split(",")
    configure(args)
    only = [s for s in args.only.split(",") if s]
    if unknown := set(only) - set(SECTIONS):
        raise SystemExit(f"unknown sections {sorted(unknown)}; allowed: {SECTIONS}")
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    fallbacks = _Records()  # the compiled decode's fallback to eager would make its figures eager ones
    logging.getLogger("mpt.model").addHandler(fallbacks)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for section, fn in (("train", lambda: bench_train(args, Path(tmp))), ("decode", lambda: bench_decode(args)),
                            ("batch", lambda: bench_batch(args)), ("gatsby", lambda: bench_gatsby_section(args)),
                            ("eval", lambda: bench_eval(args, Path(tmp)))):
            if section in only:
                t0 = time.perf_counter()
                new = fn()
                for r in new:
                    r["section"] = section
                rows += new
                print(f"[{section}: {time.perf_counter() - t0:.1f} s]", flush=True)
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (smoke: sizes are tiny, figures mean nothing)"
    print(f"{device}; torch {torch.__version__}")
    print(f"{'benchmark':40} {'impl':18} {'tok/s':>10} {'MFU':>6} {'ex/s':>7}  same")
    for r in rows:
        tok = f"{r['tok_s']:,.0f}" if r.get("tok_s") else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        ex = f"{r['examples_per_s']:.1f}" if r.get("examples_per_s") else "-"
        same = {True: "yes", False: "NO"}.get(r.get("identical_tokens"), r.get("identical_predictions", "-"))
        print(f"{r['bench']:40} {r['impl']:18} {tok:>10} {mfu:>6} {ex:>7}  {same}")
    print(json.dumps({"bench": "gpu", "device": device, "smoke": args.smoke, "torch": torch.__version__,
                      "seconds": round(time.perf_counter() - started, 1), "compiled_decode_fell_back": len(
                          fallbacks.records), "rows": rows}))
    if fallbacks.records:
        raise SystemExit(f"compiled decode fell back to eager: {fallbacks.records[0]}")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


if __name__ == "__main__":
    main()
