"""Run under torchrun: `mpt.train.train` with ``micro_batch_size: auto`` while rank 1 runs out of memory.

A CPU cannot run out of memory the way a GPU does, so rank 1 raises ``torch.OutOfMemoryError`` itself
(the exception CUDA raises) whenever a micro-batch is larger than ``fits``, at the point the job
names: ``forward`` (inside a block's forward), ``backward`` (inside a block's backward) or ``head``
(the backward through the final norm, before any block's backward). The probe is told that memory
can run out (on CPU it otherwise takes the whole batch). Everything else is the real training run.
Usage: torchrun --nproc_per_node 2 tests/train/oom_worker.py JOBS.json
"""

import json
import sys

import torch
import torch.distributed as dist

import mpt.train.loop as loop
from mpt.config import from_dict
from mpt.train import Recipe, train
from mpt.train.microbatch import find_micro_batch_size
from mpt.train.parallel import unwrap


def _out_of_memory(*_):
    raise torch.OutOfMemoryError("injected: CUDA out of memory")


def _inject(model, where: str, fits: int) -> list:
    model = unwrap(model)
    block = model.transformer.blocks[-1]

    def too_big(x) -> bool:
        return x.shape[0] > fits

    def forward_pre(module, args):
        if too_big(args[0]):
            _out_of_memory()

    def on_backward_of(module, args, output):
        if too_big(output) and output.requires_grad:
            output.register_hook(_out_of_memory)

    if where == "forward":
        return [block.ffn.register_forward_pre_hook(forward_pre)]
    if where == "backward":
        return [block.ffn.register_forward_hook(on_backward_of)]
    if where == "head":
        return [model.transformer.norm_f.register_forward_hook(on_backward_of)]
    raise ValueError(where)


def probe_with(where: str | None, fits: int, tried: list):
    def probe(fwd, model, batch, device, autocast, log):
        handles = _inject(model, where, fits) if where and dist.get_rank() == 1 else []
        try:
            size = find_micro_batch_size(fwd, model, batch, device, autocast, log, may_run_out=True)
        finally:
            for h in handles:
                h.remove()
        tried.append(size)
        return size
    return probe


jobs = json.loads(open(sys.argv[1]).read())
for job in jobs:
    tried: list[int] = []
    loop.find_micro_batch_size = probe_with(job.get("oom_at"), job.get("fits", 2), tried)
    result = train(from_dict(Recipe, job["recipe"]), log=print)
    if dist.get_rank() == 0:
        with open(job["outcome"], "w") as f:
            json.dump({"steps": result.steps, "chosen": tried}, f)
    print(f"job {job['name']}: chose {tried}", flush=True)
