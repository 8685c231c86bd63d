"""Run every side-by-side CPU benchmark, then print one table of ratios against targets and one JSON line.

    python benchmarks/run_all.py [--quick]

Each benchmark is its own script (run here as a subprocess, one after another, so they do not compete
for the cores); each prints its own table and ends with a JSON line, which this script collects.
--quick passes smaller sizes (for a smoke run; the figures are then rougher).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(script: str, args: list[str]) -> dict | None:
    print(f"\n=== {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True)
    print(proc.stdout[-4000:], end="")
    if proc.returncode != 0:
        print(f"{script} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1])
    result["seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    q = args.quick
    results = {
        "model": _run("bench_model.py", ["--steps", "3", "--repeats", "1"] if q else []),
        "train": _run("bench_train.py", ["--steps", "5"] if q else []),
        "eval": _run("bench_eval.py", ["--limit", "100"] if q else []),
        "data": _run("bench_data.py", ["--mb", "5", "--repeats", "1"] if q else []),
        "serve": _run("bench_serve.py", ["--requests", "16"] if q else []),
    }
    rows = []
    m = results["model"]
    if m:
        for name, r in m["results"].items():
            target = ("1.3x" if name.startswith("train") else "3x" if "prompt 32" in name else "5x")
            extra = "" if "identical_tokens" not in r else (" (same tokens)" if r["identical_tokens"] else " (TOKENS DIFFER)")
            rows.append(("model vs transformers: " + name, f"{r['ratio']:.2f}x{extra}", target))
    t = results["train"]
    if t:
        for prec, r in t["results"].items():
            rows.append((f"mpt train vs transformers loop ({prec})", f"{r['ratio']:.2f}x", "1.3x"))
    e = results["eval"]
    if e:
        rows.append((f"mpt eval vs lm-eval (PIQA, {e['examples']} examples)",
                     f"{e['speedup']:.2f}x ({e['identical_predictions']}/{e['examples']} same)", "8x"))
    d = results["data"]
    if d:
        r = d["results"]
        rows.append(("mpt prep vs raw tokenizers", f"{r['prep_vs_raw_tokenizers']['ratio']:.2f}x", "0.8x"))
        rows.append(("loader samples/s (0 workers)", f"{r['loader_0_workers']['samples_s']:,.0f}", "50,000"))
    s = results["serve"]
    if s:
        key = next(k for k in s if k.startswith("ratio_"))
        rows.append((f"server aggregate tok/s, {key[6:].replace('_', ' ')}", f"{s[key]:.2f}x", "4x"))
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"\n{'benchmark':<{width}}  {'measured':<28}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:<28}  {target}")
    print(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                      "date": time.strftime("%Y-%m-%d %H:%M"), "quick": q, "results": results}))


if __name__ == "__main__":
    main()
