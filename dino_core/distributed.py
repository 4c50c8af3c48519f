"""Process-group set-up and collectives. Single process is the default path: every
collective is guarded by ``dist.is_initialized()`` and is the identity without it."""
from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)


def env_ranks() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun variables, else from SLURM; None if neither."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_LOCALID", 0))
    return None


def init_distributed(device: str) -> tuple[int, int]:
    """Start the process group if the environment asks for several processes.

    nccl on GPU, gloo on CPU; MASTER_ADDR/PORT must be set (torchrun, or the submitit
    launcher's export). Returns (rank, world_size); (0, 1) when single-process.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    ranks = env_ranks()
    if ranks is None or ranks[1] == 1:
        return 0, 1
    rank, world, local = ranks
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend, rank=rank, world_size=world)
    global _OWNED
    _OWNED = True
    log.info("process group: rank %d/%d (local %d), backend %s", rank, world, local, backend)
    return rank, world


_OWNED = False   # True while the process group is the one init_distributed started


def release() -> None:
    """Leave the process group init_distributed started (after a barrier); no-op otherwise.

    train() calls it on return, so what follows runs per process: rank 0 evaluates alone
    (a collective that only rank 0 entered would hang). A group started by the caller stays.
    """
    global _OWNED
    if _OWNED and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _OWNED = False


def is_main() -> bool:
    """Rank 0 of the group; without a group (single process, or after release()) the rank the
    environment gives (torchrun / SLURM / submitit), so that other ranks stay non-main."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    ranks = env_ranks()
    return ranks is None or ranks[0] == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """In-place sum over processes (identity single-process)."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate equal-shaped tensors of all processes along dim 0 (rank order)."""
    if not dist.is_initialized():
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
