"""Typed, validated view of params.yaml.

params.yaml is the single source of defaults: these dataclasses have no defaults of
their own, every field must be given, and every value is checked (type, range, choices)
before any work starts (schema.py). Errors name the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .schema import INF, build, check_cross_fields, spec


@dataclass(frozen=True)
class DataConfig:
    dataset: str = spec(choices=("shapes", "fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder"))
    root: str = spec()
    image_size: int = spec(8, 4096)        # eval resize/center-crop size
    num_train: int = spec(0, INF)          # 0 = whole split; shapes: images to generate
    num_val: int = spec(0, INF)            # the select split (val)
    num_test: int = spec(0, INF)           # the report split (test, after test_skip)
    test_skip: int = spec(0, INF)
    num_workers: int = spec(0, 64)
    download: bool = spec()
    skip_corrupt: bool = spec()


@dataclass(frozen=True)
class ModelConfig:
    arch: str = spec(choices=("vit_custom", "vit_tiny", "vit_small", "vit_base"))
    patch_size: int = spec(1, 64)
    embed_dim: int = spec(8, 4096)         # used by vit_custom only
    depth: int = spec(1, 64)
    num_heads: int = spec(1, 64)
    drop_path_rate: float = spec(0, 0.9)
    attn_impl: str = spec(choices=("auto", "explicit", "sdpa"))


@dataclass(frozen=True)
class HeadConfig:
    out_dim: int = spec(2, 1 << 20)        # K
    hidden_dim: int = spec(8, 65536)
    bottleneck_dim: int = spec(2, 65536)
    nlayers: int = spec(1, 8)
    use_bn: bool = spec()
    norm_last_layer: bool = spec()
    freeze_last_layer: int = spec(0, INF)  # epochs
    predictor: bool = spec()               # Table 7 row 6


@dataclass(frozen=True)
class LossConfig:
    kind: str = spec(choices=("ce", "mse", "infonce"))
    normalization: str = spec(choices=("centering", "none", "sinkhorn_knopp", "softmax_batch"))
    sharpening: bool = spec()
    student_temp: float = spec(0, 10, open_lo=True)
    teacher_temp: float = spec(0, 10)      # 0: argmax teacher (App. D "Sharpening")
    warmup_teacher_temp: float = spec(0, 10)
    warmup_teacher_temp_epochs: int = spec(0, INF)
    center_momentum: float = spec(0, 1)
    sk_iters: int = spec(1, 100)
    queue_size: int = spec(1, 1 << 22)     # InfoNCE memory of negatives
    infonce_temp: float = spec(0, 10, open_lo=True)


@dataclass(frozen=True)
class TeacherConfig:
    variant: str = spec(choices=("ema", "student_copy", "previous_iteration", "previous_epoch"))
    momentum: float = spec(0, 1)


@dataclass(frozen=True)
class CropsConfig:
    global_size: int = spec(4, 4096)
    local_size: int = spec(4, 4096)
    local_number: int = spec(0, 64)
    global_scale: tuple[float, float] = spec(0, 1)
    local_scale: tuple[float, float] = spec(0, 1)
    flip_prob: float = spec(0, 1)
    jitter: tuple[float, float, float, float] = spec(0, 1)   # brightness, contrast, saturation, hue
    jitter_prob: float = spec(0, 1)
    grayscale_prob: float = spec(0, 1)
    blur_prob: tuple[float, float, float] = spec(0, 1)   # global 1, global 2, local
    blur_radius: tuple[float, float] = spec(0, 100)
    solarize_prob: float = spec(0, 1)      # global 2 only
    rotation: float = spec(0, 180)         # degrees, per view; 0 = the paper (no rotation)
    backend: str = spec(choices=("pil", "tensor"))   # pil: per image (multicrop.py); tensor: per batch


@dataclass(frozen=True)
class OptimConfig:
    name: str = spec(choices=("adamw", "sgd"))
    lr: float = spec(0, 10, open_lo=True)   # at batch 256, scaled linearly
    min_lr: float = spec(0, 10)
    warmup_epochs: int = spec(0, INF)
    weight_decay: float = spec(0, 10)
    weight_decay_end: float = spec(0, 10)
    clip_grad: float = spec(0, INF)        # per-parameter norm; 0 disables
    batch_size: int = spec(1, 1 << 20)     # per process


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = spec(1, INF)
    precision: str = spec(choices=("auto", "fp32", "bf16", "fp16"))   # auto: see device.resolve_precision
    seed: int = spec(0, INF)
    saveckp_freq: int = spec(1, INF)
    device: str = spec(choices=("auto", "cpu", "cuda"))
    log_every: int = spec(1, INF)          # steps between progress lines
    objective: str = spec(choices=("dino", "supervised", "none"))   # none: the ViT at its initialisation
    compile: bool = spec()                 # torch.compile student and teacher (fused kernels; same math)


@dataclass(frozen=True)
class EvalConfig:
    knn_k: tuple[int, ...] = spec(1, INF)
    knn_temp: float = spec(0, 10, open_lo=True)
    batch_size: int = spec(1, 1 << 20)
    linear_epochs: int = spec(0, INF)
    linear_lr: tuple[float, ...] = spec(0, 100)   # base lrs at batch 256, swept (paper: per model)
    linear_batch_size: int = spec(1, 1 << 20)
    n_last_blocks: int = spec(1, 64)
    avgpool_patchtokens: bool = spec()
    attn_threshold: float = spec(0, 1)


# Keys added after runs were stored, each with the value that reproduces those runs. A stored
# config (a run folder's config.yaml) may lack them: `Config.from_stored` reads it as that value,
# and the run store's cell hash (pipelines/store.py) leaves such a key out while it holds that
# value, so cells trained before the key existed keep their identity. params.yaml must give them.
LATER_KEYS: dict[tuple[str, str], Any] = {("crops", "rotation"): 0, ("crops", "backend"): "pil",
                                          ("data", "num_test"): 0, ("data", "test_skip"): 0,
                                          ("train", "objective"): "dino", ("train", "compile"): False}


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
        cfg = Config(**{name: build(hints[name], d[name], f"{source}:{name}") for name in sections})
        check_cross_fields(cfg, source)
        return cfg

    @staticmethod
    def from_stored(d: dict, source: str) -> "Config":
        """A config written by an earlier version: keys it predates (LATER_KEYS) read as off."""
        d = {name: dict(v) if isinstance(v, dict) else v for name, v in d.items()}
        for (section, key), value in LATER_KEYS.items():
            if isinstance(d.get(section), dict):
                d[section].setdefault(key, value)
        return Config.from_dict(d, source)


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
    from .checkpoint import atomic_write_text   # checkpoint imports torch; config stays light
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=True))
