"""Prototype shapes generators tried in the recipe search (not the dataset's generator).

    python ablations/recipe_search/shapes_prototypes.py dark  data/prototypes/shapes_dark
    python ablations/recipe_search/shapes_prototypes.py palette data/prototypes/shapes_palette
    python ablations/recipe_search/shapes_prototypes.py upright data/prototypes/shapes_upright

Each swaps parts of dino_core.data.shapes (generator 2) and writes 2,000 / 1,000 images of 32 px:
- dark: light, low-saturation objects on dark low-contrast backgrounds. Rejected: raw-pixel
  k-NN@20 83.1% (pixels win trivially; random-init ViT 36.3%).
- palette: object and background colours from the same 4-colour palette (background at half
  brightness), so colour carries little identity of an image. Trial S8 of explore.yaml: k-NN@20
  31.6% (random init) -> 33.6% after 12 epochs of the default recipe.
- upright: generator 2 with the rotation limited to +-15 degrees (objects stand as in photos), so
  that the outline is shared by all images of a class. Raw-pixel k-NN@20 49.1%, random-init ViT
  16.1%; 20 epochs of the default recipe with grayscale_prob 1 gave 17.1% (budget.yaml U20g).
"""
from __future__ import annotations

import colorsys
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import dino_core.data.shapes as S  # noqa: E402

PALETTE = np.array([[220, 60, 60], [60, 180, 80], [70, 90, 220], [230, 200, 60]], dtype=np.float32)


def _smooth(rng: np.random.Generator, size: int) -> np.ndarray:
    k = int(rng.integers(2, 5))
    coarse = Image.fromarray(rng.integers(0, 256, (k, k, 3), dtype=np.uint8))
    bg = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return bg - bg.mean(axis=(0, 1), keepdims=True)


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.normal(0, rng.uniform(2, 6), (size, size, 3)).astype(np.float32)


def dark() -> None:
    def background(rng, size):
        smooth = _smooth(rng, size)   # draw order as in the trials
        return rng.uniform(20, 80) + 0.15 * smooth + _noise(rng, size)

    def far_colour(rng, avoid, distance):
        r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.35), rng.uniform(0.7, 1.0))
        return np.array([r, g, b], dtype=np.float32) * 255
    S.background, S._far_colour = background, far_colour


def upright() -> None:
    sample = S.sample_geometry

    def sample_geometry(rng, label, size):
        g = sample(rng, label, size)   # same draws; the angle uniform(0, 2 pi) maps to +-15 degrees
        return S.ShapeGeometry(g.label, g.cx, g.cy, g.radius, float(np.deg2rad(15) * (g.angle / np.pi - 1)))
    S.sample_geometry = sample_geometry


def palette() -> None:
    def background(rng, size):
        smooth = _smooth(rng, size)   # draw order as in the trials
        return PALETTE[rng.integers(4)] * 0.5 + 0.1 * smooth + _noise(rng, size)

    def far_colour(rng, avoid, distance):
        return PALETTE[rng.integers(4)].copy()
    S.background, S._far_colour = background, far_colour


if __name__ == "__main__":
    {"dark": dark, "palette": palette, "upright": upright}[sys.argv[1]]()
    S.prepare_shapes(sys.argv[2], num_train=2000, num_val=1000, workers=1)
