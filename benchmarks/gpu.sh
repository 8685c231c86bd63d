#!/usr/bin/env bash
# Every GPU measurement in one command, under 8 minutes on one H100:
# training MFU for MPT-125M / 350M / 1B at seq 2048 (and transformers' MPT-1B), MPT-7B decode at batch 1
# with prompts of 128 and 1,800 tokens (ours vs transformers), and the Great Gatsby prefill.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python benchmarks/bench_gpu.py --iters 5
python benchmarks/bench_gatsby.py
