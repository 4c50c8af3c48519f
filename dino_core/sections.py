"""The sections of params.yaml (data, model, head, loss, teacher, crops, optim, train, eval) as
frozen dataclasses: every field declares its type and what is allowed (schema.spec), none has a
default of its own (params.yaml gives every value). dino_core.config assembles them into Config.
"""
from __future__ import annotations

from dataclasses import dataclass

from .schema import INF, spec


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
