"""``micro_batch_size: auto``: the largest power-of-two share of the rank batch whose step fits in memory.

:func:`find_micro_batch_size` probes once, before the first step, identically on every rank, halving
after an out-of-memory. Under FSDP or DDP a rank that runs out of memory would leave its peers waiting
in a collective it never joins, so the ranks meet at every block boundary (:class:`_OutOfMemorySync`)
and abandon a failed attempt together. Not covered: an out-of-memory inside FSDP's own collective
buffers, or in the embedding's backward (the last computation, when memory use is lowest) strands the
peers; the watchdog covers the probe and ends such a job with a message instead of a hang.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from ..ranks import any_rank
from .parallel import unwrap


class _PeerOutOfMemory(RuntimeError):
    """Another rank ran out of memory during this attempt."""


class _OutOfMemorySync:
    """The ranks' meeting points: a one-number all-reduce carrying "I ran out of memory" before each block's
    forward (ahead of FSDP's all-gather), before each block's backward (ahead of its all-gathers) and after
    it (ahead of its gradient reduction).

    Out-of-memory is caught per rank, while the other ranks may go on to a collective (an all-gather, a
    reduce-scatter, a gradient all-reduce) that the failed rank will never join. Between two meeting points
    every rank issues the same collectives before any computation that could run out of memory, so a rank
    that fails reports it at the meeting point its peers reach next, and all of them abandon the attempt
    together. Each attempt ends with exactly one all-reduce that reports a failure, or with one more that
    reports success on all ranks, so the ranks never fall out of step.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.handles = []
        if not dist.is_initialized():
            return
        for block in unwrap(model).transformer.blocks:
            # prepend: meet the peers before FSDP's own hooks issue their all-gathers; a module's
            # full backward hook runs before FSDP's post-backward (which reduce-scatters)
            self.handles.append(block.register_forward_pre_hook(self.meet, prepend=True))
            self.handles.append(block.register_full_backward_pre_hook(self.meet, prepend=True))
            self.handles.append(block.register_full_backward_hook(self.meet, prepend=True))

    def report(self, out_of_memory: bool) -> bool:
        """Tell the peers whether this rank ran out of memory; True if any rank did."""
        return any_rank(out_of_memory, self.device)

    def meet(self, *args) -> None:
        if self.report(False):
            raise _PeerOutOfMemory()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _reset(model: torch.nn.Module) -> None:
    """Bring every rank's FSDP2 state back to "between steps" after an abandoned attempt.

    The ranks stop at different points (the failed rank mid-block, its peers at their next meeting
    point), so some hold gathered parameters or a half-run forward that others do not; without a
    reset the next attempt's all-gathers differ between ranks. ``reset_iter_state`` (on the root)
    reshards every group and clears FSDP's per-iteration trackers; it issues no collective.
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reset_iter_state()


def find_micro_batch_size(fwd, model, batch: dict, device: torch.device, autocast, log,
                          may_run_out: bool | None = None) -> int:
    """Halve from the whole rank batch until a forward + backward fits on every rank.

    ``may_run_out`` defaults to "on CUDA": out-of-memory cannot be caught on CPU.
    """
    size = batch["input_ids"].shape[0]
    if may_run_out is None:
        may_run_out = device.type == "cuda"
    if not may_run_out:
        log(f"micro_batch_size auto: {size} (the whole rank batch; out-of-memory cannot be caught on {device.type})")
        return size
    from torch.distributed.fsdp import FSDPModule

    if dist.is_initialized() and isinstance(model, FSDPModule) and not hasattr(model, "reset_iter_state"):
        raise RuntimeError(f"micro_batch_size auto under FSDP needs FSDPModule.reset_iter_state, which torch "
                           f"{torch.__version__} lacks (2.13 has it); upgrade torch or set train.micro_batch_size")
    sync = _OutOfMemorySync(model, device)
    # DDP reduces gradient buckets from inside backward, at points no block boundary marks; the probe
    # throws its gradients away, so it skips that reduction altogether
    no_sync = getattr(model, "no_sync", contextlib.nullcontext)
    try:
        while True:
            try:
                mb = {k: v[:size].to(device) for k, v in batch.items()}
                with no_sync():
                    with autocast:
                        loss = fwd(**mb).loss
                    sync.meet()  # FSDP's backward starts with the root's all-gather
                    loss.backward()
                failed = sync.report(False)
            except torch.OutOfMemoryError:
                failed = sync.report(True)
            except _PeerOutOfMemory:
                failed = True
            model.zero_grad(set_to_none=True)
            if failed:
                _reset(model)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if not failed:
                log(f"micro_batch_size auto: {size}")
                return size
            if size == 1:
                raise RuntimeError("micro_batch_size auto: even 1 sample does not fit in memory; enable "
                                   "train.activation_checkpointing, shard with FSDP, or shorten the sequences")
            size //= 2
    finally:
        sync.remove()
