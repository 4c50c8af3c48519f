"""Multi-crop augmentation (Sec. 3.1; official ``DataAugmentationDINO``).

Views, in order: global 1 (blur p=1.0), global 2 (blur p=0.1, solarize p=0.2), then
``local_number`` local crops (blur p=0.5). Every crop: bicubic RandomResizedCrop, flip,
colour jitter (p=0.8, random op order), grayscale (p=0.2), normalise. ``rotation`` > 0 (not in
the paper; 0 draws nothing) first turns the image by an angle uniform in [-rotation, rotation]
degrees, per view: the invariance a dataset whose class ignores orientation asks for.

Every random draw comes from a per-sample generator seeded by (seed, epoch, index): the
views of a sample do not depend on worker count, process count or resume point, which makes
DDP runs equal single-process runs and resumed runs equal uninterrupted ones.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from .config import CropsConfig

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


class MultiCropAugmentation:
    """PIL image + rng -> list of (3, S, S) tensors: 2 global then `local_number` local."""

    def __init__(self, cfg: CropsConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.cfg, self.mean, self.std = cfg, list(mean), list(std)

    def _jitter(self, rng: random.Random, img: Image.Image) -> Image.Image:
        b, c, s, hue = self.cfg.jitter
        ops = [(TF.adjust_brightness, (max(0, 1 - b), 1 + b)), (TF.adjust_contrast, (max(0, 1 - c), 1 + c)),
               (TF.adjust_saturation, (max(0, 1 - s), 1 + s)), (TF.adjust_hue, (-hue, hue))]
        rng.shuffle(ops)   # torchvision's ColorJitter applies the four ops in random order
        for fn, (lo, hi) in ops:
            if hi > lo:
                img = fn(img, rng.uniform(lo, hi))
        return img

    @staticmethod
    def _rotate(rng: random.Random, img: Image.Image, degrees: float) -> Image.Image:
        """Turn about the centre; the corners it uncovers take the mean colour of the image's
        1-px border (the background of a centred object) rather than black."""
        a = np.asarray(img, dtype=np.float32)
        border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
        fill = [float(v) for v in border.mean(axis=0).round()]
        return TF.rotate(img, rng.uniform(-degrees, degrees), BILINEAR, fill=fill)

    def _crop(self, rng: random.Random, img: Image.Image, size: int, scale: tuple[float, float],
              blur_p: float, solarize_p: float) -> Tensor:
        cfg = self.cfg
        if cfg.rotation > 0:
            img = self._rotate(rng, img, cfg.rotation)
        top, left, h, w = random_resized_crop_box(rng, img.width, img.height, scale)
        img = TF.resized_crop(img, top, left, h, w, [size, size], BICUBIC)
        if rng.random() < cfg.flip_prob:
            img = TF.hflip(img)
        if rng.random() < cfg.jitter_prob:
            img = self._jitter(rng, img)
        if rng.random() < cfg.grayscale_prob:
            img = img.convert("L").convert("RGB")
        if blur_p > 0 and rng.random() <= blur_p:
            img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*cfg.blur_radius)))
        if solarize_p > 0 and rng.random() < solarize_p:
            img = ImageOps.solarize(img)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)

    def __call__(self, img: Image.Image, rng: random.Random) -> list[Tensor]:
        cfg, img = self.cfg, img.convert("RGB")
        crops = [self._crop(rng, img, cfg.global_size, cfg.global_scale, cfg.blur_prob[0], 0.0),
                 self._crop(rng, img, cfg.global_size, cfg.global_scale, cfg.blur_prob[1], cfg.solarize_prob)]
        crops += [self._crop(rng, img, cfg.local_size, cfg.local_scale, cfg.blur_prob[2], 0.0)
                  for _ in range(cfg.local_number)]
        return crops


class MultiCropDataset(Dataset):
    """Wraps a dataset of (PIL image, label) -> (list of crops, label)."""

    def __init__(self, base: Dataset, augment: MultiCropAugmentation, seed: int) -> None:
        self.base, self.augment, self.seed, self.epoch = base, augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int) -> tuple[list[Tensor], int]:
        img, label = self.base[idx][:2]
        rng = random.Random(f"{self.seed}/{self.epoch}/{idx}")   # str seeds are hashed with sha512
        return self.augment(img, rng), label


def n_crops(cfg: CropsConfig) -> int:
    return 2 + cfg.local_number

