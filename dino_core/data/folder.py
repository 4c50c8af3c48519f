"""ImageFolder-style reading of our own layout, with optional masks and strict input checks.

Layout: ``images_root/<class>/<file>`` and, optionally, ``masks_root/<class>/<file>`` (the same
relative path; a mask is an L/1 image whose pixels >= 128 are foreground, same size as its image).

Every problem is reported with the path: a missing root, no class folder, an empty class folder,
an unreadable or corrupt image (or, with ``skip_corrupt=True``, skipped with one warning and a
count), a missing mask, a mask whose size differs from its image. A dataset never ends up empty.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


class CorruptImageError(ValueError):
    """An image or mask file that cannot be decoded (the message names the path)."""


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def open_image(path: Path, mode: str) -> Image.Image:
    """Decode ``path`` fully and convert it to ``mode``; CorruptImageError names the path."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode)
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(f"cannot read image {path}: {exc}") from exc


def image_size(path: Path, verify: bool) -> tuple[int, int]:
    """(width, height) of an image file; with ``verify`` the whole file is decoded."""
    try:
        with Image.open(path) as image:
            if verify:
                image.load()
            return image.size
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(f"cannot read image {path}: {exc}") from exc


def content_hash(root: str | os.PathLike, subdirs: Iterable[str]) -> str:
    """sha256 over the relative paths and bytes of every file under ``root/<subdir>``, sorted."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for sub in subdirs for p in (root / sub).rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """L/1 mask (W x H) -> bool tensor (H, W), foreground where the pixel value >= 128."""
    return torch.from_numpy(np.asarray(mask.convert("L")) >= 128)


def find_classes(images_root: Path) -> list[str]:
    """Sorted class folder names under ``images_root``; errors name the missing or empty root."""
    if not images_root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {images_root} (expected <root>/<class>/<image> folders)")
    classes = sorted(entry.name for entry in os.scandir(images_root)
                     if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ValueError(f"no class folders in {images_root} (expected <root>/<class>/<image> folders)")
    return classes


class FolderDataset(Dataset):
    """Images under ``images_root/<class>/``; items ``(image, label)`` or ``(image, label, mask)``.

    ``image`` is ``transform(PIL RGB)`` (the PIL image itself without a transform); ``mask`` is
    ``mask_transform(PIL L)`` or, without one, a bool tensor (H, W). Masks are returned when
    ``masks_root`` is given. ``verify`` decodes every file once at construction (so a corrupt file
    is found now, not mid-epoch); without it only the headers are read.
    """

    def __init__(self, images_root: str | os.PathLike, *, masks_root: str | os.PathLike | None = None,
                 transform: Callable | None = None, mask_transform: Callable | None = None,
                 skip_corrupt: bool = False, verify: bool = True) -> None:
        self.root = Path(images_root)
        self.masks_root = None if masks_root is None else Path(masks_root)
        self.transform, self.mask_transform = transform, mask_transform
        self.classes = find_classes(self.root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        skipped: list[str] = []
        for name in self.classes:
            files = sorted(p for p in (self.root / name).iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise ValueError(f"empty class folder: {self.root / name} (no {'/'.join(IMAGE_EXTENSIONS)} files)")
            for path in files:
                try:
                    self._check(path, verify)
                except CorruptImageError as exc:
                    if not skip_corrupt:
                        raise
                    skipped.append(str(exc))
                    continue
                self.samples.append((path, self.class_to_idx[name]))
        if skipped:
            logger.warning("skipped %d corrupt image file(s) under %s; first: %s", len(skipped), self.root, skipped[0])
        self.num_skipped = len(skipped)
        if not self.samples:
            raise ValueError(f"no readable images under {self.root} ({len(skipped)} corrupt file(s) skipped)")
        self.targets = [label for _, label in self.samples]

    def mask_path(self, path: Path) -> Path:
        """The mask file of image ``path`` (same path relative to the masks root)."""
        return self.masks_root / path.relative_to(self.root)

    def _check(self, path: Path, verify: bool) -> None:
        size = image_size(path, verify)
        if self.masks_root is None:
            return
        mask_path = self.mask_path(path)
        if not mask_path.is_file():
            raise FileNotFoundError(f"mask not found: {mask_path} (for image {path})")
        mask_size = image_size(mask_path, verify)
        if mask_size != size:
            raise ValueError(f"mask size {mask_size[0]}x{mask_size[1]} of {mask_path} differs from "
                             f"image size {size[0]}x{size[1]} of {path}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple:
        path, label = self.samples[index]
        image = open_image(path, "RGB")
        image_out = self.transform(image) if self.transform is not None else image
        if self.masks_root is None:
            return image_out, label
        mask = open_image(self.mask_path(path), "L")
        if mask.size != image.size:
            raise ValueError(f"mask size {mask.size} of {self.mask_path(path)} differs from image size "
                             f"{image.size} of {path}")
        mask_out = self.mask_transform(mask) if self.mask_transform is not None else mask_to_tensor(mask)
        return image_out, label, mask_out
