"""Which process this is, joining the others, and the questions all ranks answer together.

Rank and world size: a collective needs the process group's (none: rank 0 of 1), while a data loader
may shard by the rank torchrun gave the process (``RANK`` / ``WORLD_SIZE``) before any group exists.
:func:`join_process_group` starts the group (training and evaluation alike); :func:`any_rank` and
:func:`agreed_problem` are the votes that decide control flow, so every rank takes the same branch.
A leaf module: it imports nothing from ``mpt``, and torch only when asked.
"""

from __future__ import annotations

import os


def launch_env() -> tuple[int, int, int]:
    """torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` for this process; (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def rank_world(from_env: bool = False) -> tuple[int, int]:
    """The initialised process group's (rank, world size); without one (0, 1), or with ``from_env``
    the launcher's (:func:`launch_env`)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if from_env:
        rank, world, _ = launch_env()
        return rank, world
    return 0, 1


def join_process_group(cuda: bool) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1), join the process group once: nccl with each rank on its own
    GPU (``LOCAL_RANK``, set as the current device), gloo on CPUs. Outside torchrun nothing happens."""
    import torch
    import torch.distributed as dist

    rank, world, local_rank = launch_env()
    if world <= 1:
        return
    if cuda:
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():
        return
    backend = "nccl" if cuda else "gloo"
    store = _restart_safe_store(world)
    if store is None:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)


def _restart_safe_store(world: int):
    """The agent's store, under a key prefix of this restart round (None: torch's default env:// store).

    After ``torchrun --max-restarts`` restarts a group, the workers meet again in the agent's store,
    where the previous round's keys still stand: gloo then reads a dead rank's address and times out
    ("connectFullMesh failed ... Connection refused"). A prefix per round keeps the rounds apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timedelta(minutes=10))
    return dist.PrefixStore(f"mpt/round-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def any_rank(yes: bool, device=None) -> bool:
    """True on every rank if ``yes`` on any rank (one all-reduce; every rank must call it).

    ``device``: where the one-number tensor lives (the current GPU under nccl unless given).
    """
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return yes
    if device is None:
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if yes else 0], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def agreed_problem(problem: str | None) -> str | None:
    """Every rank's problem (None: it had none), gathered: the lowest failing rank's on every rank.

    For steps some ranks can fail alone (a write, rank 0's bookkeeping): all ranks then raise the same
    one-line error instead of some waiting forever in the next collective.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return problem
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, problem)
    return next((p if r == 0 else f"rank {r}: {p}" for r, p in enumerate(gathered) if p is not None), None)
