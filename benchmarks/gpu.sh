#!/usr/bin/env bash
# Every GPU measurement in one command, under 8 minutes on one H100/H200 (benchmarks/bench_gpu.py):
# `mpt train` tokens/s and MFU for MPT-125M / 350M / 1B at seq 2048 beside transformers' MPT-1B;
# MPT-7B decode at batch 1 after 128- and 1,800-token prompts (ours compiled, ours eager, transformers;
# tokens compared) and at batch 16; The Great Gatsby read by chunked prefill, then decode;
# `mpt eval` vs lm-eval on PIQA + HellaSwag with MPT-1B bf16.
#
#   bash benchmarks/gpu.sh            # on a CUDA machine
#   bash benchmarks/gpu.sh --smoke    # every code path at tiny sizes on the CPU (tests/test_gpu_smoke.py)
#
# Other arguments go to bench_gpu.py (e.g. --only decode,gatsby --train-steps 30).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python benchmarks/bench_gpu.py "$@"
