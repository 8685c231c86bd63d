"""``micro_batch_size: auto``: the largest power-of-two share of the rank batch whose step fits in memory.

The probe runs once, before the first step, identically on every rank. Out-of-memory is caught per
rank, but under FSDP or DDP the other ranks may meanwhile sit in a collective (an all-gather) that
the failed rank will never join. So every block's forward and backward first meets the other
ranks in a one-number all-reduce carrying "I ran out of memory": a rank that fails reports it at
its next meeting point, which its peers reach too, and all of them abandon the attempt together.
Each attempt ends with exactly one all-reduce that reports a failure, or with one more that
reports success on all ranks, so the ranks never fall out of step. (An out-of-memory inside
FSDP's own all-gather can still strand its peers; the watchdog covers the probe for that case.)

Known gap: in a 2-rank gloo run with an injected out-of-memory error, the ranks abandoned the failed
attempts together, but the FSDP2 state left by a forward cut short on one rank then made the next
attempt's collectives differ between ranks (a mismatch, not a clean fit). Until that is fixed, set
an explicit ``micro_batch_size`` for multi-rank FSDP jobs on GPUs whose memory is tight.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _PeerOutOfMemory(RuntimeError):
    """Another rank ran out of memory during this attempt."""


class _OutOfMemorySync:
    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.handles = []
        if not dist.is_initialized():
            return
        for block in model.transformer.blocks:
            # prepend: meet the peers before FSDP's own hook issues its all-gather
            self.handles.append(block.register_forward_pre_hook(self._meet, prepend=True))
            self.handles.append(block.register_full_backward_pre_hook(self._meet, prepend=True))

    def report(self, out_of_memory: bool) -> bool:
        """Tell the peers whether this rank ran out of memory; True if any rank did."""
        if not dist.is_initialized():
            return out_of_memory
        flag = torch.tensor([1.0 if out_of_memory else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _meet(self, *args) -> None:
        if self.report(False):
            raise _PeerOutOfMemory()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _reshard(model: torch.nn.Module) -> None:
    """An abandoned attempt may leave FSDP parameters gathered: free them before the next one."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


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
    sync = _OutOfMemorySync(model, device)
    try:
        while True:
            try:
                mb = {k: v[:size].to(device) for k, v in batch.items()}
                with autocast:
                    loss = fwd(**mb).loss
                loss.backward()
                failed = sync.report(False)
            except torch.OutOfMemoryError:
                failed = sync.report(True)
            except _PeerOutOfMemory:
                failed = True
            model.zero_grad(set_to_none=True)
            if failed:
                _reshard(model)
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
