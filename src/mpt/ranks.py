"""Which process this is: its rank and the world size, found one way everywhere.

Two questions with different answers before a process group exists: a collective needs the process
group's rank (none: a single process, rank 0 of 1), while a data loader may shard by the rank
torchrun gave the process (``RANK`` / ``WORLD_SIZE``) before, or without, any process group.
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
