"""Run under torchrun: several training runs, one after another, in one process group.

Starting Python, torch and transformers costs each rank seconds on a small machine, so the
strategy matrix pays for it once per world size instead of once per cell. Each job is a full
`mpt.train.train(recipe)` with the recipe given, exactly what `mpt train` calls. A job's error is
recorded in its outcome and the next job runs: one failing cell fails its own test, not the matrix.
A job's "before" (["module:function", *args]) prepares its folder on rank 0 while the other ranks wait.
Usage: torchrun --nproc_per_node N tests/train/dist_worker.py JOBS.json
"""

import importlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

from mpt.config import from_dict
from mpt.train import Recipe, train

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: a job's "before" names tests.*
jobs = json.loads(open(sys.argv[1]).read())
for job in jobs:
    outcome = {"error": None, "log": []}

    def log(message: str, outcome=outcome) -> None:
        outcome["log"].append(message)
        print(message, flush=True)

    try:
        if "before" in job:  # ["module:function", *args]: run on rank 0 before the job, the other ranks waiting
            failed = [None]
            if not dist.is_initialized() or dist.get_rank() == 0:
                try:
                    module, name = job["before"][0].split(":")
                    getattr(importlib.import_module(module), name)(*job["before"][1:])
                except Exception as err:
                    failed[0] = f"before the job: {type(err).__name__}: {err}"
            if dist.is_initialized():
                dist.broadcast_object_list(failed, src=0)
            if failed[0]:
                raise RuntimeError(failed[0])
        result = train(from_dict(Recipe, job["recipe"]), log=log)
        outcome.update(steps=result.steps, checkpoint=str(result.checkpoint), icl=result.icl)
    except Exception as err:  # the test decides whether the error was the expected one
        outcome["error"] = f"{type(err).__name__}: {err}"
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(job["outcome"], "w") as f:
            json.dump(outcome, f)
    print(f"job {job['name']}: {({'error': outcome['error']} if outcome['error'] else 'ok')}", flush=True)
