"""Frozen-backbone feature extraction for k-NN, the linear probe and collapse statistics.

Features of an image x (official ``eval_knn.py`` / ``eval_linear.py``):

* k-NN (``n_last_blocks=1, avgpool=False``): f(x) = norm(z_L)[CLS], i.e. ``model(x)``, shape (D,).
* linear probe: f(x) = [norm(z_{L-n+1})[CLS], ..., norm(z_L)[CLS], mean_p norm(z_L)[p]],
  the last term only with ``avgpool``; shape (D * (n + avgpool),). The official code interleaves
  CLS and pooled coordinates (and only supports n=1 then); a linear layer is invariant to that
  permutation, so plain concatenation is used.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """A collated batch -> (images (B,3,H,W), labels (B,) or None, masks or None).

    Accepts the registry's (image, label) and (image, label, mask) items, or bare images.
    """
    if isinstance(batch, Tensor):
        return batch, None, None
    images = batch[0]
    labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
    masks = batch[2] if len(batch) > 2 and isinstance(batch[2], Tensor) else None
    return images, labels, masks


def backbone_features(model: nn.Module, x: Tensor, n_last_blocks: int = 1, avgpool: bool = False) -> Tensor:
    """(B,3,H,W) -> (B, D * (n_last_blocks + avgpool)) features (see module docstring)."""
    if n_last_blocks == 1 and not avgpool:
        return model(x)
    out = model.get_intermediate_layers(x, n_last_blocks)
    feats = [o[:, 0] for o in out] + ([out[-1][:, 1:].mean(dim=1)] if avgpool else [])
    return torch.cat(feats, dim=-1)


class _Indexed(Dataset):
    """Wraps a dataset so each item is (index, item): the gather restores dataset order."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.ds[i]


class _IndexedCollate:
    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: list) -> tuple[Tensor, Any]:
        return torch.tensor([i for i, _ in items]), self.collate([it for _, it in items])


def _sharded(loader: DataLoader) -> DataLoader:
    """Same dataset/batch size/workers/collate, one DistributedSampler(shuffle=False) shard."""
    ds = _Indexed(loader.dataset)
    return DataLoader(ds, batch_size=loader.batch_size, sampler=DistributedSampler(ds, shuffle=False),
                      num_workers=loader.num_workers, collate_fn=_IndexedCollate(loader.collate_fn))


def _gather(local: Tensor, idx: Tensor, n: int) -> Tensor:
    """all_gather equal-size shards and scatter rows back to dataset order: (n, ...)."""
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    ids = [torch.empty_like(idx) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    dist.all_gather(ids, idx)
    out = local.new_empty((n,) + tuple(local.shape[1:]))
    out[torch.cat(ids).long()] = torch.cat(parts)   # sampler padding repeats rows: same values
    return out


@torch.no_grad()
def extract_features(model: nn.Module, loader: DataLoader, *, n_last_blocks: int = 1, avgpool: bool = False,
                     precision: str = "fp32", device: torch.device | str = "cpu") -> tuple[Tensor, Tensor | None]:
    """Run the frozen backbone over a loader: -> (feats (N, D') float32 on CPU, labels (N,) or None).

    Eval mode, no_grad, optional bf16/fp16 autocast. Under torch.distributed each rank runs
    its DistributedSampler shard of ``loader.dataset`` and the shards are all-gathered in
    dataset order (every rank gets the full result). Labels are None if the items have none.
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    distributed = dist.is_available() and dist.is_initialized()
    it = _sharded(loader) if distributed else loader
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    feats, labels, idxs, has_labels = [], [], [], True
    for batch in it:
        if distributed:
            idx, batch = batch
            idxs.append(idx.to(device))
        x, y, _ = split_batch(batch)
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            f = backbone_features(model, x.to(device, non_blocking=True), n_last_blocks, avgpool)
        feats.append(f.float())
        has_labels = has_labels and y is not None
        labels.append(y.to(device).long() if y is not None else torch.zeros(len(x), dtype=torch.long, device=device))
    model.train(was_training)
    if not feats:
        raise ValueError("extract_features: the loader yielded no batches (empty dataset?)")
    f_all, y_all = torch.cat(feats), torch.cat(labels)
    if distributed:
        idx_all, n = torch.cat(idxs), len(loader.dataset)  # type: ignore[arg-type]
        f_all, y_all = _gather(f_all, idx_all, n), _gather(y_all, idx_all, n)
    log.info("extracted %d features of dim %d", f_all.shape[0], f_all.shape[1])
    return f_all.cpu(), (y_all.cpu() if has_labels else None)


def knn_and_linear_features(model: nn.Module, loader: DataLoader, n_last_blocks: int = 1, avgpool: bool = False,
                            **kw: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    """One pass for both protocols -> (k-NN feats (N, D), linear feats (N, D * (n + avgpool)), labels).

    The k-NN feature norm(z_L)[CLS] is the block-L slice of the linear layout (columns
    [(n-1) D, n D) with n = min(n_last_blocks, depth)): the same computation in eval mode, so the
    values are identical to ``extract_features(model, loader)`` and the backbone runs once, not twice.
    """
    f, y = extract_features(model, loader, n_last_blocks=n_last_blocks, avgpool=avgpool, **kw)
    n = min(n_last_blocks, len(model.blocks))   # get_intermediate_layers gives at most depth blocks
    d = f.shape[1] // (n + int(avgpool))
    return f[:, (n - 1) * d: n * d].contiguous(), f, y
