"""submitit executors (local processes, SLURM, debug), the checkpointable callable and the
distributed environment inside a job."""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import threading
import typing as tp
from pathlib import Path

import submitit
import submitit.helpers
from submitit.core.utils import DelayedSubmission

from .config import EXECUTORS, REPO_ROOT, LaunchConfig
from .local import local_threads

log = logging.getLogger(__name__)


class SubmissionError(RuntimeError):
    """The scheduler refused the submission; the message carries sbatch's own error."""


class CellFailed(RuntimeError):
    """Outcome of a cell that did not produce a result.

    Attributes: ``index`` (position in args_list), ``job_id``, ``state`` (SLURM state or a
    local description), ``stderr`` (path of the job's stderr log, or None), ``detail``.
    """

    def __init__(self, index: int, job_id: str, state: str, stderr: tp.Optional[Path], detail: str):
        self.index, self.job_id, self.state, self.stderr, self.detail = index, job_id, state, stderr, detail
        msg = f"cell {index} (job {job_id}) failed [{state}]: {detail}"
        if stderr is not None:
            msg += f"\n  stderr: {stderr}"
        super().__init__(msg)

    def __reduce__(self):
        return (CellFailed, (self.index, self.job_id, self.state, self.stderr, self.detail))


def abs_folder(folder: tp.Union[str, Path, None], cfg: LaunchConfig) -> Path:
    f = Path(folder if folder is not None else cfg.folder).expanduser()
    if not f.is_absolute():
        f = REPO_ROOT / f
    return f


def _pythonpath_setup() -> tp.List[str]:
    # Submitted callables are pickled by reference (module + name): make the repo's packages
    # importable in the job whatever the job's working directory is.
    root = shlex.quote(str(REPO_ROOT))
    return [f'export PYTHONPATH={root}"${{PYTHONPATH:+:$PYTHONPATH}}"']


def local_setup(cfg: LaunchConfig, gpu: tp.Optional[int] = None) -> tp.List[str]:
    """Shell lines run before a local job: imports, threads and, given one, the only GPU it sees."""
    lines = _pythonpath_setup() + [local_threads(cfg)]
    return lines + ([f"export CUDA_VISIBLE_DEVICES={gpu}"] if gpu is not None else [])


def make_executor(
    cfg: LaunchConfig,
    folder: tp.Union[str, Path, None] = None,
    *,
    name: tp.Optional[str] = None,
) -> submitit.AutoExecutor:
    """A submitit executor for ``cfg.executor``, ``cluster=`` passed explicitly.

    (AutoExecutor would pick SLURM on its own whenever ``srun`` is on PATH.)
    """
    folder = abs_folder(folder, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.executor == "slurm":
        if shutil.which("sbatch") is None:
            raise SubmissionError("executor 'slurm' selected but 'sbatch' is not on PATH")
        s = cfg.slurm
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                   slurm_max_num_timeout=s.max_num_timeout)
        params: tp.Dict[str, tp.Any] = dict(
            timeout_min=s.timeout_min,
            nodes=s.nodes,
            tasks_per_node=s.tasks_per_node,
            cpus_per_task=s.cpus_per_task,
            gpus_per_node=s.gpus_per_node or None,  # no --gpus-per-node on GPU-less clusters
            mem_gb=s.mem_gb,
            slurm_partition=s.partition,
            slurm_signal_delay_s=s.signal_delay_s,
            slurm_array_parallelism=s.array_parallelism,
            slurm_additional_parameters=s.sbatch_extra() or None,
            slurm_setup=_pythonpath_setup(),
        )
    elif cfg.executor == "local":
        loc = cfg.local
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        params = dict(
            timeout_min=loc.timeout_min,
            tasks_per_node=loc.tasks_per_node,
            gpus_per_node=loc.gpus_per_node,
            local_setup=local_setup(cfg),
        )
    elif cfg.executor == "debug":
        ex = submitit.AutoExecutor(folder=folder, cluster="debug")
        params = {}
    else:  # pragma: no cover - validated in LaunchConfig
        raise ValueError(f"executor = {cfg.executor!r} (allowed values: {', '.join(EXECUTORS)})")
    if name:
        params["name"] = name
    ex.update_parameters(**params)
    return ex


class Resumable(submitit.helpers.Checkpointable):
    """``Resumable(fn, *args, **kwargs)()`` calls ``fn(*args, **kwargs)``.

    On timeout (USR2 ``signal_delay_s`` before the limit) or pre-emption, submitit calls
    :meth:`checkpoint` in global rank 0, which resubmits this same call, and requeues the job
    (``scontrol requeue``). The job also restarts from this call after an external
    ``scontrol requeue``. ``fn`` must therefore resume from its own on-disk checkpoint
    (the training loop resumes from ``out_dir/checkpoint.pth``).
    """

    def __init__(self, fn: tp.Callable[..., tp.Any], *args: tp.Any, **kwargs: tp.Any) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> tp.Any:
        return self.fn(*self.args, **self.kwargs)

    def checkpoint(self, *args: tp.Any, **kwargs: tp.Any) -> DelayedSubmission:
        log.warning("checkpoint requested (timeout or pre-emption): requeueing %s; it resumes "
                    "from its own checkpoint", getattr(self.fn, "__qualname__", self.fn))
        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"Resumable({getattr(self.fn, '__qualname__', self.fn)!s}, {len(self.args)} args)"


_DIST_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def distributed_env() -> tp.Dict[str, str]:
    """Export the torch.distributed ``env://`` variables and return them.

    Inside a submitit job (SLURM or local, any number of tasks) the values come from
    ``submitit.helpers.TorchDistributedEnvironment`` and overwrite any inherited ones (sbatch
    copies the submitter's environment). CUDA_VISIBLE_DEVICES is left alone: a task uses
    ``cuda:LOCAL_RANK`` among the GPUs SLURM gave the job. Outside submitit (torchrun, or a
    plain single process) the existing variables are returned unchanged, with single-process
    defaults for the missing ones (not exported).
    """
    if os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
        env = submitit.helpers.TorchDistributedEnvironment()
        env.export(set_cuda_visible_devices=False, overwrite=True)
        return {k: os.environ[k] for k in _DIST_KEYS}
    defaults = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "0", "WORLD_SIZE": "1",
                "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": os.environ.get("WORLD_SIZE", "1")}
    return {k: os.environ.get(k, defaults[k]) for k in _DIST_KEYS}


@contextlib.contextmanager
def stop_on_signals() -> tp.Iterator[None]:
    """While cells run, SIGTERM / SIGHUP raise KeyboardInterrupt in the driver, on which the submitted
    cells are cancelled (a stopped grid, budget or tune driver leaves no cell training). Only the main
    thread can install handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
