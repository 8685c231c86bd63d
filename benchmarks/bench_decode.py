"""Batch-1 greedy decode on the CPU: compiled against eager, and (``--peer llamacpp``) against llama.cpp.

Ours run ``generate_ids`` eagerly (``compile=False``), compiled over a static cache (``compile=True``) and,
with ``--peer llamacpp``, over oneDNN-prepacked weights (``prepacked``: what ``mpt.load`` gives on CPU, float
and int8), eager and compiled; an untimed first run compiles each shape, then the runs are interleaved so all see
the same machine load, and the median counts (tokens/s: new tokens over the whole call, prefill included). Models (random, in
``--dtype``): ``tiny`` (d_model 128, vocab 4,096: per-op overhead), ``small`` (d_model 256, vocab 50,432:
the vocabulary projection dominates), ``body`` (d_model 768, vocab 8,192). ``--peer llamacpp``: issue
21's model (d_model 512, 8 layers, vocab 50,432), ours in ``--dtype`` and int8, eager and compiled, beside
llama-cpp-python (~/.cache/mpt-peers/llamacpp, skipped when absent) on our f32 and q8_0 GGUF exports
(f16 too with bf16), same threads, prompt and token count. Prints a table, then one JSON line.

    python benchmarks/bench_decode.py [--threads 2] [--new-tokens 128] [--repeats 3] [--models tiny,small,body]
    python benchmarks/bench_decode.py --peer llamacpp [--prompts 32,1000] [--new-tokens 64] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from mpt import MPTConfig, MPTForCausalLM
from mpt.infer import generate_ids

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

MODELS = {"tiny": dict(d_model=128, n_heads=4, n_layers=4, vocab_size=4096),
          "small": dict(d_model=256, n_heads=4, n_layers=4, vocab_size=50432),
          "body": dict(d_model=768, n_heads=12, n_layers=6, vocab_size=8192)}


def run_models(args) -> None:
    """Compiled against eager for each of ``--models``."""
    new, results = args.new_tokens, []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = MPTForCausalLM(MPTConfig(**MODELS[name], max_seq_len=2048)).eval().to(DTYPES[args.dtype])
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
    print(f"CPU, {args.threads} threads, batch 1, {new} new tokens, {args.dtype}, torch {torch.__version__}")
    print(f"{'model':6} {'prompt':>6} {'eager tok/s':>12} {'compiled tok/s':>15} {'ratio':>6} {'compile s':>10}  same")
    for r in results:
        print(f"{r['model']:6} {r['prompt']:>6} {r['eager_tok_s']:>12.1f} {r['compiled_tok_s']:>15.1f} "
              f"{r['ratio']:>5.2f}x {r['first_compiled_run_s']:>10.1f}  {'yes' if r['identical_tokens'] else 'NO'}")
    print(json.dumps({"bench": "decode", "device": "cpu", "threads": args.threads, "dtype": args.dtype,
                      "torch": torch.__version__, "results": results}))


# One llama.cpp model per process, kept loaded: each stdin line {"prompt": [...], "n_new": n} is one timed
# greedy run (prompt read, then n tokens one at a time, as ours), answered by {"seconds": s, "tokens": [...]}.
# llama.cpp's defaults otherwise (an f16 key/value cache), as a user runs it.
WORKER = r"""
import json, sys, time
import numpy as np
from llama_cpp import Llama

llm = Llama(sys.argv[1], n_ctx=2048, n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]), verbose=False)
vocab = llm.n_vocab()  # without logits_all, llm.scores stays empty: read the last row's logits from the context
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    llm.reset()
    start = time.perf_counter()
    llm.eval(job["prompt"])
    out = []
    for _ in range(job["n_new"]):
        out.append(int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(vocab,)))))
        llm.eval([out[-1]])
    print(json.dumps({"seconds": time.perf_counter() - start, "tokens": out}), flush=True)
"""


class LlamaCpp:
    """A llama-cpp-python process holding one GGUF file."""

    def __init__(self, python: Path, gguf: Path, threads: int, work: Path) -> None:
        (work / "llama_worker.py").write_text(WORKER)
        self.proc = subprocess.Popen([str(python), str(work / "llama_worker.py"), str(gguf), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"llama.cpp did not load {gguf}")

    def __call__(self, prompt: list[int], n_new: int) -> tuple[float, list[int]]:
        self.proc.stdin.write(json.dumps({"prompt": prompt, "n_new": n_new}) + "\n")
        self.proc.stdin.flush()
        got = json.loads(self.proc.stdout.readline())
        return got["seconds"], got["tokens"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def contenders(args, work: Path) -> dict:
    """label -> callable(prompt ids, n) -> (seconds, new ids): ours in --dtype (eager, compiled) and int8, and
    llama.cpp on our f32 and q8_0 GGUF exports when llama-cpp-python is installed."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import peers

    from mpt.infer.gguf_export import GGUFExportConfig, export_gguf
    from mpt.model.prepack import prepack_model
    from mpt.model.quantize import quantize_model

    model = peers.build_issue_model(work).to(DTYPES[args.dtype])
    int8 = quantize_model(copy.deepcopy(model), "int8")  # int8 weights, activations in --dtype

    def ours(m, flag):
        def run(prompt, n):
            start = time.perf_counter()
            out = generate_ids(m, torch.tensor([prompt]), n, compile=flag)
            return time.perf_counter() - start, out[0, len(prompt):].tolist()
        return run

    packed = prepack_model(copy.deepcopy(model))  # what mpt.load gives on CPU (mpt.model.prepack)
    int8_packed = prepack_model(copy.deepcopy(int8))  # mpt.load(..., quantize="int8"): packed int8 weights
    runs = {f"ours {args.dtype} eager": ours(model, False), f"ours {args.dtype} compiled": ours(model, True),
            f"ours {args.dtype} prepacked": ours(packed, False), f"ours {args.dtype} prepacked compiled": ours(packed, True),
            "ours int8 eager": ours(int8, False), "ours int8 compiled": ours(int8, True),
            "ours int8 prepacked": ours(int8_packed, False), "ours int8 prepacked compiled": ours(int8_packed, True)}
    python = peers.llamacpp_python()
    if python is None:
        print(f"llama-cpp-python is not installed in {peers.CACHE / 'llamacpp'} (benchmarks/check_gguf.py makes it): "
              "llama.cpp skipped", flush=True)
        return runs
    for outtype in ("f32", "q8_0") + (("f16",) if args.dtype == "bf16" else ()):  # f16: the 16-bit peer for bf16
        gguf = export_gguf(GGUFExportConfig(src=str(work), dst=str(work / f"model-{outtype}.gguf"), outtype=outtype))
        runs[f"llama.cpp {outtype}"] = LlamaCpp(python, gguf, args.threads, work)
    return runs


