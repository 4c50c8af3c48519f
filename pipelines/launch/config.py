"""launch.yaml -> a frozen, validated LaunchConfig (errors name the key, the value and what is allowed)."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import typing as tp
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LAUNCH_YAML = REPO_ROOT / "launch.yaml"

EXECUTORS = ("debug", "local", "slurm")


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
