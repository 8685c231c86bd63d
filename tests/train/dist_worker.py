"""Run under torchrun: several training runs, one after another, in one process group.

Starting Python, torch and transformers costs each rank seconds on a small machine, so the
strategy matrix pays for it once per world size instead of once per cell. Each job is a full
`mpt.train.train(recipe)` with the recipe given, exactly what `mpt train` calls. A job's error is
recorded in its outcome and the next job runs: one failing cell fails its own test, not the matrix.
Usage: torchrun --nproc_per_node N tests/train/dist_worker.py JOBS.json
"""

import json
import sys

import torch.distributed as dist

from mpt.config import from_dict
from mpt.train import Recipe, train

jobs = json.loads(open(sys.argv[1]).read())
for job in jobs:
    outcome = {"error": None, "log": []}

    def log(message: str, outcome=outcome) -> None:
        outcome["log"].append(message)
        print(message, flush=True)

    try:
        result = train(from_dict(Recipe, job["recipe"]), log=log)
        outcome.update(steps=result.steps, checkpoint=str(result.checkpoint), icl=result.icl)
    except Exception as err:  # the test decides whether the error was the expected one
        outcome["error"] = f"{type(err).__name__}: {err}"
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(job["outcome"], "w") as f:
            json.dump(outcome, f)
    print(f"job {job['name']}: {({'error': outcome['error']} if outcome['error'] else 'ok')}", flush=True)
