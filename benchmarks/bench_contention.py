"""What a busy CPU costs: one small training workload, alone and beside a competing process.

A tiny model on a CPU runs many short parallel regions; OpenMP's threads wait between them by
spinning (``OMP_WAIT_POLICY`` unset: libgomp spins for a while before sleeping). On an idle machine
that is fastest; when another process wants the same cores, spinning threads burn the time slices
the other threads need, and a run can slow down far more than the machine's share. This measures
the workload (forward + backward + optimizer steps of an MPT with d_model 256) in a fresh process
for each wait policy, with the machine idle and with a competitor (another process running the
same kind of work) on all cores, and reports the slowdown each policy suffers.

    python benchmarks/bench_contention.py [--steps 30]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORK = r"""
import sys, time, torch
from mpt import MPTConfig, MPTForCausalLM
torch.manual_seed(0)
model = MPTForCausalLM(MPTConfig(d_model=256, n_heads=4, n_layers=4, vocab_size=2048, max_seq_len=128))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(0, 2048, (8, 128))
steps = int(sys.argv[1])
forever = steps == 0
for _ in range(2):  # warm-up
    model(ids, labels=ids).loss.backward(); opt.step(); opt.zero_grad()
start = time.perf_counter()
n = 0
while forever or n < steps:
    model(ids, labels=ids).loss.backward(); opt.step(); opt.zero_grad()
    n += 1
print(time.perf_counter() - start)
"""


def run(steps: int, policy: str | None, busy: bool) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    competitor = None
    if busy:  # the same work forever, with torch's default policy, as another user's job would run
        other = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        competitor = subprocess.Popen([sys.executable, "-c", WORK, "0"], env=other, stdout=subprocess.DEVNULL)
        time.sleep(3)  # let it start computing
    try:
        out = subprocess.run([sys.executable, "-c", WORK, str(steps)], env=env, capture_output=True, text=True,
                             check=True)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    rows = []
    for policy in (None, "PASSIVE"):
        idle = run(args.steps, policy, busy=False)
        busy = run(args.steps, policy, busy=True)
        rows.append({"policy": policy or "default (spin)", "idle_s": idle, "busy_s": busy, "slowdown": busy / idle})
    print(f"{'OMP_WAIT_POLICY':<16}{'idle s':>9}{'busy s':>9}{'slowdown':>10}")
    for r in rows:
        print(f"{r['policy']:<16}{r['idle_s']:>9.2f}{r['busy_s']:>9.2f}{r['slowdown']:>9.1f}x")
    print(json.dumps({"bench": "contention", "steps": args.steps, "cores": os.cpu_count(), "rows": rows}))


if __name__ == "__main__":
    main()
