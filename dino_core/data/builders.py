"""The builders of the registry's datasets: each takes (root, split, transform, download, skip_corrupt,
mask_transform) and returns a Dataset of (image, label[, mask]) items, or raises an error that names
the missing path and how to get it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset
from torchvision import datasets as tv
from torchvision.datasets.folder import IMG_EXTENSIONS

from dino_core.data import fashion_mnist, shapes
from dino_core.data.folder import CorruptImageError, FolderDataset, image_size

logger = logging.getLogger(__name__)


def missing_error(name: str, path: Path, manual: str) -> FileNotFoundError:
    return FileNotFoundError(f"{name}: {path} not found. Pass download=True (needs internet) or copy "
                             f"{manual} there manually.")


def build_shapes(root: Path, split: str, transform: Callable | None, download: bool, skip_corrupt: bool,
            mask_transform: Callable | None) -> Dataset:
    if shapes.read_index(root) is None:
        if not download:
            raise FileNotFoundError(
                f"shapes: {root / 'index.json'} not found. Generate the dataset with "
                f"`python -m pipelines.prepare --dataset shapes --root {root}` (or "
                "dino_core.data.shapes.prepare_shapes), or pass download=True to generate it with defaults.")
        shapes.prepare_shapes(root)
    split_root = root / split
    masks_root = split_root / "masks" if mask_transform is not None else None
    return FolderDataset(split_root / "images", masks_root=masks_root, transform=transform,
                         mask_transform=mask_transform, skip_corrupt=skip_corrupt, verify=skip_corrupt)


def build_fashion_mnist(root: Path, split: str, transform: Callable | None, download: bool, skip_corrupt: bool,
                   mask_transform: Callable | None) -> Dataset:
    if download and fashion_mnist.find_file(root, fashion_mnist.FILES[split][0]) is None:
        tv.FashionMNIST(str(root), train=split != "test", download=True)
    return fashion_mnist.FashionMNIST(root, split, transform, mask_transform)


def build_cifar(cls: type, folder: str) -> Callable[..., Dataset]:
    def build(root: Path, split: str, transform: Callable | None, download: bool, *_) -> Dataset:
        if not download and not (root / folder).is_dir():
            raise missing_error(cls.__name__.lower(), root / folder, f"the extracted '{folder}' folder")
        try:
            return cls(str(root), train=split == "train", transform=transform, download=download)
        except RuntimeError as exc:
            raise missing_error(cls.__name__.lower(), root / folder, f"the extracted '{folder}' folder") from exc
    return build


def build_stl10(root: Path, split: str, transform: Callable | None, download: bool, *_) -> Dataset:
    if not download and not (root / "stl10_binary").is_dir():
        raise missing_error("stl10", root / "stl10_binary", "the extracted 'stl10_binary' folder")
    dataset = tv.STL10(str(root), split={"val": "test"}.get(split, split), transform=transform,
                       download=download)
    dataset.targets = [int(y) for y in dataset.labels]
    return dataset


def build_imagefolder(root: Path, split: str, transform: Callable | None, download: bool,
                 skip_corrupt: bool, *_) -> Dataset:
    if download:
        raise ValueError("imagefolder: no download exists; copy the ImageNet-layout folders "
                         f"(train/<class>/*, val/<class>/*) under {root}")
    if not (root / split).is_dir():
        raise FileNotFoundError(f"imagefolder: {root / split} not found; copy the ImageNet-layout folders "
                                f"(train/<class>/*, val/<class>/*) under {root} manually (no download exists).")
    corrupt: list[str] = []

    def readable(path: str) -> bool:  # header check only, so skipping stays affordable at ImageNet scale
        if not path.lower().endswith(IMG_EXTENSIONS):
            return False
        try:
            image_size(Path(path), verify=False)
            return True
        except CorruptImageError as exc:
            corrupt.append(str(exc))
            return False

    dataset = tv.ImageFolder(str(root / split), transform=transform,
                             is_valid_file=readable if skip_corrupt else None)
    if corrupt:
        logger.warning("imagefolder: skipped %d unreadable image file(s) under %s; first: %s",
                       len(corrupt), root / split, corrupt[0])
    return dataset
