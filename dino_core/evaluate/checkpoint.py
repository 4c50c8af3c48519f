"""Loading backbones from our and the official DINO checkpoints, and the evaluation entry point.

Accepted files (``torch.load``):
* a bare backbone state dict (official ``dino_deitsmall16_pretrain.pth``: ``cls_token``,
  ``pos_embed``, ``blocks.0.attn.qkv.weight``, ...);
* a training checkpoint ``{"teacher": sd, "student": sd, ...}`` (official ``checkpoint.pth`` or
  ours) whose keys carry ``module.`` (DDP), ``_orig_mod.`` (torch.compile) and/or ``backbone.``
  prefixes; ``head.*`` keys are dropped. ``checkpoint_key`` picks the entry (teacher by default).
The model is built with the checkpoint's position-embedding grid (img_size = side * patch), so
the strict load always matches; other input sizes use the ViT's bicubic pos-embed interpolation.
"""
from __future__ import annotations

import argparse
import logging
import math
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..checkpoint import atomic_write_json
from ..sections import EvalConfig
from ..vit import ARCHS, VisionTransformer, build_vit
from .collapse import collapse_verdict
from .protocol import EvalSets, evaluate_backbone

log = logging.getLogger(__name__)

PREFIXES = ("module.", "_orig_mod.", "backbone.")


def _few(keys: set[str] | list[str], n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else f" ({len(keys)})")


def backbone_state_dict(obj: Any, checkpoint_key: str | None = "teacher",
                        where: str = "checkpoint") -> dict[str, Tensor]:
    """Pick the backbone state dict out of a loaded checkpoint and strip its prefixes."""
    if not isinstance(obj, dict):
        raise TypeError(f"{where}: expected a dict (state dict or checkpoint), got {type(obj).__name__}")
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        sd = obj                                   # bare backbone file: checkpoint_key unused
    elif checkpoint_key is not None and isinstance(obj.get(checkpoint_key), dict):
        sd = obj[checkpoint_key]
    else:
        raise KeyError(f"{where}: checkpoint_key {checkpoint_key!r} not found; available keys: {sorted(obj)}")
    out = {}
    for k, v in sd.items():
        while k.startswith(PREFIXES):
            k = k.split(".", 1)[1]
        if not k.startswith("head.") and isinstance(v, Tensor):
            out[k] = v
    return out


def infer_arch(sd: dict[str, Tensor]) -> dict[str, Any]:
    """embed_dim, depth, patch_size and img_size from the weights; num_heads cannot be read from
    them, so it is a guess from the standard sizes (ARCHS) or None; arch likewise."""
    info: dict[str, Any] = {"embed_dim": None, "depth": None, "patch_size": None, "img_size": None}
    if "patch_embed.proj.weight" in sd:
        w = sd["patch_embed.proj.weight"]            # (D, 3, p, p)
        info["embed_dim"], info["patch_size"] = int(w.shape[0]), int(w.shape[-1])
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    info["depth"] = max(blocks) + 1 if blocks else None
    if "pos_embed" in sd and info["patch_size"]:
        side = math.isqrt(sd["pos_embed"].shape[1] - 1)
        if side * side != sd["pos_embed"].shape[1] - 1:
            raise ValueError(f"pos_embed has {sd['pos_embed'].shape[1] - 1} patches: not a square grid")
        info["img_size"] = side * info["patch_size"]
    match = [a for a, (d, n, _) in ARCHS.items() if (d, n) == (info["embed_dim"], info["depth"])]
    info["arch"] = match[0] if match else "vit_custom"
    info["num_heads"] = ARCHS[match[0]][2] if match else None
    return info


