"""launch.yaml -> a frozen, validated LaunchConfig.

Every key, its type and what is allowed are declared on the dataclasses below and checked by
dino_core.schema (errors name the file, the key, the value and what is allowed); the extra sbatch
options are checked here against what submitit sets itself.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
import typing as tp
from pathlib import Path

import yaml

from dino_core.schema import INF, NAME, NON_EMPTY, build, key_of, spec

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LAUNCH_YAML = REPO_ROOT / "launch.yaml"

EXECUTORS = ("debug", "local", "slurm")

# sbatch options that submitit itself sets: overriding them breaks result collection.
RESERVED_SBATCH = frozenset({"array", "output", "error", "signal", "open-mode", "open_mode"})
SBATCH_NAME = re.compile(r"[a-z][a-z0-9_\-]*")
# The value of an extra sbatch option; YAML reads 2024-01-01 (e.g. for --begin) as a date.
Scalar = tp.Union[str, bool, int, float, datetime.date]


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    """Settings of the ``local`` executor (processes on this machine)."""

    timeout_min: int = spec(1, INF, default=1440)  # submitit kills local jobs after 2 min unless this is set
    tasks_per_node: int = spec(1, INF, default=1)  # >1: DDP processes on this machine (gloo on CPU)
    gpus_per_node: int = spec(0, INF, default=0)  # GPUs made visible to each job (submitit hides them otherwise)
    # With GPUs: processes per GPU at once (a small cell leaves the GPU idle between kernel launches);
    # auto: measured by pipelines/launch/sharing.py. Without GPUs max_parallel applies instead.
    cells_per_gpu: tp.Union[int, str] = spec(1, INF, choices=("auto",), default=1)


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    """Settings of the ``slurm`` executor (sbatch through submitit)."""

    partition: tp.Optional[str] = spec(pattern=NAME, default=None)  # None: the cluster's default partition
    nodes: int = spec(1, INF, default=1)
    gpus_per_node: int = spec(0, INF, default=0)
    tasks_per_node: int = spec(1, INF, default=1)  # one task per GPU for DDP
    cpus_per_task: int = spec(1, INF, default=1)
    mem_gb: tp.Optional[float] = spec(0, INF, open_lo=True, open_hi=True, default=None)  # None: no --mem
    timeout_min: int = spec(1, INF, default=60)
    signal_delay_s: int = spec(0, INF, default=120)  # USR2 this long before the time limit: checkpoint + requeue
    array_parallelism: int = spec(1, INF, default=256)  # at most this many array tasks run at once
    max_num_timeout: int = spec(0, INF, default=3)  # requeues after a timeout (pre-emptions do not count)
    # Extra sbatch options, e.g. {"qos": "high", "account": "proj"}: kept as sorted
    # (key, value) pairs so that the config stays hashable; use .sbatch_extra() for a dict.
    additional_parameters: tp.Tuple[tp.Tuple[str, Scalar], ...] = spec(default=())

    def sbatch_extra(self) -> tp.Dict[str, tp.Any]:
        return dict(self.additional_parameters)


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Where and how cells run. Loaded from launch.yaml by :func:`load_launch_config`."""

    executor: str = spec(choices=EXECUTORS, default="local")
    # submitit pickles and logs (relative: to the repo root)
    folder: str = spec(pattern=NON_EMPTY, default="runs/submitit")
    max_parallel: int = spec(1, INF, default=2)  # local: cells at once (bounded by the CPU cores)
    poll_s: float = spec(0, INF, open_lo=True, open_hi=True, default=10.0)  # seconds between checks of results / squeue
    # a job gone from squeue this long without a result has failed
    stale_s: float = spec(0, INF, open_hi=True, default=30.0)
    local: LocalSettings = spec(default=LocalSettings())
    slurm: SlurmSettings = spec(default=SlurmSettings())

    def to_dict(self) -> tp.Dict[str, tp.Any]:
        out = dataclasses.asdict(self)
        out["slurm"]["additional_parameters"] = self.slurm.sbatch_extra()
        return out

    def replace(self, **overrides: tp.Any) -> "LaunchConfig":
        """A validated copy with dotted-key overrides, e.g. ``{"slurm.partition": "gpu"}``."""
        return _from_dict(_apply_overrides(self.to_dict(), overrides), source="overrides")


def _from_dict(data: tp.Any, source: str = "launch config") -> LaunchConfig:
    if data is None:
        data = {}
    if isinstance(data, dict):
        # a section whose lines are all commented out reads as null in YAML: its defaults
        data = {k: v for k, v in data.items() if not (k in ("local", "slurm") and v is None)}
    cfg = build(LaunchConfig, data, source)
    check_sbatch_options(cfg.slurm.additional_parameters, key_of(source, "slurm.additional_parameters"))
    s = cfg.slurm
    if s.gpus_per_node and s.tasks_per_node != s.gpus_per_node:
        log.warning("%s: slurm.tasks_per_node=%d differs from slurm.gpus_per_node=%d; DDP "
                    "expects one task per GPU", source, s.tasks_per_node, s.gpus_per_node)
    return cfg


def check_sbatch_options(options: tp.Iterable[tp.Tuple[str, tp.Any]], where: str) -> None:
    """Each extra sbatch option (name, value) at `where`: a long option name that submitit does not set."""
    for k, v in options:
        key = f"{where}.{k}"
        if not SBATCH_NAME.fullmatch(k):
            raise ValueError(f"{key}: {k!r} is not a valid sbatch option name; "
                             "allowed: lower-case long option names such as qos, account")
        if k.replace("_", "-") in RESERVED_SBATCH:
            raise ValueError(f"{key} = {v!r} is set by submitit itself; "
                             f"not allowed: {', '.join(sorted(RESERVED_SBATCH))}")


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
