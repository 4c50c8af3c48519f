"""Multi-crop augmentation (Sec. 3.1; official ``DataAugmentationDINO``).

Views, in order: global 1 (blur p=1.0), global 2 (blur p=0.1, solarize p=0.2), then
``local_number`` local crops (blur p=0.5). Every crop: bicubic RandomResizedCrop, flip,
colour jitter (p=0.8, random op order), grayscale (p=0.2), normalise. ``rotation`` > 0 (not in
the paper; 0 draws nothing) first turns the image by an angle uniform in [-rotation, rotation]
degrees, per view: the invariance a dataset whose class ignores orientation asks for.

Every random draw comes from a per-sample generator seeded by (seed, epoch, index): the
views of a sample do not depend on worker count, process count or resume point, which makes
DDP runs equal single-process runs and resumed runs equal uninterrupted ones. ``crops.backend``
picks who applies the draws: PIL per image (``pil``, as the official code) or tensor ops on the whole
batch (``tensor``, augmentation.py; same draws, same per-sample property, half the data time).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from .augmentation import augment_view
from .sections import CropsConfig

BICUBIC = TF.InterpolationMode.BICUBIC
BILINEAR = TF.InterpolationMode.BILINEAR


def random_resized_crop_box(rng: random.Random, w: int, h: int, scale: tuple[float, float],
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampling rule -> (top, left, height, width)."""
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    in_ratio = w / h   # fallback: central crop at the clamped aspect ratio
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@dataclass(frozen=True)
class ViewDraw:
    """The random draws of one view, in the order they are drawn: rotation angle (0 = none), crop
    box (top, left, height, width), flip, colour-jitter ops in application order ((op, factor), op an
    index into JITTER_OPS; empty = no jitter), grayscale, blur radius (None = no blur), solarize."""
    angle: float
    box: tuple[int, int, int, int]
    flip: bool
    jitter: tuple[tuple[int, float], ...]
    gray: bool
    blur: float | None
    solarize: bool


JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def draw_jitter(rng: random.Random, strength: tuple[float, float, float, float]) -> tuple[tuple[int, float], ...]:
    """torchvision's ColorJitter: the four ops in random order, each factor uniform in its range."""
    b, c, s, hue = strength
    ranges = [(max(0, 1 - b), 1 + b), (max(0, 1 - c), 1 + c), (max(0, 1 - s), 1 + s), (-hue, hue)]
    order = list(range(4))
    rng.shuffle(order)
    return tuple((k, rng.uniform(*ranges[k])) for k in order if ranges[k][1] > ranges[k][0])


def draw_view(rng: random.Random, cfg: CropsConfig, w: int, h: int, scale: tuple[float, float],
              blur_p: float, solarize_p: float) -> ViewDraw:
    angle = rng.uniform(-cfg.rotation, cfg.rotation) if cfg.rotation > 0 else 0.0
    box = random_resized_crop_box(rng, w, h, scale)
    flip = rng.random() < cfg.flip_prob
    jitter = draw_jitter(rng, cfg.jitter) if rng.random() < cfg.jitter_prob else ()
    gray = rng.random() < cfg.grayscale_prob
    blur = rng.uniform(*cfg.blur_radius) if blur_p > 0 and rng.random() <= blur_p else None
    return ViewDraw(angle, box, flip, jitter, gray, blur, solarize_p > 0 and rng.random() < solarize_p)


def draw_views(rng: random.Random, cfg: CropsConfig, w: int, h: int) -> list[ViewDraw]:
    """All views of one image: global 1, global 2, then the local crops."""
    views = [draw_view(rng, cfg, w, h, cfg.global_scale, cfg.blur_prob[0], 0.0),
             draw_view(rng, cfg, w, h, cfg.global_scale, cfg.blur_prob[1], cfg.solarize_prob)]
    return views + [draw_view(rng, cfg, w, h, cfg.local_scale, cfg.blur_prob[2], 0.0)
                    for _ in range(cfg.local_number)]


def view_sizes(cfg: CropsConfig) -> list[int]:
    return [cfg.global_size] * 2 + [cfg.local_size] * cfg.local_number


