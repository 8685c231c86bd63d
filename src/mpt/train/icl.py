"""In-context-learning evaluation on the live model during training (``eval.icl`` in the recipe).

``mpt eval``'s harness runs on every rank at once, the examples split across ranks by length. The
ranks run different numbers of forward passes, so no forward may contain a collective: under FSDP
every parameter is gathered once before the evaluation and stays gathered until it ends, and a DDP
model is evaluated through its inner module. The per-example rows are then gathered (a collective
every rank reaches). RNG states are restored afterwards, so an evaluated run trains exactly like
one that is not evaluated.
"""

from __future__ import annotations

import contextlib
import os

from .recipe import ICLSection
from .rng import rng_state, set_rng_state


@contextlib.contextmanager
def _gathered(model, reshard_after_forward: bool):
    """Every FSDP-managed parameter unsharded on every rank for the duration (no-op without FSDP)."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield
    finally:
        for module in sharded:
            module.reshard()
            module.set_reshard_after_forward(reshard_after_forward, recurse=False)


class InTrainingEval:
    """Tasks and tokenizer loaded (and every task file validated) before the first training step."""

    def __init__(self, cfg: ICLSection, tokenizer: str | None) -> None:
        from ..data.tokenize import load_tokenizer
        from ..eval.suite import load_suite, resolve_task_file
        from ..eval.tasks import load_task_records

        if tokenizer is None:
            raise ValueError("eval.icl needs a tokenizer: set eval.icl.tokenizer (a tokenizer.json or a folder "
                             "with one), since the data records none")
        self.cfg = cfg
        self.data_dir = cfg.data_dir or os.environ.get("MPT_EVAL_DATA")
        self.tasks = [t for name in cfg.tasks for t in load_suite(name).tasks]
        for task in self.tasks:
            load_task_records(task, resolve_task_file(task, self.data_dir))
        self.tokenizer = load_tokenizer(tokenizer)

    def due(self, step: int) -> bool:
        return bool(self.cfg.every_batches) and step % self.cfg.every_batches == 0

    def run(self, model, reshard_after_forward: bool) -> dict[str, float]:
        """{"icl/<task>/<k>-shot": accuracy}; every rank must call this at the same step."""
        from ..eval.harness import evaluate

        saved = rng_state()
        try:
            with _gathered(model, reshard_after_forward):
                out = evaluate(model, self.tokenizer, self.tasks, data_dir=self.data_dir, limit=self.cfg.limit,
                               batch_size=self.cfg.batch_size, progress=False)
        finally:
            set_rng_state(saved)
        return {f"icl/{t.key}": t.accuracy for t in out.tasks}
