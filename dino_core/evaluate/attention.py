"""Last-layer CLS attention maps, the paper's mass-threshold masks and their Jaccard index.

Map of head h (official ``visualize_attention.py``): A_h = softmax(q_CLS K^T / sqrt(d))[1:],
the CLS row of the last block without its self-attention, reshaped to the (H/p, W/p) grid.

Mask (paper Fig. 4, threshold tau = 0.6): with a_i = A_h,i / sum_j A_h,j sorted descending,
keep patch i iff the mass ranked strictly before it is < tau, i.e. the smallest set of patches
holding >= tau of the mass (the official "ascending cumsum > 1 - tau", same set). Ties: a stable
sort, so among equal attentions the lower raster index is kept first. Nearest upsampling by p.

Jaccard J(P, G) = |P & G| / |P | G| in %, pixels labelled 255 in G (VOC "void") are ignored;
both masks empty -> 100 (perfect agreement on "no object"). Best head = the head with the
highest mean J over the dataset (paper), mean head = mean over heads of that per-head mean.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import split_batch

log = logging.getLogger(__name__)


def cls_attention(model: nn.Module, images: Tensor) -> Tensor:
    """(B,3,H,W) -> (B, heads, H//p, W//p) last-layer CLS->patch attention (images cropped to a
    multiple of the patch size p, as the official script)."""
    p = model.patch_size
    h, w = images.shape[-2] // p, images.shape[-1] // p
    attn = model.get_last_selfattention(images[..., :h * p, :w * p])
    return attn[:, :, 0, 1:].reshape(images.shape[0], attn.shape[1], h, w).float()


def mass_mask(attn: Tensor, threshold: float = 0.6) -> Tensor:
    """Bool mask of the smallest set of entries holding >= threshold of the mass, per row of
    the last dim: (..., N) -> (..., N). Ties: stable descending sort (lower index first)."""
    vals, idx = attn.float().sort(dim=-1, descending=True, stable=True)
    vals = vals / vals.sum(dim=-1, keepdim=True)
    before = vals.cumsum(dim=-1) - vals            # mass ranked strictly before each entry
    keep_sorted = before < threshold
    return torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)


def upsample_mask(mask: Tensor, patch_size: int) -> Tensor:
    """Nearest upsampling of (..., h, w) patch masks to (..., h*p, w*p) pixels."""
    return mask.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)


def jaccard(pred: Tensor, gt: Tensor, ignore_index: int | None = 255) -> Tensor:
    """IoU in % over the last two dims, broadcasting: pred (..., H, W) vs gt (..., H, W) -> (...).
    gt > 0 is foreground, gt == ignore_index is ignored; 100 where both masks are empty."""
    if pred.shape[-2:] != gt.shape[-2:]:
        raise ValueError(f"jaccard: sizes differ, pred {tuple(pred.shape)} vs gt {tuple(gt.shape)}")
    valid = gt != ignore_index if ignore_index is not None else torch.ones_like(gt, dtype=torch.bool)
    p, g = pred.bool() & valid, (gt > 0) & valid
    inter, union = (p & g).sum(dim=(-2, -1)).double(), (p | g).sum(dim=(-2, -1)).double()
    return torch.where(union == 0, torch.full_like(union, 100.0), 100.0 * inter / union.clamp_min(1))


def head_masks(model: nn.Module, images: Tensor, threshold: float = 0.6) -> tuple[Tensor, Tensor]:
    """-> (attention maps (B, heads, h, w), pixel masks (B, heads, h*p, w*p) bool)."""
    a = cls_attention(model, images)
    m = mass_mask(a.flatten(2), threshold).view_as(a)
    return a, upsample_mask(m, model.patch_size)


@torch.no_grad()
def attention_jaccard(model: nn.Module, loader: Any, threshold: float = 0.6,
                      device: torch.device | str = "cpu") -> dict[str, Any]:
    """Mean Jaccard (%) of each head's mask vs the ground-truth masks of (image, label, mask)
    items -> {"jaccard_best_head", "jaccard_mean_head", "jaccard_per_head", "best_head"}."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    total, n = None, 0
    for batch in loader:
        x, _, gt = split_batch(batch)
        if gt is None:
            raise ValueError("attention Jaccard needs ground-truth masks: build the dataset with "
                             "with_masks=True so items are (image, label, mask)")
        _, masks = head_masks(model, x.to(device), threshold)
        gt = gt.to(device).reshape(x.shape[0], *gt.shape[-2:])
        if masks.shape[-2:] != gt.shape[-2:]:
            masks = F.interpolate(masks.float(), size=gt.shape[-2:], mode="nearest").bool()
        j = jaccard(masks, gt[:, None]).cpu()          # (B, heads)
        total, n = (j.sum(0) if total is None else total + j.sum(0)), n + x.shape[0]
    model.train(was_training)
    if total is None:
        raise ValueError("attention_jaccard: the mask loader yielded no batches")
    per_head = (total / n).tolist()
    best = max(range(len(per_head)), key=lambda h: per_head[h])
    out = {"jaccard_best_head": per_head[best], "jaccard_mean_head": sum(per_head) / len(per_head),
           "jaccard_per_head": per_head, "best_head": best}
    log.info("attention Jaccard (threshold %.2f, %d images): %s", threshold, n, out)
    return out


@torch.no_grad()
def save_attention_overlays(model: nn.Module, images: Tensor, out_dir: str | Path, threshold: float = 0.6,
                            mean: tuple[float, ...] = (0.485, 0.456, 0.406),
                            std: tuple[float, ...] = (0.229, 0.224, 0.225)) -> list[Path]:
    """Write attn_{i:03d}.png per normalised image (B,3,H,W): row 1 image + each head's map,
    row 2 the mask overlays of each head. Returns the PNG paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    dev = next(model.parameters()).device
    attn, masks = head_masks(model.eval(), images.to(dev), threshold)
    model.train(was_training)
    p, paths = model.patch_size, []
    for i in range(images.shape[0]):
        img = images[i, :, :masks.shape[-2], :masks.shape[-1]].cpu().float()
        img = (img * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)).clamp(0, 1)
        img = img.permute(1, 2, 0).numpy()
        heads = attn.shape[1]
        fig, ax = plt.subplots(2, heads + 1, figsize=(2 * (heads + 1), 4), squeeze=False)
        ax[0, 0].imshow(img)
        ax[0, 0].set_title("image")
        ax[1, 0].imshow(img)
        ax[1, 0].set_title(f"{int(threshold * 100)}% mass")
        for h in range(heads):
            ax[0, h + 1].imshow(upsample_mask(attn[i, h], p).cpu().numpy(), cmap="inferno")
            ax[0, h + 1].set_title(f"head {h}")
            ax[1, h + 1].imshow(img)
            ax[1, h + 1].imshow(masks[i, h].cpu().numpy(), cmap="jet", alpha=0.45)
        for a in ax.flat:
            a.axis("off")
        path = out_dir / f"attn_{i:03d}.png"
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    log.info("wrote %d attention overlays to %s", len(paths), out_dir)
    return paths
