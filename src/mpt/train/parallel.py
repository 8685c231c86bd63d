"""Parallelism applied from outside the model: process group, FSDP2 / DDP, activation checkpointing.

The model is a plain ``nn.Module``; this file wraps it (as torchtitan does). ``fully_shard`` goes
on every block and then on the root, so each block's parameters are gathered just before use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..ranks import join_process_group, launch_env, rank_world


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_choice: str) -> Dist:
    """Join the torchrun process group if there is one; pick the device."""
    cuda = torch.cuda.is_available()
    if device_choice == "cuda" and not cuda:
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=cpu (or auto)")
    use_cuda = cuda and device_choice != "cpu"
    _, world, local_rank = launch_env()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    join_process_group(use_cuda)
    rank, _ = rank_world()
    return Dist(rank, world, local_rank, device)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP's wrapper (FSDP2 and per-block compile change the module in place: it is its own)."""
    return getattr(model, "module", model)


def parallelize(model: nn.Module, strategy: str, sharding: str, world_size: int,
                activation_checkpointing: bool | int, replicas: int = 1, device_type: str = "cpu",
                compile: bool = False, bf16_params: bool = False) -> nn.Module:
    """Return the module to train. ``strategy`` auto = FSDP2 when there is more than one rank.

    Order (as torchtitan applies them): activation checkpointing around blocks, then ``compile`` of
    each block in place (``nn.Module.compile``: the parameter names, hence checkpoints, stay the
    same, and FSDP's hooks stay outside the compiled graphs), then sharding. ``activation_checkpointing``
    True checkpoints every block; an int N checkpoints every Nth (selective: less recomputation, more
    memory). ``bf16_params`` (bf16 training under FSDP): FSDP2 gathers parameters in bf16 and reduces
    gradients in fp32 (``MixedPrecisionPolicy``), halving all-gather traffic; the sharded master
    weights and optimizer state stay fp32.
    """
    blocks = model.transformer.blocks
    every = int(activation_checkpointing)
    if every:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(blocks):
            if i % every == 0:
                blocks[i] = checkpoint_wrapper(block)
    if compile:
        for block in blocks:
            block.compile()
    if strategy == "auto":
        strategy = "fsdp" if world_size > 1 else "none"
    if strategy in ("fsdp", "hsdp", "ddp") and world_size == 1 and not dist.is_initialized():
        return model  # one process: nothing to shard or synchronise
    if strategy in ("fsdp", "hsdp"):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = None
        if strategy == "hsdp":
            from torch.distributed.device_mesh import init_device_mesh

            if world_size % replicas:
                raise ValueError(f"parallel.replicas={replicas} must divide the {world_size} ranks (hsdp shards "
                                 "within each replica group)")
            mesh = init_device_mesh(device_type, (replicas, world_size // replicas),
                                    mesh_dim_names=("replicate", "shard"))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params \
            else MixedPrecisionPolicy()
        reshard = sharding == "full"  # grad_op: keep gathered params from forward for backward
        for block in blocks:
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
        fully_shard(model, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    return model


def all_reduce_sum(value: float | torch.Tensor, device: torch.device) -> float:
    """The sum over ranks, as a Python float: the one host synchronisation of whatever it reduces."""
    t = torch.as_tensor(value, dtype=torch.float64, device=device).clone()
    if dist.is_initialized():
        dist.all_reduce(t)
    return float(t.item())