def run_llamacpp(args) -> None:
    """Ours against llama.cpp on issue 21's model, each prompt length, interleaved repeats, medians."""
    new, results = args.new_tokens, []
    with tempfile.TemporaryDirectory() as tmp:
        runs = contenders(args, Path(tmp))
        try:
            for n in (int(x) for x in args.prompts.split(",")):
                prompt = torch.randint(0, 50432, (n,), generator=torch.Generator().manual_seed(n)).tolist()
                warm, tokens, times = {}, {}, {label: [] for label in runs}
                for label, run in runs.items():  # untimed: compiles this shape, warms caches
                    warm[label], tokens[label] = run(prompt, new)
                for _ in range(args.repeats):
                    for label, run in runs.items():
                        times[label].append(run(prompt, new)[0])
                ref = tokens[f"ours {args.dtype} eager"]
                for label in runs:
                    t = statistics.median(times[label])
                    same = next((i for i, (a, b) in enumerate(zip(tokens[label], ref, strict=True)) if a != b), new)
                    results.append({"contender": label, "prompt": n, "new_tokens": new, "tok_s": new / t,
                                    "first_run_s": warm[label], "same_as_eager": same})
                print(f"[prompt {n}: " + ", ".join(f"{r['contender']} {r['tok_s']:.1f}" for r in results[-len(runs):])
                      + " tok/s]", flush=True)
        finally:
            for run in runs.values():
                if isinstance(run, LlamaCpp):
                    run.close()
    print_llamacpp(results, args)


def print_llamacpp(results: list[dict], args) -> None:
    by = {(r["contender"], r["prompt"]): r["tok_s"] for r in results}
    peer_of = lambda label: f"llama.cpp {'q8_0' if 'int8' in label else 'f16' if 'bf16' in label else 'f32'}"  # noqa: E731
    print(f"CPU, {args.threads} threads each, batch 1, greedy, {args.new_tokens} new tokens (tok/s over the whole "
          f"call, prefill included), median of {args.repeats} interleaved runs; issue 21's model (d_model 512, "
          f"8 layers, vocab 50,432); torch {torch.__version__}; vs llama.cpp: at the same precision (f32, f16 for "
          f"bf16, q8_0 for int8); llama.cpp's default f16 key/value cache")
    print(f"{'contender':<22} {'prompt':>6} {'tok/s':>8} {'vs llama.cpp':>13} {'first run s':>12}  same tokens as ours eager")
    for r in results:
        peer = by.get((peer_of(r["contender"]), r["prompt"]))
        r["vs_llamacpp"] = round(r["tok_s"] / peer, 2) if peer and r["contender"].startswith("ours") else None
        ratio = f"{r['vs_llamacpp']:.2f}x" if r["vs_llamacpp"] else ""
        print(f"{r['contender']:<22} {r['prompt']:>6} {r['tok_s']:>8.1f} {ratio:>13} {r['first_run_s']:>12.1f}  "
              f"{r['same_as_eager']}/{r['new_tokens']}")
    print(json.dumps({"bench": "decode", "peer": "llamacpp", "device": "cpu", "threads": args.threads,
                      "dtype": args.dtype, "torch": torch.__version__, "results": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", choices=["none", "llamacpp"], default="none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="our weights' dtype (int8 rows: "
                        "its activations)")
    parser.add_argument("--new-tokens", type=int, help="default: 128, 64 with --peer llamacpp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", help="prompt lengths (default: 32,512; 32,1000 with --peer llamacpp)")
    parser.add_argument("--models", default="tiny,small,body")
    args = parser.parse_args()
    peer = args.peer == "llamacpp"
    args.new_tokens = args.new_tokens or (64 if peer else 128)
    args.prompts = args.prompts or ("32,1000" if peer else "32,512")
    torch.set_num_threads(args.threads)
    (run_llamacpp if peer else run_models)(args)


if __name__ == "__main__":
    main()
