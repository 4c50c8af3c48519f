"""Entry point of a grid cell in a multi-process (DDP) job: every task of a submitit job, or
every process started by torchrun, calls :func:`train_cell_ddp`.

It exports the ``torch.distributed`` variables of the job (``launch.distributed_env``:
submitit's SLURM/local job environment; under torchrun the variables are already set), then
runs :func:`pipelines.cell.run_cell`: ``dino_core.train`` starts the process group from
RANK/WORLD_SIZE (``nccl`` on GPU, ``gloo`` on CPU), every rank trains, rank 0 evaluates and
writes the cell's files. With one task it is exactly ``run_cell``.

``optim.batch_size`` is per process (as ``batch_size_per_gpu`` in the official code): W
processes with batch B train like one process with batch W*B (tests/test_distributed.py).
"""
from __future__ import annotations

import logging
import os

import torch

from .cell import run_cell
from .launch import distributed_env

log = logging.getLogger(__name__)


def _configure_logging(rank: str) -> None:
    """INFO logs of the training loop into the job's log files (submitit leaves the root
    logger unconfigured, so the epoch lines and "resumed from" would be lost)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO,
                            format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s")


def _set_threads() -> None:
    """One intra-op thread pool per task sized to the CPUs SLURM gave it (without this every
    task of a node starts one thread per core: oversubscription, tens of times slower)."""
    if "OMP_NUM_THREADS" in os.environ:
        return  # torch already follows it
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and int(cpus) > 0:
        torch.set_num_threads(int(cpus))


def train_cell_ddp(cell_dir: str, params: dict) -> dict:
    """Train + evaluate one cell in every process of a (possibly) multi-process job.

    Returns the cell summary on rank 0 (what ``run_cells`` collects from task 0) and the
    training metrics on the other ranks. Idempotent and resumable like ``run_cell``: a job
    requeued after pre-emption resumes from ``cell_dir/checkpoint.pth``.
    """
    env = distributed_env()
    _configure_logging(env["RANK"])
    _set_threads()
    if int(env["WORLD_SIZE"]) > 1:
        log.info("cell %s: rank %s/%s (local %s), master %s:%s", cell_dir, env["RANK"],
                 env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"], env["MASTER_PORT"])
    try:
        return run_cell(cell_dir, params)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
