"""Typed, validated view of params.yaml.

params.yaml is the single source of defaults: these dataclasses have no defaults of
their own, every field must be given, and every value is checked (type, range, choices)
before any work starts. Errors name the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

INF = float("inf")


def _f(lo: float | None = None, hi: float | None = None, choices: tuple | None = None,
       open_lo: bool = False) -> Any:
    """A field with validation metadata: closed range [lo, hi] (or (lo, hi] if open_lo)."""
    return field(metadata={"lo": lo, "hi": hi, "choices": choices, "open_lo": open_lo})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f(choices=("shapes", "fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder"))
    root: str = _f()
    image_size: int = _f(8, 4096)          # eval resize/center-crop size
    num_train: int = _f(0, INF)            # 0 = whole split; shapes: images to generate
    num_val: int = _f(0, INF)
    num_workers: int = _f(0, 64)
    download: bool = _f()
    skip_corrupt: bool = _f()


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _f(choices=("vit_custom", "vit_tiny", "vit_small", "vit_base"))
    patch_size: int = _f(1, 64)
    embed_dim: int = _f(8, 4096)           # used by vit_custom only
    depth: int = _f(1, 64)
    num_heads: int = _f(1, 64)
    drop_path_rate: float = _f(0, 0.9)
    attn_impl: str = _f(choices=("auto", "explicit", "sdpa"))


@dataclass(frozen=True)
class HeadConfig:
    out_dim: int = _f(2, 1 << 20)          # K
    hidden_dim: int = _f(8, 65536)
    bottleneck_dim: int = _f(2, 65536)
    nlayers: int = _f(1, 8)
    use_bn: bool = _f()
    norm_last_layer: bool = _f()
    freeze_last_layer: int = _f(0, INF)    # epochs
    predictor: bool = _f()                 # Table 7 row 6


@dataclass(frozen=True)
class LossConfig:
    kind: str = _f(choices=("ce", "mse", "infonce"))
    normalization: str = _f(choices=("centering", "none", "sinkhorn_knopp", "softmax_batch"))
    sharpening: bool = _f()
    student_temp: float = _f(0, 10, open_lo=True)
    teacher_temp: float = _f(0, 10, open_lo=True)
    warmup_teacher_temp: float = _f(0, 10, open_lo=True)
    warmup_teacher_temp_epochs: int = _f(0, INF)
    center_momentum: float = _f(0, 1)
    sk_iters: int = _f(1, 100)
    queue_size: int = _f(1, 1 << 22)       # InfoNCE memory of negatives
    infonce_temp: float = _f(0, 10, open_lo=True)


@dataclass(frozen=True)
class TeacherConfig:
    variant: str = _f(choices=("ema", "student_copy", "previous_iteration", "previous_epoch"))
    momentum: float = _f(0, 1)


@dataclass(frozen=True)
class CropsConfig:
    global_size: int = _f(4, 4096)
    local_size: int = _f(4, 4096)
    local_number: int = _f(0, 64)
    global_scale: tuple[float, float] = _f(0, 1)
    local_scale: tuple[float, float] = _f(0, 1)
    flip_prob: float = _f(0, 1)
    jitter: tuple[float, float, float, float] = _f(0, 1)   # brightness, contrast, saturation, hue
    jitter_prob: float = _f(0, 1)
    grayscale_prob: float = _f(0, 1)
    blur_prob: tuple[float, float, float] = _f(0, 1)        # global 1, global 2, local
    blur_radius: tuple[float, float] = _f(0, 100)
    solarize_prob: float = _f(0, 1)                          # global 2 only


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f(choices=("adamw", "sgd"))
    lr: float = _f(0, 10, open_lo=True)    # at batch 256, scaled linearly
    min_lr: float = _f(0, 10)
    warmup_epochs: int = _f(0, INF)
    weight_decay: float = _f(0, 10)
    weight_decay_end: float = _f(0, 10)
    clip_grad: float = _f(0, INF)          # per-parameter norm; 0 disables
    batch_size: int = _f(1, 1 << 20)       # per process


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(1, INF)
    precision: str = _f(choices=("auto", "fp32", "bf16", "fp16"))   # auto: see train.resolve_precision
    seed: int = _f(0, INF)
    saveckp_freq: int = _f(1, INF)
    device: str = _f(choices=("auto", "cpu", "cuda"))
    log_every: int = _f(1, INF)            # steps between progress lines


@dataclass(frozen=True)
class EvalConfig:
    knn_k: tuple[int, ...] = _f(1, INF)
    knn_temp: float = _f(0, 10, open_lo=True)
    batch_size: int = _f(1, 1 << 20)
    linear_epochs: int = _f(0, INF)
    linear_lr: tuple[float, ...] = _f(0, 100)   # base lrs at batch 256, swept (paper: per model)
    linear_batch_size: int = _f(1, 1 << 20)
    n_last_blocks: int = _f(1, 64)
    avgpool_patchtokens: bool = _f()
    attn_threshold: float = _f(0, 1)


@dataclass(frozen=True)
class Config:
    data: DataConfig
    model: ModelConfig
    head: HeadConfig
    loss: LossConfig
    teacher: TeacherConfig
    crops: CropsConfig
    optim: OptimConfig
    train: TrainConfig
    eval: EvalConfig

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, section: str, **kw: Any) -> "Config":
        """Copy with some fields of one section changed (validated)."""
        d = self.to_dict()
        d[section].update(kw)
        return Config.from_dict(d)

    @staticmethod
    def from_dict(d: dict, source: str = "params", extra_sections: tuple[str, ...] = ()) -> "Config":
        sections = {f.name: f.type for f in dataclasses.fields(Config)}
        unknown = set(d) - set(sections) - set(extra_sections)
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {sorted(unknown)}; allowed: "
                             f"{sorted(sections) + sorted(extra_sections)}")
        missing = set(sections) - set(d)
        if missing:
            raise ValueError(f"{source}: missing section(s) {sorted(missing)}")
        hints = typing.get_type_hints(Config)
        return Config(**{name: _build(hints[name], d[name], f"{source}:{name}") for name in sections})


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    missing = set(fields) - set(raw)
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _check(f"{where}.{k}", raw[k], hints[k], fields[k].metadata) for k, f in fields.items()})


def _check(key: str, value: Any, typ: Any, meta: dict) -> Any:
    origin = typing.get_origin(typ)
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        n = None if (len(args) == 2 and args[1] is Ellipsis) else len(args)
        if n is not None and len(value) != n:
            raise ValueError(f"{key}: expected {n} values, got {len(value)} ({value!r})")
        if n is None and not value:
            raise ValueError(f"{key}: expected at least one value, got an empty list")
        elem = args[0]
        out = tuple(_check(f"{key}[{i}]", v, elem, meta) for i, v in enumerate(value))
        if n == 2 and elem is float and "scale" in key and out[0] > out[1]:
            raise ValueError(f"{key}: lower bound {out[0]} > upper bound {out[1]} in {list(value)!r}; "
                             f"allowed: [lower, upper] with lower <= upper, each in [{meta['lo']}, {meta['hi']}]")
        return out
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value):
            value = float(value)   # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    elif typ is str and not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {value!r}")
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    if choices is not None and value not in choices:
        raise ValueError(f"{key}: {value!r} is not allowed; allowed: {list(choices)}")
    if lo is not None:
        low_bad = value <= lo if meta.get("open_lo") else value < lo
        if low_bad or value > hi or value != value:   # value != value: NaN passes both comparisons
            lb = "(" if meta.get("open_lo") else "["
            raise ValueError(f"{key}: {value!r} is out of range {lb}{lo}, {hi}]")
    return value


def load_params(path: str | Path) -> dict:
    """Read params.yaml into a plain dict (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with open(path) as fh:
        d = yaml.safe_load(fh)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return d


def merge(base: dict, diff: dict, where: str = "diff") -> dict:
    """Deep-merge a YAML diff into params; a diff may only change keys that exist."""
    out = json.loads(json.dumps(base))
    for k, v in diff.items():
        if k not in out:
            raise ValueError(f"{where}: unknown key {k!r}; allowed: {sorted(out)}")
        if isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = merge(out[k], v, f"{where}.{k}")
        else:
            out[k] = v
    return out


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config next to a run's outputs (atomically)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True))
    tmp.replace(path)
