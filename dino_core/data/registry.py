"""The dataset registry: datasets by name for pre-training and evaluation (their builders:
builders.py), their statistics and the deterministic evaluation transform.

Splits: ``"train"`` (pre-training and the k-NN / linear train set), ``"val"`` (where choices are made:
the linear probe's lr, the budget, tuning) and, where a dataset has one apart from ``"val"``,
``"test"`` (where reported numbers are measured: ``DatasetSpec.report_split``; Fashion-MNIST's
``"val"`` is a holdout carved from its train files). Datasets without a separate test split report
on ``"val"``, where the choices were made too. STL-10 adds ``"unlabeled"`` (its pre-training split,
labels -1) and ``"train+unlabeled"``. Items are ``(image, label)``, or ``(image, label, mask)``
with ``with_masks=True`` (``shapes`` and ``fashion_mnist``), where
``mask`` is a bool tensor (H, W). Every dataset exposes ``.targets`` (list[int]) and ``.classes``.
Downloads (torchvision) happen only with ``download=True``. Corrupt files: our folder layout (shapes)
checks image headers when built, and decodes every file up front only with ``skip_corrupt=True``
(which then skips the unreadable ones with one warning); a file that fails later names its path.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision.transforms as T
from torch.utils.data import Dataset
from torchvision import datasets as tv
from torchvision.datasets.folder import find_classes

from dino_core.data import fashion_mnist, shapes
from dino_core.data.builders import (build_cifar, build_fashion_mnist, build_imagefolder, build_shapes,
                                     build_stl10)
from dino_core.data.folder import mask_to_tensor

logger = logging.getLogger(__name__)

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Per-channel mean/std over the train split in [0, 1]. CIFAR: population std over the 50,000 train
# images (not the often copied 0.2023/0.1994/0.2010). Fashion-MNIST: the 60,000 Debian train images.
# shapes: channel_stats("shapes", root) over 10,000 train images, 32 px, seed 0, generator version 1;
# kept for versions 2 and 3 (mean 0.49, std 0.19 on their 2,000 images), a fixed input scaling under
# which every recorded shapes trial ran (experiments/recipe_search).
CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
FASHION_MNIST_STATS: Stats = ((0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530))
SHAPES_STATS: Stats = ((0.4977, 0.5012, 0.4993), (0.2771, 0.2782, 0.2767))
RESIZE_RATIO = 256 / 224  # official DINO eval: Resize(256) + CenterCrop(224)


@dataclass(frozen=True)
class DatasetSpec:
    """How to build a dataset; ``num_classes`` None means: count the class folders of the root."""

    build: Callable[..., Dataset]
    normalization: Stats
    num_classes: int | None
    splits: tuple[str, ...] = ("train", "val")
    pretrain_split: str = "train"
    has_masks: bool = False
    report_split: str = "val"


DATASETS: dict[str, DatasetSpec] = {
    "shapes": DatasetSpec(build_shapes, SHAPES_STATS, len(shapes.CLASSES), has_masks=True),
    "fashion_mnist": DatasetSpec(build_fashion_mnist, FASHION_MNIST_STATS, len(fashion_mnist.CLASSES),
                                 ("train", "val", "test"), has_masks=True, report_split="test"),
    "cifar10": DatasetSpec(build_cifar(tv.CIFAR10, "cifar-10-batches-py"), CIFAR10_STATS, 10),
    "cifar100": DatasetSpec(build_cifar(tv.CIFAR100, "cifar-100-python"), CIFAR100_STATS, 100),
    "stl10": DatasetSpec(build_stl10, IMAGENET_STATS, 10, ("train", "val", "unlabeled", "train+unlabeled"),
                         pretrain_split="unlabeled"),
    "imagefolder": DatasetSpec(build_imagefolder, IMAGENET_STATS, None),
}
NORMALIZATION: dict[str, Stats] = {name: spec.normalization for name, spec in DATASETS.items()}


def spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``; ValueError listing the allowed names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def num_classes(name: str, root: str | os.PathLike | None = None) -> int:
    """Number of classes; ``imagefolder`` counts the class folders of ``root/train``."""
    count = spec(name).num_classes
    if count is not None:
        return count
    if root is None:
        raise ValueError(f"{name}: num_classes needs the dataset root (classes are the folders of root/train)")
    return len(find_classes(str(Path(root) / "train"))[0])


class EvalTransform(T.Compose):
    """Resize(int(image_size * 256/224), bicubic) -> CenterCrop(image_size) -> ToTensor -> Normalize.

    PIL RGB -> float tensor (3, image_size, image_size); ``.image_size`` is kept for the masks."""

    def __init__(self, name: str, image_size: int) -> None:
        mean, std = spec(name).normalization
        super().__init__([T.Resize(int(image_size * RESIZE_RATIO), interpolation=T.InterpolationMode.BICUBIC),
                          T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])
        self.image_size = image_size


def eval_transform(name: str, image_size: int) -> EvalTransform:
    """The deterministic evaluation transform of dataset ``name`` (see :class:`EvalTransform`)."""
    return EvalTransform(name, image_size)


def mask_transform(image_size: int) -> Callable:
    """PIL L mask -> bool tensor (image_size, image_size): the eval resize (nearest) + center crop."""
    return T.Compose([T.Resize(int(image_size * RESIZE_RATIO), interpolation=T.InterpolationMode.NEAREST),
                      T.CenterCrop(image_size), mask_to_tensor])


class LimitedDataset(Dataset):
    """Samples ``skip`` .. ``skip + limit - 1`` of a class-balanced round robin (class order kept), in
    index order: ``skip = 0`` gives the first ``limit``, and a later ``skip`` never overlaps them."""

    def __init__(self, dataset: Dataset, limit: int, skip: int = 0) -> None:
        seen: Counter = Counter()
        rank = []
        for index, label in enumerate(dataset.targets):
            rank.append((seen[label], label, index))
            seen[label] += 1
        self.dataset = dataset
        self.indices = sorted(index for _, _, index in sorted(rank)[skip:skip + limit])
        self.targets = [dataset.targets[i] for i in self.indices]
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple:
        return self.dataset[self.indices[index]]


def build_dataset(name: str, root: str | os.PathLike, split: str, transform: Callable | None = None, *,
                  download: bool = False, skip_corrupt: bool = False, with_masks: bool = False,
                  limit: int | None = None, skip: int = 0, mask_size: int | None = None) -> Dataset:
    """Dataset ``name`` at ``root``: items ``(transform(PIL RGB), label)`` or, with ``with_masks``,
    ``(image, label, mask)``. The mask (bool, (S, S)) gets the eval resize + center crop with
    S = ``mask_size`` or ``transform.image_size`` (an :class:`EvalTransform`); without either it keeps
    the image's native size. ``limit`` keeps a class-balanced subset of that many samples, after the
    first ``skip`` of the same round robin (:class:`LimitedDataset`).
    """
    entry = spec(name)
    if split not in entry.splits:
        raise ValueError(f"{name}: unknown split {split!r}; allowed: {', '.join(entry.splits)}")
    if with_masks and not entry.has_masks:
        with_mask_names = ", ".join(n for n, s in DATASETS.items() if s.has_masks)
        raise ValueError(f"{name} has no masks; with_masks=True needs one of: {with_mask_names}")
    size = mask_size if mask_size is not None else getattr(transform, "image_size", None)
    masks = (mask_transform(size) if size is not None else mask_to_tensor) if with_masks else None
    root = fashion_mnist.resolve_root(root) if name == "fashion_mnist" else Path(root)
    dataset = entry.build(root, split, transform, download, skip_corrupt, masks)
    if len(dataset) == 0:
        raise ValueError(f"{name}: the {split} split under {root} holds no samples")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if skip or (limit is not None and limit < len(dataset)):
        if skip + (limit or 0) > len(dataset):
            raise ValueError(f"{name}: the {split} split under {root} has {len(dataset)} samples, fewer than "
                             f"skip {skip} + limit {limit}")
        dataset = LimitedDataset(dataset, limit if limit is not None else len(dataset) - skip, skip)
    logger.info("%s/%s: %d samples, %d classes from %s", name, split, len(dataset), len(dataset.classes), root)
    return dataset


def channel_stats(name: str, root: str | os.PathLike, split: str = "train", limit: int | None = None) -> Stats:
    """Per-channel (mean, std) in [0, 1] over the (``limit``-ed) images of a split, rounded to 4 digits."""
    dataset = build_dataset(name, root, split, T.ToTensor(), limit=limit)
    total, total_sq, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for index in range(len(dataset)):
        pixels = dataset[index][0].double().flatten(1)
        total, total_sq, count = total + pixels.sum(1), total_sq + (pixels ** 2).sum(1), count + pixels.shape[1]
    mean = total / count
    std = (total_sq / count - mean ** 2).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())