def read_checkpoint(path: str | Path, weights_only: bool = True) -> Any:
    """torch.load on CPU. ``weights_only`` (default) unpickles tensors and plain containers only
    (and the official files' ``argparse.Namespace``): safe for files from anywhere. Our own
    checkpoints load that way since their RNG state is stored as tensors; older ones of ours
    (numpy RNG arrays) need ``weights_only=False``, which runs the pickle: only for trusted files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):    # official files store `args`
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        msg = str(e)
        first = msg.split("Unsupported global:")[-1].split(" was not")[0].strip() if "Unsupported global" in msg else ""
        raise ValueError(f"{path}: not loadable with weights_only=True (it pickles more than tensors and plain "
                         f"containers{': ' + first if first else ''}); load it with weights_only=False "
                         "(eval_checkpoint: --trusted) only if you trust the file") from e


def _auto_arch(obj: Any, info: dict[str, Any], num_heads: int, where: str) -> tuple[str, int, int, int, int]:
    """(arch, patch_size, embed_dim, depth, num_heads) read from the weights; num_heads from
    Table 1's sizes, else from the checkpoint's own config (ours: ``args.model.num_heads``), else
    the ``num_heads`` given."""
    if info["embed_dim"] is None or info["depth"] is None:
        raise KeyError(f"{where}: no ViT backbone found (no patch_embed.proj.weight / blocks.* keys)")
    own = obj.get("args") if isinstance(obj, dict) else None
    if info["num_heads"] is None and isinstance(own, dict) and "model" in own:
        num_heads = own["model"]["num_heads"]
    return info["arch"], info["patch_size"], info["embed_dim"], info["depth"], info["num_heads"] or num_heads


def load_backbone(path: str | Path, arch: str = "vit_small", patch_size: int = 16, *, embed_dim: int = 192,
                  depth: int = 12, num_heads: int = 3, checkpoint_key: str | None = "teacher",
                  attn_impl: str = "auto", weights_only: bool = True) -> VisionTransformer:
    """Build ``arch``/``patch_size`` (embed_dim/depth/num_heads for vit_custom) and load the
    checkpoint's backbone strictly; ``arch="auto"`` takes the sizes from the weights (the file is
    read once; the model's patch_size/embed_dim/num_heads/len(blocks) say what was built).
    Errors name the path, the mismatching sizes or keys."""
    path = Path(path)
    obj = read_checkpoint(path, weights_only)
    sd = backbone_state_dict(obj, checkpoint_key, str(path))
    info = infer_arch(sd)
    if arch == "auto":
        arch, patch_size, embed_dim, depth, num_heads = _auto_arch(obj, info, num_heads, str(path))
    want = {"embed_dim": ARCHS[arch][0] if arch in ARCHS else embed_dim,
            "depth": ARCHS[arch][1] if arch in ARCHS else depth, "patch_size": patch_size}
    bad = {k: (info[k], v) for k, v in want.items() if info[k] is not None and info[k] != v}
    if bad:
        raise ValueError(f"{path}: checkpoint does not fit {arch}/{patch_size}: "
                         + ", ".join(f"{k} is {c} in the checkpoint, {v} requested" for k, (c, v) in bad.items()))
    model = build_vit(arch, patch_size, info["img_size"] or 224, embed_dim, depth, num_heads, 0.0, attn_impl)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(sd), set(sd) - expected
    if missing or unexpected:
        raise KeyError(f"{path} (checkpoint_key {checkpoint_key!r}) does not match {arch}/{patch_size}: "
                       f"missing keys: {_few(missing) if missing else 'none'}; "
                       f"unexpected keys: {_few(unexpected) if unexpected else 'none'}")
    model.load_state_dict(sd, strict=True)
    log.info("loaded %s (%s) into %s/%d, pos-embed grid for %d px", path, checkpoint_key, arch, patch_size,
             info["img_size"] or 224)
    return model.eval()


def evaluate_checkpoint(ckpt_path: str | Path, sets: EvalSets, cfg: EvalConfig, *, arch: str = "vit_small",
                        patch_size: int = 16, embed_dim: int = 192, depth: int = 12, num_heads: int = 3,
                        checkpoint_key: str | None = "teacher", out_json: str | Path | None = None,
                        device: str | torch.device | None = None, precision: str = "fp32",
                        weights_only: bool = True, seed: int = 0) -> dict[str, Any]:
    """protocol.evaluate_backbone of the checkpoint's backbone (k-NN, linear probe if cfg.linear_epochs
    > 0, attention Jaccard if the report set has masks), its collapse verdict on the report features,
    and the architecture built; one JSON written atomically (rank 0 only under DDP). ``arch="auto"``:
    sizes from the weights (:func:`load_backbone`)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_backbone(ckpt_path, arch, patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                          checkpoint_key=checkpoint_key, weights_only=weights_only)
    m: dict[str, Any] = {"checkpoint": str(ckpt_path), "checkpoint_key": checkpoint_key,
                         "arch": arch if arch != "auto" else infer_arch(model.state_dict())["arch"],
                         "patch_size": model.patch_size, "embed_dim": model.embed_dim, "depth": len(model.blocks),
                         "num_heads": model.num_heads}
    m.update(evaluate_backbone(model, cfg, sets, device, seed, precision))
    m["collapsed"], m["collapse_reason"] = collapse_verdict(m)
    if out_json is not None and (not dist.is_initialized() or dist.get_rank() == 0):
        atomic_write_json(out_json, m)
        log.info("wrote %s", out_json)
    return m
