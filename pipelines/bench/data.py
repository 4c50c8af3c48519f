"""The multi-crop data pipeline: images per second for a number of loader workers."""
from __future__ import annotations

import logging

import time
from pathlib import Path
from typing import Sequence

import torch

from dino_core.config import Config
from .configs import REPO
from .environment import loadavg

log = logging.getLogger(__name__)


class _RandomImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import numpy as np
        from PIL import Image
        rng = np.random.default_rng(i)
        return Image.fromarray(rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)), 0


def pipeline_dataset(cfg: Config, root: str | Path | None):
    """The shapes train split at ``root`` (default: params' data.root, then data/shapes) if it exists,
    else random PIL images of the same size."""
    from dino_core.data import shapes
    from dino_core.data.registry import NORMALIZATION, build_dataset
    roots = [Path(root)] if root else [REPO / cfg.data.root, REPO / "data" / "shapes"]
    for r in roots:
        if shapes.read_index(r) is not None:
            return build_dataset("shapes", r, "train", None), NORMALIZATION["shapes"], f"shapes at {r}"
    log.warning("no shapes dataset at %s: the data pipeline is timed on random PIL images "
                "(python -m pipelines.prepare --dataset shapes --root %s ...)", roots[0], roots[0])
    return _RandomImages(5000, cfg.data.image_size), NORMALIZATION["shapes"], "random PIL images"


def bench_data(cfg: Config, workers: Sequence[int], batches: int, root: str | Path | None) -> list[dict]:
    """Images/s of MultiCropDataset + DataLoader (batch = optim.batch_size) per worker count."""
    from torch.utils.data import DataLoader

    from dino_core.multicrop import MultiCropAugmentation, MultiCropDataset
    base, (mean, std), source = pipeline_dataset(cfg, root)
    data = MultiCropDataset(base, MultiCropAugmentation(cfg.crops, mean, std), cfg.train.seed)
    b = cfg.optim.batch_size
    n = min(batches, len(data) // b)
    rows = []
    for w in workers:
        loader = DataLoader(data, batch_size=b, shuffle=True, drop_last=True, num_workers=w,
                            generator=torch.Generator().manual_seed(0), persistent_workers=False)
        la0 = loadavg()
        t0 = time.perf_counter()
        it = iter(loader)
        next(it)                  # worker start-up and the first batch: excluded
        t1 = time.perf_counter()
        for _ in range(n - 1):
            next(it)
        t2 = time.perf_counter()
        del it
        timed = max(n - 1, 1)
        rows.append({"workers": w, "batch_size": b, "batches_timed": n - 1, "first_batch_s": t1 - t0,
                     "s_per_batch": (t2 - t1) / timed, "img_per_s": (n - 1) * b / max(t2 - t1, 1e-9),
                     "crops_per_img": 2 + cfg.crops.local_number, "source": source, "loadavg": [la0, loadavg()]})
    return rows
