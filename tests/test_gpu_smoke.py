"""`bash benchmarks/gpu.sh --smoke`: every path of the GPU benchmark at tiny sizes on the CPU.

The GPU script cannot run in CI, so this runs each of its sections (`mpt train` read from its own
metrics.jsonl beside a transformers loop, compiled/eager/transformers decode at batch 1 and in a
batch, the chunked Great Gatsby prefill, `mpt eval` vs lm-eval) as a subprocess, and checks its JSON.
It takes about 25 s on 2 shared cores once inductor's on-disk cache holds the tiny decode graphs; with
a cold cache, compiling its two decode shapes (batch 1 and 4) on the CPU makes it about 90 s. The
smoke trains without `train.compile` (compiling blocks on CPU would add more); the GPU run compiles.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MPT_SHARED", ROOT.parent / "shared"))


@pytest.mark.skipif(not (SHARED / "data/eval/piqa.jsonl").exists(), reason="needs the shared data")
def test_gpu_script_smoke_runs_every_section():
    pytest.importorskip("lm_eval")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu.sh"), "--smoke"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    assert {r["section"] for r in rows} == {"train", "decode", "batch", "gatsby", "eval"}
    assert result["compiled_decode_fell_back"] == 0
    train = {r["impl"]: r for r in rows if r["section"] == "train"}
    assert set(train) == {"mpt train", "transformers loop"} and train["mpt train"]["steps"] == 2
    assert all(r["tok_s"] > 0 for r in train.values())
    decode = [r for r in rows if r["section"] in ("decode", "batch")]
    assert {r["impl"] for r in decode} == {"ours compiled", "ours eager", "transformers"}
    assert all(r["identical_tokens"] for r in decode), decode  # fp32 tiny model: every path gives the same tokens
    (gatsby,) = [r for r in rows if r["section"] == "gatsby"]
    assert gatsby["forwards"] == -(-gatsby["tokens"] // gatsby["chunk"]) > 1 and gatsby["new_tokens"] == 4
    evals = [r for r in rows if r["section"] == "eval"]
    assert len(evals) == 4 and all(r["identical_predictions"] == "4/4" for r in evals)
