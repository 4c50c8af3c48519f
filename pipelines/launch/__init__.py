"""Submitit launcher: run training cells on this machine, in-process, or on a SLURM cluster.

Launcher settings live in ``launch.yaml``, apart from the experiment parameters in
``params.yaml``: switching between ``local``, ``slurm`` and ``debug`` changes *where* a cell
runs, never *what* it computes, so no result identity or DVC hash depends on this file.

Public API
----------
``LaunchConfig`` / ``load_launch_config(path, overrides)``
    Frozen, validated launcher settings (``ValueError`` naming key, value and allowed values).
``make_executor(cfg, folder=None, *, name=None)``
    A ``submitit.AutoExecutor`` with ``cluster=`` always given explicitly.
``run_cells(fn, args_list, cfg, folder=None, *, poll_s=None, ...)``
    Runs ``fn(*args)`` for every ``args`` of ``args_list`` (SLURM: one job array; local: at most
    ``max_parallel`` processes at a time, with GPUs ``local.cells_per_gpu`` per GPU; debug:
    in-process, one after another) and returns one outcome per cell, in order: the cell's return
    value or a :class:`CellFailed`. It never waits forever: a SLURM job that disappears from
    ``squeue`` (or reaches a final state) without a result (scancel, out of memory, node failure)
    is reported with its stderr path after ``stale_s`` seconds.
``Resumable(fn, *args, **kwargs)``
    Checkpointable callable: on timeout or pre-emption (USR2 from SLURM, ``scontrol requeue``)
    the job is requeued and ``fn`` is called again; ``fn`` resumes from its own checkpoint.
``distributed_env()``
    Inside a submitit job: exports MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE for ``torch.distributed`` (``env://``) and returns them.
``SubmissionError``
    SLURM refused the submission (unknown partition, impossible request); carries sbatch's message.

``python -m pipelines.launch check [--config launch.yaml]`` submits two tiny probe cells with the
configured executor and reports whether the cluster works.

Modules: config (launch.yaml -> LaunchConfig), executors (make_executor, Resumable,
distributed_env), local (cells at once, threads and GPU of the local executor's jobs), sharing
(``local.cells_per_gpu: auto`` measured; ``python -m pipelines.launch.sharing``), jobs (cells,
outcomes, cancellation), squeue (SLURM job states), poll (one check of the running jobs), run
(run_cells), probes (check).
"""
from __future__ import annotations

from .config import DEFAULT_LAUNCH_YAML, EXECUTORS, REPO_ROOT, LaunchConfig, launch_config_from_dict, load_launch_config
from .executors import CellFailed, Resumable, SubmissionError, distributed_env, make_executor
from .local import cores, local_parallelism, local_width
from .probes import probe_cell, probe_counter, probe_counter_expected, probe_distributed, probe_fail, probe_started
from .run import run_cells

__all__ = ["DEFAULT_LAUNCH_YAML", "EXECUTORS", "REPO_ROOT", "CellFailed", "LaunchConfig", "Resumable", "SubmissionError",
           "cores", "distributed_env", "launch_config_from_dict", "load_launch_config", "local_parallelism",
           "local_width", "make_executor", "probe_cell", "probe_counter", "probe_counter_expected", "probe_distributed",
           "probe_fail", "probe_started", "run_cells"]
