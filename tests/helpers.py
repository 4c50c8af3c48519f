"""Small, stable builders shared by the test files: a tiny CPU config and random images.

tiny_config(**section_overrides) loads the repository's params.yaml (the single source of
defaults), merges TINY (a 2-block 32-d ViT on 16/8-px crops, a 64-prototype head, fp32 on CPU)
and then the caller's overrides, section by section, with dino_core.config.merge, so an
unknown key raises exactly as it would in a real run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from dino_core.config import Config, load_params, merge

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
CORE_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

TINY = {
    "data": {"num_workers": 0},
    "model": {"arch": "vit_custom", "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "drop_path_rate": 0.1, "attn_impl": "explicit"},
    # use_bn off: BatchNorm statistics are per process under gloo, which the DDP == 1-process tests exclude
    "head": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16, "nlayers": 3, "use_bn": False},
    "loss": {"queue_size": 64},
    "crops": {"global_size": 16, "local_size": 8, "local_number": 2},
    "optim": {"batch_size": 8, "warmup_epochs": 0},
    "train": {"epochs": 2, "precision": "fp32", "device": "cpu", "seed": 0, "saveckp_freq": 1,
              "log_every": 1000},
}


def tiny_config(**section_overrides: dict) -> Config:
    """Core sections of params.yaml + TINY + overrides, e.g. tiny_config(loss={"normalization": "none"})."""
    core = {k: v for k, v in load_params(PARAMS).items() if k in CORE_SECTIONS}   # drop pipeline sections
    d = merge(core, TINY, "TINY")
    d = merge(d, section_overrides, "overrides")
    return Config.from_dict(d, source="tiny_config")


def random_images(n: int, size: int = 24, seed: int = 0) -> list[Image.Image]:
    """n random RGB PIL images (size x size): smooth blobs plus noise, reproducible by seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.uniform(0, 255, size=(4, 4, 3))
        base = np.kron(low, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size]
        img = np.clip(base + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(img, "RGB"))
    return out
