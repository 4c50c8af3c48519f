"""Fashion-MNIST read offline from its IDX files (gzipped or raw): 60,000 train / 10,000 test,
28 x 28 grayscale, 10 classes. Images are returned as 3-channel PIL RGB.

Splits: ``"train"`` = train images 0-49,999 (pre-training, the k-NN bank, the linear probe's train
set), ``"val"`` = train images 50,000-59,999 (a holdout carved from the train split: every choice
is made on it), ``"test"`` = the 10,000 test images (reported numbers only).

Where the files are looked for, in ``root``: ``root/<name>[.gz]`` and torchvision's layout
``root/FashionMNIST/raw/<name>[.gz]``. The Debian package ``dataset-fashion-mnist`` installs them
in :data:`DEBIAN_ROOT`, the default root.

Masks (for the attention Jaccard): every object lies on a background of exactly 0 (about half
of the pixels), so the silhouette ``pixel > 0`` is an exact ground-truth foreground mask.
"""
from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
FILES = {"train": TRAIN_FILES, "val": TRAIN_FILES, "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
HOLDOUT = 6   # the last 1/HOLDOUT of the train files (10,000 of 60,000) form the "val" split
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzipped or raw) as an array of its dims, e.g. images (N, 28, 28) uint8."""
    path = Path(path)
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX header says dims {dims} ({expected} bytes), file has {len(data)} bytes")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims)


def find_file(root: Path, name: str) -> Path | None:
    """``root/name[.gz]`` or ``root/FashionMNIST/raw/name[.gz]``, whichever exists first."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def resolve_root(root: str | os.PathLike | None) -> Path:
    """``root``, or :data:`DEBIAN_ROOT` when root is None, "" or "auto"."""
    return DEBIAN_ROOT if root in (None, "", "auto") else Path(root)


def missing_message(root: Path, name: str) -> str:
    """The error text for missing files: the path and the two ways to get them."""
    text = (f"Fashion-MNIST file {name}[.gz] not found in {root} (nor in {root / 'FashionMNIST' / 'raw'}). "
            "Get the files either with `apt-get install dataset-fashion-mnist` (installs them in "
            f"{DEBIAN_ROOT}) or, where internet exists, with torchvision: "
            "`torchvision.datasets.FashionMNIST(root, download=True)`.")
    if root != DEBIAN_ROOT and find_file(DEBIAN_ROOT, name) is not None:
        text += f" The Debian copy exists: pass root={str(DEBIAN_ROOT)!r}."
    return text


class FashionMNIST(Dataset):
    """Split ``"train"`` (50,000), ``"val"`` (10,000 held out of the train files) or ``"test"``
    (the 10,000 test images); items ``(image, label)``
    with ``image = transform(PIL RGB 28 x 28)``, or ``(image, label, mask_transform(silhouette))``
    with a ``mask_transform`` (silhouette: PIL L, 255 where the pixel is > 0, else 0)."""

    classes = list(CLASSES)

    def __init__(self, root: str | os.PathLike | None, split: str = "train",
                 transform: Callable | None = None, mask_transform: Callable | None = None) -> None:
        self.mask_transform = mask_transform
        if split not in FILES:
            raise ValueError(f"fashion_mnist: unknown split {split!r}; allowed: {', '.join(FILES)}")
        self.root, self.split, self.transform = resolve_root(root), split, transform
        paths = []
        for name in FILES[split]:
            path = find_file(self.root, name)
            if path is None:
                raise FileNotFoundError(missing_message(self.root, name))
            paths.append(path)
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"fashion_mnist: {paths[0]} holds {images.shape}, {paths[1]} holds "
                             f"{labels.shape}; expected (N, H, W) images and N labels")
        cut = len(labels) - len(labels) // HOLDOUT if split != "test" else 0
        rows = slice(cut, None) if split == "val" else slice(None, cut or None)
        self.images, labels = images[rows], labels[rows]
        if len(labels) == 0:
            raise ValueError(f"fashion_mnist: {paths[0]} holds no images")
        if labels.min() < 0 or labels.max() >= len(CLASSES):
            raise ValueError(f"fashion_mnist: labels in {paths[1]} outside 0..{len(CLASSES) - 1}")
        self.targets = labels.astype(np.int64).tolist()
        logger.info("fashion_mnist: %d %s images from %s", len(self.targets), split, paths[0])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple:
        pixels = np.ascontiguousarray(self.images[index])
        image = Image.fromarray(pixels).convert("RGB")
        item = (self.transform(image) if self.transform is not None else image), self.targets[index]
        if self.mask_transform is None:
            return item
        return (*item, self.mask_transform(Image.fromarray(np.where(pixels > 0, 255, 0).astype(np.uint8), "L")))
