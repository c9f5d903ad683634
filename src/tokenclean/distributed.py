"""Several processes (``torchrun``, ``accelerate launch``): ranks, the process group, and the few collectives
the library needs.

Every process runs the same code. Scoring shards its batches over the ranks, training is DDP through
``transformers.Trainer``, and only rank 0 writes files (see ``io.atomic_dir``). Where a rank reads what rank 0
wrote, a ``barrier`` comes first; where ranks must take the same branch (skip a finished stage, use a cache
entry), the decision is rank 0's or all ranks'. Outside ``torchrun`` every function here is a no-op.
"""

from __future__ import annotations

import os
from typing import Any


def process_rank() -> int:
    """This process's global rank, from the ``RANK`` variable that ``torchrun`` sets (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def launched_processes() -> int:
    """How many processes ``torchrun`` started (``WORLD_SIZE``; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 without it): the index of its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of the ``torch.distributed`` group, else (0, 1). Under ``torchrun`` / ``accelerate
    launch`` (``WORLD_SIZE`` > 1) a group that is not initialised yet is started: NCCL with each process on GPU
    ``LOCAL_RANK`` when CUDA is available, else gloo."""
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and launched_processes() > 1:
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if distributed_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object); ``value`` itself in one process."""
    if distributed_world()[1] == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ranks(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on every rank (e.g. each rank found a cache entry)."""
    if distributed_world()[1] == 1:
        return flag
    import torch.distributed as dist

    flags: list = [None] * dist.get_world_size()
    dist.all_gather_object(flags, bool(flag))
    return all(flags)