PIL_JITTER = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


class MultiCropAugmentation:
    """PIL image + rng -> list of (3, S, S) tensors: 2 global then `local_number` local."""

    def __init__(self, cfg: CropsConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.cfg, self.mean, self.std = cfg, list(mean), list(std)

    @staticmethod
    def _rotate(img: Image.Image, angle: float) -> Image.Image:
        """Turn about the centre; the corners it uncovers take the mean colour of the image's
        1-px border (the background of a centred object) rather than black."""
        a = np.asarray(img, dtype=np.float32)
        border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
        fill = [float(v) for v in border.mean(axis=0).round()]
        return TF.rotate(img, angle, BILINEAR, fill=fill)

    def apply(self, img: Image.Image, size: int, d: ViewDraw) -> Tensor:
        """One view of an RGB image with the given draws."""
        if self.cfg.rotation > 0:
            img = self._rotate(img, d.angle)
        img = TF.resized_crop(img, *d.box, [size, size], BICUBIC)
        if d.flip:
            img = TF.hflip(img)
        for k, factor in d.jitter:
            img = PIL_JITTER[k](img, factor)
        if d.gray:
            img = img.convert("L").convert("RGB")
        if d.blur is not None:
            img = img.filter(ImageFilter.GaussianBlur(radius=d.blur))
        if d.solarize:
            img = ImageOps.solarize(img)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)

    def __call__(self, img: Image.Image, rng: random.Random) -> list[Tensor]:
        img = img.convert("RGB")
        draws = draw_views(rng, self.cfg, img.width, img.height)
        return [self.apply(img, s, d) for s, d in zip(view_sizes(self.cfg), draws)]


class MultiCropDataset(Dataset):
    """Wraps a dataset of (PIL image, label) -> (list of crops, label).

    ``crops.backend: tensor`` draws the same views per image and applies them to the whole batch at
    once (augmentation.py) in ``__getitems__``, which DataLoader calls with a batch's indices."""

    def __init__(self, base: Dataset, augment: MultiCropAugmentation, seed: int) -> None:
        self.base, self.augment, self.seed, self.epoch = base, augment, seed, 0
        self.batched = augment.cfg.backend == "tensor"
        if self.batched and augment.cfg.rotation > 0:
            raise ValueError("crops.rotation > 0 needs crops.backend: pil (the tensor backend does not turn views)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def rng(self, idx: int) -> random.Random:
        return random.Random(f"{self.seed}/{self.epoch}/{idx}")   # str seeds are hashed with sha512

    def __getitem__(self, idx: int) -> tuple[list[Tensor], int]:
        if self.batched:
            return self.__getitems__([idx])[0]
        img, label = self.base[idx][:2]
        return self.augment(img, self.rng(idx)), label

    def __getitems__(self, indices: list[int]) -> list[tuple[list[Tensor], int]]:
        if not self.batched:
            return [self[i] for i in indices]
        cfg, sizes = self.augment.cfg, view_sizes(self.augment.cfg)
        mean, std = torch.tensor(self.augment.mean), torch.tensor(self.augment.std)
        items = [self.base[i][:2] for i in indices]
        pixels = [np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8) for img, _ in items]
        draws = [draw_views(self.rng(i), cfg, p.shape[1], p.shape[0]) for i, p in zip(indices, pixels)]
        groups: dict[tuple, list[tuple[int, int]]] = {}   # one batch per image size and view size
        for j, p in enumerate(pixels):
            for v, size in enumerate(sizes):
                groups.setdefault((p.shape, size), []).append((j, v))
        crops: list[list[Tensor]] = [[torch.empty(0)] * len(sizes) for _ in indices]
        for (_, size), members in groups.items():
            images = torch.from_numpy(np.stack([pixels[j] for j, _ in members])).permute(0, 3, 1, 2)
            out = augment_view(images, [draws[j][v] for j, v in members], size, mean, std)
            for (j, v), view in zip(members, out):
                crops[j][v] = view
        return [(c, label) for c, (_, label) in zip(crops, items)]


def n_crops(cfg: CropsConfig) -> int:
    return 2 + cfg.local_number

