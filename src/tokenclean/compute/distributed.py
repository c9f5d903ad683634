"""Several processes (``torchrun``, ``accelerate launch``): ranks, the process group, and the few collectives
the library needs.

Every process runs the same code. Scoring shards its batches over the ranks, training is DDP through
``transformers.Trainer``, and only rank 0 writes files (see ``io.atomic_dir``). Under ``accelerate launch
--use_fsdp`` the weights themselves are sharded over the processes (FSDP, for models that do not fit one
device): training is the Trainer's FSDP, and scoring runs the sharded model's forward on every rank in step.
Where a rank reads what rank 0 wrote, a ``barrier`` comes first; where ranks must take the same branch (skip a
finished stage, use a cache entry), the decision is rank 0's or all ranks'. Collectives move tensors only
(nothing is pickled). Outside ``torchrun`` every function here is a no-op.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger("tokenclean")


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
    """Rank 0's ``value`` (any JSON value: a stage record, a decision) on every rank; ``value`` itself in one
    process. Sent as JSON bytes in a tensor, so nothing is pickled."""
    if distributed_world()[1] == 1:
        return value
    import json

    import torch
    import torch.distributed as dist

    device = _collective_device()
    data = json.dumps(value).encode() if dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return json.loads(bytes(buf.cpu().numpy()).decode())


def _collective_device():
    """Where tensors for collectives live: the process's GPU under NCCL (which cannot move CPU tensors), else CPU."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_ranks(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on every rank (e.g. each rank found a cache entry)."""
    if distributed_world()[1] == 1:
        return flag
    import torch
    import torch.distributed as dist

    box = torch.tensor([int(bool(flag))], device=_collective_device())
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    return bool(box.item())


def gather_arrays(arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Every rank's ``arrays`` on every rank: ``out[k][r]`` is rank ``r``'s ``arrays[k]``. The arrays of one index
    share a dtype on all ranks, their lengths may differ. Plain tensor collectives (a length exchange, then one
    padded ``all_gather`` per array), so nothing is pickled; one process returns ``[[a] for a in arrays]``."""
    _, world = distributed_world()
    if world == 1:
        return [[a] for a in arrays]
    import torch
    import torch.distributed as dist

    device = _collective_device()
    sizes = torch.tensor([len(a) for a in arrays], dtype=torch.int64, device=device)
    every = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(every, sizes)
    counts = torch.stack(every).cpu().numpy()  # (world, len(arrays))
    out = []
    for k, a in enumerate(arrays):
        width = max(int(counts[:, k].max()), 1)
        mine = torch.zeros(width, dtype=torch.from_numpy(a[:0]).dtype, device=device)
        mine[: len(a)] = torch.from_numpy(np.ascontiguousarray(a)).to(device)
        parts = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(parts, mine)
        out.append([p[: int(counts[r, k])].cpu().numpy() for r, p in enumerate(parts)])
    return out


def fsdp_requested() -> bool:
    """True when launched with ``accelerate launch --use_fsdp`` (Accelerate's ``ACCELERATE_USE_FSDP``): the Trainer
    shards the weights for training, and ``shard_for_inference`` does for scoring."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1", "yes")


def is_sharded(model: Any) -> bool:
    """True for a model wrapped by FSDP (1 or 2), whose weights live in pieces on the ranks."""
    import torch.distributed as dist

    if not dist.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return isinstance(model, (FSDPModule, FullyShardedDataParallel))


def shard_for_inference(model: Any) -> Any:
    """``model`` sharded over the processes with Accelerate's FSDP settings (``accelerate config`` / ``launch``
    flags: version, wrap policy, mixed precision, CPU offload), for scoring a model that does not fit one device.
    Every rank must then run the same forward calls (see ``scoring.compute_token_losses``)."""
    from accelerate import Accelerator

    _, world = distributed_world()
    model.requires_grad_(False)  # inference only: no fp32 upcast of trainable low-precision weights
    accelerator = Accelerator()
    log.info("scoring with the weights sharded over %d processes (FSDP%d)", world,
             2 if accelerator.is_fsdp2 else 1)
    if accelerator.is_fsdp2:
        from accelerate.utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, model)
    return accelerator.prepare_model(model)  # FSDP1 (its wrapping is skipped in evaluation_mode)
