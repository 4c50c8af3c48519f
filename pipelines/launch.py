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
    ``max_parallel`` processes at a time; debug: in-process, one after another) and returns one
    outcome per cell, in order: the cell's return value or a :class:`CellFailed`. It never waits
    forever: a SLURM job that disappears from ``squeue`` (or reaches a final state) without a
    result (scancel, out of memory, node failure) is reported with its stderr path after
    ``stale_s`` seconds.
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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

import submitit
import submitit.helpers
import yaml
from submitit.core.utils import DelayedSubmission

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LAUNCH_YAML = REPO_ROOT / "launch.yaml"

EXECUTORS = ("debug", "local", "slurm")

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

# sbatch options that submitit itself sets: overriding them breaks result collection.
_RESERVED_SBATCH = frozenset({"array", "output", "error", "signal", "open-mode", "open_mode"})


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    """Settings of the ``local`` executor (processes on this machine)."""

    timeout_min: int = 1440  # submitit kills local jobs after 2 min unless this is set
    tasks_per_node: int = 1  # >1: DDP processes on this machine (gloo on CPU)
    gpus_per_node: int = 0  # GPUs made visible to each job (submitit hides GPUs otherwise)


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    """Settings of the ``slurm`` executor (sbatch through submitit)."""

    partition: tp.Optional[str] = None  # None: the cluster's default partition
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1  # one task per GPU for DDP
    cpus_per_task: int = 1
    mem_gb: tp.Optional[float] = None  # None: no --mem (cluster default)
    timeout_min: int = 60
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint + requeue
    array_parallelism: int = 256  # at most this many array tasks run at once
    max_num_timeout: int = 3  # requeues after a timeout (pre-emptions do not count)
    # Extra sbatch options, e.g. {"qos": "high", "account": "proj"}: kept as sorted
    # (key, value) pairs so that the config stays hashable; use .sbatch_extra() for a dict.
    additional_parameters: tp.Tuple[tp.Tuple[str, tp.Any], ...] = ()

    def sbatch_extra(self) -> tp.Dict[str, tp.Any]:
        return dict(self.additional_parameters)


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Where and how cells run. Loaded from launch.yaml by :func:`load_launch_config`."""

    executor: str = "local"
    folder: str = "runs/submitit"  # submitit pickles and logs (relative: to the repo root)
    max_parallel: int = 2  # local: cells at once (bounded by the CPU cores)
    poll_s: float = 10.0  # seconds between checks of results / squeue
    stale_s: float = 30.0  # a job gone from squeue this long without a result has failed
    local: LocalSettings = LocalSettings()
    slurm: SlurmSettings = SlurmSettings()

    def to_dict(self) -> tp.Dict[str, tp.Any]:
        out = dataclasses.asdict(self)
        out["slurm"]["additional_parameters"] = self.slurm.sbatch_extra()
        return out

    def replace(self, **overrides: tp.Any) -> "LaunchConfig":
        """A validated copy with dotted-key overrides, e.g. ``{"slurm.partition": "gpu"}``."""
        return _from_dict(_apply_overrides(self.to_dict(), overrides), source="overrides")


# Per field: (expected python types, predicate on the value, description of allowed values)
_Rule = tp.Tuple[tp.Tuple[type, ...], tp.Callable[[tp.Any], bool], str]


def _int_ge(n: int) -> _Rule:
    return ((int,), lambda v: v >= n, f"integers >= {n}")


def _num_gt(n: float) -> _Rule:
    return ((int, float), lambda v: math.isfinite(v) and v > n, f"numbers > {n}")


def _num_ge(n: float) -> _Rule:
    return ((int, float), lambda v: math.isfinite(v) and v >= n, f"numbers >= {n}")


_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

_TOP_RULES: tp.Dict[str, _Rule] = {
    "executor": ((str,), lambda v: v in EXECUTORS, ", ".join(EXECUTORS)),
    "folder": ((str,), lambda v: bool(v.strip()), "a non-empty path"),
    "max_parallel": _int_ge(1),
    "poll_s": _num_gt(0),
    "stale_s": _num_ge(0),
}
_LOCAL_RULES: tp.Dict[str, _Rule] = {
    "timeout_min": _int_ge(1),
    "tasks_per_node": _int_ge(1),
    "gpus_per_node": _int_ge(0),
}
_SLURM_RULES: tp.Dict[str, _Rule] = {
    "partition": ((str, type(None)), lambda v: v is None or bool(_NAME_RE.match(v)),
                  "null or a partition name ([A-Za-z0-9_.-]+)"),
    "nodes": _int_ge(1),
    "gpus_per_node": _int_ge(0),
    "tasks_per_node": _int_ge(1),
    "cpus_per_task": _int_ge(1),
    "mem_gb": ((int, float, type(None)), lambda v: v is None or (math.isfinite(v) and v > 0),
               "null or numbers > 0"),
    "timeout_min": _int_ge(1),
    "signal_delay_s": _int_ge(0),
    "array_parallelism": _int_ge(1),
    "max_num_timeout": _int_ge(0),
    "additional_parameters": ((dict,), lambda v: True, "a mapping of sbatch options"),
}


def _type_name(types: tp.Tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check(source: str, key: str, value: tp.Any, rule: _Rule) -> tp.Any:
    types, ok, allowed = rule
    # bool is an int in Python; "true" for a count is a typo, not a number.
    if isinstance(value, bool) or not isinstance(value, types):
        raise ValueError(
            f"{source}: {key} = {value!r} has type {type(value).__name__}, expected "
            f"{_type_name(types)} (allowed values: {allowed})"
        )
    if not ok(value):
        raise ValueError(f"{source}: {key} = {value!r} is not allowed (allowed values: {allowed})")
    return value


def _check_section(source: str, prefix: str, data: tp.Any, rules: tp.Dict[str, _Rule]) -> dict:
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: {prefix.rstrip('.')} = {data!r} has type {type(data).__name__}, "
            f"expected a mapping (allowed keys: {', '.join(sorted(rules))})"
        )
    unknown = sorted(set(data) - set(rules), key=str)
    if unknown:
        k = unknown[0]
        raise ValueError(
            f"{source}: unknown key {prefix}{k} (value {data[k]!r}); "
            f"allowed keys: {', '.join(prefix + r for r in sorted(rules))}"
        )
    return {k: _check(source, prefix + k, v, rules[k]) for k, v in data.items()}


def _from_dict(data: tp.Any, source: str = "launch config") -> LaunchConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    sections = ("local", "slurm")
    top = _check_section(source, "", {k: v for k, v in data.items() if k not in sections},
                         {**_TOP_RULES, **{k: ((dict,), lambda v: True, "a mapping") for k in sections}})
    local = _check_section(source, "local.", data.get("local") or {}, _LOCAL_RULES)
    slurm = _check_section(source, "slurm.", data.get("slurm") or {}, _SLURM_RULES)

    extra = slurm.get("additional_parameters", {}) or {}
    for k, v in extra.items():
        key = f"slurm.additional_parameters.{k}"
        if not isinstance(k, str) or not re.match(r"^[a-z][a-z0-9_\-]*$", k):
            raise ValueError(f"{source}: {key} is not a valid sbatch option name "
                             "(allowed values: lower-case long option names such as qos, account)")
        if k.replace("_", "-") in _RESERVED_SBATCH:
            raise ValueError(f"{source}: {key} = {v!r} is set by submitit itself "
                             f"(not allowed: {', '.join(sorted(_RESERVED_SBATCH))})")
        if isinstance(v, (dict, list, tuple)) or v is None:
            raise ValueError(f"{source}: {key} = {v!r} has type {type(v).__name__}, "
                             "expected str, int, float or bool (allowed values: scalars)")
    slurm["additional_parameters"] = tuple(sorted(extra.items()))
    if "mem_gb" in slurm and isinstance(slurm["mem_gb"], int):
        slurm["mem_gb"] = float(slurm["mem_gb"])
    for k in ("poll_s", "stale_s"):
        if k in top:
            top[k] = float(top[k])
    cfg = LaunchConfig(**top, local=LocalSettings(**local), slurm=SlurmSettings(**slurm))
    s = cfg.slurm
    if s.gpus_per_node and s.tasks_per_node != s.gpus_per_node:
        log.warning("%s: slurm.tasks_per_node=%d differs from slurm.gpus_per_node=%d; DDP "
                    "expects one task per GPU", source, s.tasks_per_node, s.gpus_per_node)
    return cfg


def _apply_overrides(data: dict, overrides: tp.Optional[tp.Mapping[str, tp.Any]]) -> dict:
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return data


def load_launch_config(
    path: tp.Union[str, Path, None] = None,
    overrides: tp.Optional[tp.Mapping[str, tp.Any]] = None,
) -> LaunchConfig:
    """Load and validate launch.yaml (default: the repo's), then apply dotted-key overrides.

    The environment variable ``DINO_LAUNCH_EXECUTOR`` (local | slurm | debug), when set,
    overrides ``executor`` (handy in CI); explicit ``overrides`` win over it.
    """
    path = Path(path) if path is not None else DEFAULT_LAUNCH_YAML
    if path.exists():
        with open(path) as f:
            data = yaml.safe_load(f)
    else:
        raise FileNotFoundError(f"launch config {path} not found")
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    merged: tp.Dict[str, tp.Any] = {}
    env_exec = os.environ.get("DINO_LAUNCH_EXECUTOR")
    if env_exec:
        merged["executor"] = env_exec
    merged.update(overrides or {})
    return _from_dict(_apply_overrides(data or {}, merged), source=str(path))


def launch_config_from_dict(data: tp.Mapping[str, tp.Any], source: str = "launch config") -> LaunchConfig:
    """Validate a plain mapping (same schema as launch.yaml)."""
    return _from_dict(json.loads(json.dumps(dict(data))), source=source)


# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------


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


def _abs_folder(folder: tp.Union[str, Path, None], cfg: LaunchConfig) -> Path:
    f = Path(folder if folder is not None else cfg.folder).expanduser()
    if not f.is_absolute():
        f = REPO_ROOT / f
    return f


def _pythonpath_setup() -> tp.List[str]:
    # Submitted callables are pickled by reference (module + name): make the repo's packages
    # importable in the job whatever the job's working directory is.
    root = shlex.quote(str(REPO_ROOT))
    return [f'export PYTHONPATH={root}"${{PYTHONPATH:+:$PYTHONPATH}}"']


def make_executor(
    cfg: LaunchConfig,
    folder: tp.Union[str, Path, None] = None,
    *,
    name: tp.Optional[str] = None,
) -> submitit.AutoExecutor:
    """A submitit executor for ``cfg.executor``, ``cluster=`` passed explicitly.

    (AutoExecutor would pick SLURM on its own whenever ``srun`` is on PATH.)
    """
    folder = _abs_folder(folder, cfg)
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
            local_setup=_pythonpath_setup() + [_local_threads(cfg)],
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


def _local_threads(cfg: LaunchConfig) -> str:
    # cells share the cores: each process gets cores / (cells at once x tasks) intra-op threads,
    # not torch's default of one per core each, which oversubscribes the machine
    per_task = max(1, cores() // (local_parallelism(cfg) * max(1, cfg.local.tasks_per_node)))
    return f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{per_task}}}"


def local_parallelism(cfg: LaunchConfig) -> int:
    """Cells run at once by the local executor: max_parallel bounded by the CPU cores."""
    return max(1, min(cfg.max_parallel, cores() // max(1, cfg.local.tasks_per_node)))


def cores() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# Checkpointable callable and distributed environment
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# squeue polling
# ---------------------------------------------------------------------------------------------

# Final states: the job will not run again (a requeued job goes back to PENDING instead).
_FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT",
})


# Pending reasons that never resolve by themselves: the request can never be satisfied
# (clusters without EnforcePartLimits=ALL accept such jobs) or a dependency failed. Held jobs
# (JobHeldUser/JobHeldAdmin) are waited for: bound those with max_wait_s.
_HOPELESS_REASONS = frozenset({
    "BadConstraints", "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit",
    "InvalidAccount", "InvalidQOS", "DependencyNeverSatisfied",
})


def squeue_states(job_ids: tp.Iterable[str]) -> tp.Optional[tp.Dict[str, tp.Tuple[str, str]]]:
    """``{job_id: (state, pending_reason)}`` for the given ids, in any state.

    Array tasks appear as ``<array id>_<task>``. Jobs SLURM no longer knows are absent.
    Returns None when squeue itself fails (controller unreachable), so that callers can tell
    "gone" from "unknown".
    """
    masters = sorted({str(j).split("_")[0] for j in job_ids})
    if not masters:
        return {}
    cmd = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r",
           "--jobs=" + ",".join(masters)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("squeue failed: %s", e)
        return None
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # a single, already purged job id
            return {}
        log.warning("squeue failed (rc=%d): %s", proc.returncode, proc.stderr.strip())
        return None
    states: tp.Dict[str, tp.Tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) < 2:
            continue
        reason = parts[2].strip() if len(parts) == 3 else ""
        states[parts[0]] = (parts[1].split()[0].rstrip("+"), reason)  # "CANCELLED by 0"
    return states


# ---------------------------------------------------------------------------------------------
# run_cells
# ---------------------------------------------------------------------------------------------


def _tail(path: tp.Optional[Path], n: int = 15) -> str:
    try:
        if path is None or not path.exists():
            return ""
        lines = path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


class _Cell:
    __slots__ = ("index", "job", "stale_since", "submitted_at", "done_at", "outcome", "finished")

    def __init__(self, index: int) -> None:
        self.index = index
        self.job: tp.Any = None
        self.stale_since: tp.Optional[float] = None
        self.submitted_at = 0.0
        self.done_at = 0.0
        self.outcome: tp.Any = None
        self.finished = False


def _task_jobs(job: tp.Any, all_tasks: bool) -> tp.List[tp.Any]:
    n = job.num_tasks
    return [job.task(i) for i in range(n)] if all_tasks else [job.task(0)]


def _has_results(job: tp.Any, all_tasks: bool) -> bool:
    return all(t.paths.result_pickle.exists() for t in _task_jobs(job, all_tasks))


def _stderr_path(job: tp.Any) -> tp.Optional[Path]:
    try:
        return Path(job.task(0).paths.stderr)
    except Exception:  # pragma: no cover - defensive
        return None


def _collect(cell: _Cell, all_tasks: bool) -> tp.Any:
    """Outcome of a cell whose result pickle(s) exist."""
    job = cell.job
    values = []
    for t in _task_jobs(job, all_tasks):
        exc = t.exception()
        if exc is not None:
            detail = str(exc).strip()
            return CellFailed(cell.index, job.job_id, "FAILED", _stderr_path(t),
                              f"the cell raised an exception:\n{detail}")
        values.append(t.result())
    return values if all_tasks else values[0]


def _failure_from_job(cell: _Cell, state: str, why: str) -> CellFailed:
    stderr = _stderr_path(cell.job)
    tail = _tail(stderr)
    detail = why + (f"; last lines of stderr:\n{tail}" if tail else "; stderr is empty or missing")
    return CellFailed(cell.index, cell.job.job_id, state, stderr, detail)


def _cancel(jobs: tp.Sequence[tp.Any], executor_kind: str) -> None:
    if executor_kind == "slurm":
        ids = sorted({str(j.job_id) for j in jobs})  # "<array>_<task>": only these cells
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
    elif executor_kind == "local":
        for j in jobs:
            try:
                j.cancel(check=False)
            except Exception:  # pragma: no cover - defensive
                pass


def _run_debug(fn, args_list, cfg, folder, name, on_submit, all_tasks, checkpointable) -> list:
    ex = make_executor(cfg, folder, name=name)
    outcomes: list = []
    t0 = time.time()
    for i, args in enumerate(args_list):
        job = ex.submit(Resumable(fn, *args) if checkpointable else _Bound(fn, args))
        if on_submit is not None:
            on_submit([job])
        old = os.environ.get("SUBMITIT_DEBUG_JOB_ID")
        os.environ["SUBMITIT_DEBUG_JOB_ID"] = job.job_id
        try:
            value = job.submission().result()  # in-process; no pdb on failure
            outcomes.append([value] if all_tasks else value)
        except Exception as e:  # noqa: BLE001 - a failed cell must not stop the others
            failed = CellFailed(i, job.job_id, "FAILED", None, f"{type(e).__name__}: {e}")
            failed.__cause__ = e
            outcomes.append(failed)
        finally:
            if old is None:
                os.environ.pop("SUBMITIT_DEBUG_JOB_ID", None)
            else:
                os.environ["SUBMITIT_DEBUG_JOB_ID"] = old
        _log_progress(name, i + 1, len(args_list), sum(isinstance(o, CellFailed) for o in outcomes),
                      0, t0)
    return outcomes


def _log_progress(name: str, done: int, total: int, failed: int, running: int, t0: float) -> None:
    elapsed = time.time() - t0
    eta = "?"
    if done:
        eta = f"{elapsed / done * (total - done):.0f}s"
    log.info("[%s] cells done %d/%d (failed %d, running %d), elapsed %.0fs, ETA %s",
             name, done, total, failed, running, elapsed, eta)


def run_cells(
    fn: tp.Callable[..., tp.Any],
    args_list: tp.Sequence[tp.Sequence[tp.Any]],
    cfg: LaunchConfig,
    folder: tp.Union[str, Path, None] = None,
    *,
    poll_s: tp.Optional[float] = None,
    stale_s: tp.Optional[float] = None,
    name: tp.Optional[str] = None,
    checkpointable: bool = True,
    all_tasks: bool = False,
    on_submit: tp.Optional[tp.Callable[[tp.List[tp.Any]], None]] = None,
    max_wait_s: tp.Optional[float] = None,
    raise_on_failure: bool = False,
) -> tp.List[tp.Any]:
    """Run ``fn(*args)`` for each ``args`` in ``args_list``; one outcome per cell, in order.

    Each element of ``args_list`` is a tuple (or list) of positional arguments; any other value
    is the single argument of its cell. ``fn`` must be importable (module-level in a package):
    submitit pickles it by reference.

    An outcome is the cell's return value (with ``all_tasks=True``: the list of every task's
    return value, for multi-task jobs), or a :class:`CellFailed` naming the job's stderr log.
    A failed cell does not stop the others.

    - ``slurm``: all cells go out as ONE job array (``array_parallelism`` at once). Every
      ``poll_s`` seconds result files are checked and ``squeue`` is asked for the states; a job
      in a final state or gone from squeue for ``stale_s`` seconds without a result has failed
      (cancelled, out of memory, node failure): the grid never waits forever.
      Requeued jobs (pre-emption, timeout with checkpoint) are waited for.
    - ``local``: at most ``local_parallelism(cfg)`` processes at once (submitit's local
      executor would start them all together).
    - ``debug``: in-process, one after another.

    ``checkpointable`` wraps each call in :class:`Resumable` (requeue on timeout/pre-emption).
    ``on_submit(jobs)`` is called with the submitted submitit jobs (e.g. to record job ids).
    ``max_wait_s`` bounds the whole wait (remaining jobs are cancelled and reported failed).
    On KeyboardInterrupt or any error while waiting, the submitted jobs are cancelled.
    """
    args_list = [tuple(a) if isinstance(a, (list, tuple)) else (a,) for a in args_list]
    name = name or getattr(fn, "__name__", "cells")
    poll = float(poll_s if poll_s is not None else cfg.poll_s)
    stale = float(stale_s if stale_s is not None else cfg.stale_s)
    if not args_list:
        return []
    if cfg.executor == "debug":
        outcomes = _run_debug(fn, args_list, cfg, folder, name, on_submit, all_tasks, checkpointable)
    else:
        outcomes = _run_pool(fn, args_list, cfg, folder, name, poll, stale, checkpointable,
                             all_tasks, on_submit, max_wait_s)
    failures = [o for o in outcomes if isinstance(o, CellFailed)]
    if failures:
        log.error("[%s] %d/%d cells failed:\n%s", name, len(failures), len(outcomes),
                  "\n".join(str(f).splitlines()[0] + (f"  (stderr: {f.stderr})" if f.stderr else "")
                            for f in failures))
        if raise_on_failure:
            raise RuntimeError(f"{len(failures)}/{len(outcomes)} cells failed; first: {failures[0]}")
    return outcomes


def _submit_slurm_array(ex, calls, cfg: LaunchConfig) -> tp.List[tp.Any]:
    jobs = []
    try:
        with ex.batch():
            for call in calls:
                jobs.append(ex.submit(call))
    except Exception as e:  # submitit raises FailedJobError(stderr of sbatch)
        msg = str(e).strip() or repr(e)
        s = cfg.slurm
        raise SubmissionError(
            f"sbatch refused the job array ({len(calls)} cells; partition={s.partition or '<default>'}, "
            f"nodes={s.nodes}, tasks_per_node={s.tasks_per_node}, cpus_per_task={s.cpus_per_task}, "
            f"gpus_per_node={s.gpus_per_node}, mem_gb={s.mem_gb}, timeout_min={s.timeout_min}): {msg}"
        ) from e
    return jobs


def _run_pool(fn, args_list, cfg, folder, name, poll, stale, checkpointable, all_tasks,
              on_submit, max_wait_s) -> list:
    ex = make_executor(cfg, folder, name=name)
    kind = cfg.executor
    cells = [_Cell(i) for i in range(len(args_list))]
    calls = [Resumable(fn, *a) if checkpointable else _Bound(fn, a) for a in args_list]
    total = len(cells)
    t0 = time.time()
    to_start = list(range(total))
    width = local_parallelism(cfg) if kind == "local" else total
    if kind == "local" and width < cfg.max_parallel:
        log.info("[%s] local: max_parallel=%d bounded to %d by the CPU cores", name,
                 cfg.max_parallel, width)

    def start_some() -> None:
        running = sum(1 for c in cells if c.job is not None and not c.finished)
        n = min(width - running, len(to_start))
        if n <= 0:
            return
        idx = [to_start.pop(0) for _ in range(n)]
        if kind == "slurm":
            jobs = _submit_slurm_array(ex, [calls[i] for i in idx], cfg)
        else:
            jobs = [ex.submit(calls[i]) for i in idx]
        now = time.time()
        for i, j in zip(idx, jobs):
            cells[i].job, cells[i].submitted_at = j, now
        ids = sorted({str(j.job_id) for j in jobs})
        log.info("[%s] submitted %d cell(s) to %s: job(s) %s; logs in %s", name, len(jobs), kind,
                 ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""), ex.folder)
        if on_submit is not None:
            on_submit(list(jobs))

    last_log = 0.0
    last_done = -1
    squeue_failing_since: tp.Optional[float] = None
    try:
        start_some()
        while True:
            now = time.time()
            active = [c for c in cells if c.job is not None and not c.finished]
            # 1) results on disk
            for c in active:
                if _has_results(c.job, all_tasks):
                    c.outcome, c.finished, c.done_at = _collect(c, all_tasks), True, time.time()
            active = [c for c in active if not c.finished]
            # 2) jobs that died without a result
            if active and kind == "slurm":
                states = squeue_states(c.job.job_id for c in active)
                if states is None:
                    squeue_failing_since = squeue_failing_since or now
                    if now - squeue_failing_since > max(stale, 300.0):
                        for c in active:
                            c.outcome = _failure_from_job(
                                c, "UNKNOWN", f"squeue has failed for {now - squeue_failing_since:.0f}s "
                                "(slurmctld unreachable?)")
                            c.finished = True
                else:
                    squeue_failing_since = None
                    for c in active:
                        st, reason = states.get(str(c.job.job_id), (None, ""))
                        hopeless = st == "PENDING" and reason in _HOPELESS_REASONS
                        if st is None or st in _FINAL_STATES or hopeless:
                            c.stale_since = c.stale_since or now
                            if now - c.stale_since >= stale and not _has_results(c.job, all_tasks):
                                if hopeless:
                                    _cancel([c.job], kind)
                                    why = f"job can never start (pending, reason {reason}); cancelled"
                                elif st is None:
                                    why = "job is no longer known to squeue, without writing a result"
                                else:
                                    why = f"job ended in state {st} without writing a result"
                                c.outcome, c.finished = _failure_from_job(c, st or "GONE", why), True
                        else:
                            c.stale_since = None
            elif active and kind == "local":
                for c in active:
                    if c.job.done():  # controller process exited
                        c.stale_since = c.stale_since or now
                        if now - c.stale_since >= min(stale, 5.0) and not _has_results(c.job, all_tasks):
                            c.outcome, c.finished = _failure_from_job(
                                c, c.job.state, "local job process exited without writing a result"), True
            # 3) overall bound
            if max_wait_s is not None and now - t0 > max_wait_s:
                left = [c for c in cells if not c.finished]
                _cancel([c.job for c in left if c.job is not None], kind)
                for c in left:
                    if c.job is None:
                        c.outcome = CellFailed(c.index, "-", "NOT_SUBMITTED", None,
                                               f"max_wait_s={max_wait_s} reached before submission")
                    else:
                        c.outcome = _failure_from_job(c, "CANCELLED",
                                                      f"max_wait_s={max_wait_s} reached; job cancelled")
                    c.finished = True
            done = sum(c.finished for c in cells)
            running = sum(1 for c in cells if c.job is not None and not c.finished)
            if done != last_done or time.time() - last_log > 60:
                _log_progress(name, done, total,
                              sum(isinstance(c.outcome, CellFailed) for c in cells if c.finished),
                              running, t0)
                last_log, last_done = time.time(), done
            if done == total:
                break
            if to_start:
                start_some()
            time.sleep(poll)
    except BaseException:
        _cancel([c.job for c in cells if c.job is not None and not c.finished], kind)
        raise
    return [c.outcome for c in cells]


class _Bound:
    """Picklable ``fn(*args)`` without checkpointing."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __call__(self):
        return self.fn(*self.args)


