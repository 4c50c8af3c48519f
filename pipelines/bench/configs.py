"""The benchmark configurations, each a diff over params.yaml."""
from __future__ import annotations

import dataclasses
from pathlib import Path


from dino_core.config import Config, load_params, merge


REPO = Path(__file__).resolve().parents[2]

# Each config is a diff over params.yaml (the single source of defaults).
CONFIGS: dict[str, dict] = {
    # Smoke test: seconds on any machine.
    "tiny": {"model": {"arch": "vit_custom", "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
             "head": {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32},
             "crops": {"global_size": 16, "local_size": 8, "local_number": 2},
             "optim": {"batch_size": 8}},
    # "cpu-toy": ViT-Tiny/4, 2 x 32 px + 6 x 16 px, batch 64, K = 4096.
    "cpu-toy": {"model": {"arch": "vit_tiny", "patch_size": 4},
                "head": {"out_dim": 4096, "hidden_dim": 2048, "bottleneck_dim": 256},
                "crops": {"global_size": 32, "local_size": 16, "local_number": 6},
                "optim": {"batch_size": 64}},
    # A learning-budget cell: params.yaml as it stands (profile default, the empty diff): its ViT,
    # crops, batch, K and dataset, whatever they are.
    "cell": {},
    # The paper's ViT-S/16: 2 x 224 + 10 x 96, batch 64 per device, K = 65536.
    "vit-s16": {"model": {"arch": "vit_small", "patch_size": 16},
                "head": {"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256},
                "crops": {"global_size": 224, "local_size": 96, "local_number": 10},
                "optim": {"batch_size": 64}},
}


def build_config(name: str, precision: str = "auto", device: str = "auto",
                 params: str | Path = REPO / "params.yaml", attn_impl: str | None = None) -> Config:
    """params.yaml merged with the named config's diff (and precision / device / attention)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown bench config {name!r}; allowed: {', '.join(CONFIGS)}")
    core = {f.name for f in dataclasses.fields(Config)}   # params.yaml also holds pipeline sections
    base = {k: v for k, v in load_params(params).items() if k in core}
    diff = {**CONFIGS[name], "train": {"precision": precision, "device": device}}
    if attn_impl is not None:
        diff["model"] = {**diff.get("model", {}), "attn_impl": attn_impl}
    return Config.from_dict(merge(base, diff, f"bench config {name}"), source=f"bench config {name}")