# ---------------------------------------------------------------------------------------------
# Cluster probes: tiny importable cells used by the tests and by `python -m pipelines.launch check`
# (submitit pickles callables by reference, so they must live in an importable module).
# ---------------------------------------------------------------------------------------------


def probe_cell(i: int, out_dir: str, sleep_s: float = 0.0, fail: bool = False) -> int:
    """Writes ``cell_<i>.json`` with start/end wall-clock times and returns ``i * i``.

    With ``fail=True`` it raises instead (a cell whose code fails).
    """
    start = time.time()
    time.sleep(sleep_s)
    if fail:
        raise RuntimeError(f"probe cell {i} failed on purpose")
    end = time.time()
    rec = {"i": i, "start": start, "end": end, "pid": os.getpid(), "host": os.uname().nodename,
           "job": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    _atomic_write(Path(out_dir) / f"cell_{i}.json", json.dumps(rec))
    return i * i


def probe_started(i: int, out_dir: str, sleep_s: float) -> int:
    """Marks ``started_<i>`` then behaves like :func:`probe_cell` (for kill/cancel tests)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    _atomic_write(Path(out_dir) / f"started_{i}", str(time.time()))
    return probe_cell(i, out_dir, sleep_s)


def probe_fail(message: str) -> None:
    raise RuntimeError(message)


def probe_distributed(timeout_s: float = 120.0) -> tp.Dict[str, tp.Any]:
    """Exports the DDP variables, joins a gloo group and all-reduces ``rank + 1``."""
    import datetime

    import torch
    import torch.distributed as dist

    env = distributed_env()
    dist.init_process_group(backend="gloo", init_method="env://",
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        t = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(t)
        return {"rank": dist.get_rank(), "world_size": dist.get_world_size(),
                "local_rank": int(env["LOCAL_RANK"]), "sum": float(t.item()),
                "master": f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"}
    finally:
        dist.destroy_process_group()


def _counter_step(value: int, step: int) -> int:
    return (value * 31 + step * step + 7) % 1_000_003


def probe_counter_expected(steps: int) -> int:
    value = 1
    for step in range(steps):
        value = _counter_step(value, step)
    return value


def probe_counter(progress_file: str, steps: int, step_s: float) -> tp.Dict[str, tp.Any]:
    """A resumable 'training loop': one step every ``step_s`` s, progress saved after each step.

    Restarted (requeue), it resumes from the progress file. Returns the final value, the
    number of starts and the step each start resumed from.
    """
    path = Path(progress_file)
    state = {"step": 0, "value": 1, "starts": []}
    if path.exists():
        state = json.loads(path.read_text())
    state["starts"].append(state["step"])
    _atomic_write(path, json.dumps(state))
    while state["step"] < steps:
        time.sleep(step_s)
        state["value"] = _counter_step(state["value"], state["step"])
        state["step"] += 1
        _atomic_write(path, json.dumps(state))
    return {"value": state["value"], "starts": len(state["starts"]), "resumed_from": state["starts"]}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_cli(argv: tp.Optional[tp.List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.launch",
                                     description="Launcher utilities")
    sub = parser.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("check", help="submit two tiny probe cells with the configured executor")
    chk.add_argument("--config", default=str(DEFAULT_LAUNCH_YAML))
    chk.add_argument("--executor", choices=EXECUTORS)
    chk.add_argument("--folder", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = {"executor": args.executor} if args.executor else {}
    cfg = load_launch_config(args.config, overrides)
    folder = _abs_folder(args.folder, cfg) / "check"
    outs = run_cells(probe_cell, [(i, str(folder / "cells"), 1.0) for i in range(2)], cfg,
                     folder, poll_s=min(cfg.poll_s, 2.0), name="launch-check", max_wait_s=600)
    ok = outs == [0, 1]
    for o in outs:
        print(o if not isinstance(o, CellFailed) else f"FAILED: {o}")
    print(f"launcher check with executor={cfg.executor}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_check_cli())
