"""Prototype shapes generators tried in the recipe search, and generator 2 for its recorded trials.

    python -m experiments.recipe_search.shapes_prototypes v2 data/prototypes/shapes_v2
    python -m experiments.recipe_search.shapes_prototypes dark data/prototypes/shapes_dark
    python -m experiments.recipe_search.shapes_prototypes palette data/prototypes/shapes_palette
    python -m experiments.recipe_search.shapes_prototypes v2,upright data/prototypes/shapes_upright
    python -m experiments.recipe_search.shapes_prototypes upright data/prototypes/shapes_v3_upright
    python -m experiments.recipe_search.shapes_prototypes wide,upright data/prototypes/shapes_v3_r15up
    python -m experiments.recipe_search.shapes_prototypes small,upright data/prototypes/shapes_v3_r12up

Each swaps parts of dino_core.data.shapes_draw (v2 also shapes.render) and writes 2,000 (or a third
argument) / 1,000 images of 32 px (names joined by commas apply in order):
- v2: generator version 2 (objects in colour on low-contrast colour-noise backgrounds), the
  dataset of every shapes trial before G20 (budget.yaml, explore.yaml S3-S7, colour_probe.py).
  Raw-pixel k-NN@20 33.5%, random-init ViT 14.8%. DINO encodes the hues, not the outline.
- dark (on v2): light, low-saturation objects on dark low-contrast backgrounds. Rejected: raw-pixel
  k-NN@20 83.1% (pixels win trivially; random-init ViT 36.3%).
- palette (on v2): object and background colours from the same 4-colour palette (background at
  half brightness), so colour carries little identity of an image. Trial S8 of explore.yaml: k-NN@20
  31.6% (random init) -> 33.6% after 12 epochs of the default recipe.
- upright: the rotation limited to +-15 degrees (objects stand as in photos), so that the outline is
  shared by all images of a class. On v2: raw-pixel k-NN@20 49.1%, random-init ViT 16.1%; 20
  epochs of the default recipe with grayscale_prob 1 gave 17.1% (budget.yaml U20g).
- upright on generator 3 (grey): raw-pixel k-NN@20 86.2%, random-init ViT 30.1%; DINO (U20t2) 39.7%.
- wide (before upright): circumradius 15-42% of the side instead of 28-42% (same draws). With
  upright on generator 3: raw pixels 59.2%, random init 19.3%; DINO (R15U20t2) 27.7%.
- small (before upright): circumradius 12-30% of the side, so objects move and change size over
  the image and pixels match less. With upright on generator 3: raw pixels 36.4%, random init 15.9%;
  DINO with τt 0.02 29.6% at 20 epochs (R12U20t2), 28.3% at 100 (R12U100t2).
The grey prototype of the G trials (budget.yaml) became generator version 3, the dataset's own.
"""
from __future__ import annotations

import colorsys
import sys

import numpy as np
from PIL import Image, ImageDraw

import dino_core.data.shapes as S  # writes the files; its render is swapped for v2
import dino_core.data.shapes_draw as D  # draws one image; its parts are swapped

PALETTE = np.array([[220, 60, 60], [60, 180, 80], [70, 90, 220], [230, 200, 60]], dtype=np.float32)


def _smooth(rng: np.random.Generator, size: int) -> np.ndarray:
    k = int(rng.integers(2, 5))
    coarse = Image.fromarray(rng.integers(0, 256, (k, k, 3), dtype=np.uint8))
    bg = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return bg - bg.mean(axis=(0, 1), keepdims=True)


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.normal(0, rng.uniform(2, 6), (size, size, 3)).astype(np.float32)


def _v2_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Generator 2: smooth colour noise at 35% contrast plus pixel noise."""
    k = int(rng.integers(2, 5))
    coarse = Image.fromarray(rng.integers(0, 256, (k, k, 3), dtype=np.uint8))
    bg = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    mean = bg.mean(axis=(0, 1), keepdims=True)
    bg = mean + 0.35 * (bg - mean)
    return bg + rng.normal(0, rng.uniform(2, 6), (size, size, 3)).astype(np.float32)


def _v2_far_colour(rng: np.random.Generator, avoid: np.ndarray, distance: float) -> np.ndarray:
    candidates = rng.uniform(0, 255, (8, 3))
    ok = np.flatnonzero(((candidates - avoid) ** 2).sum(axis=1) >= distance ** 2)
    colour = candidates[ok[0]] if len(ok) else np.where(avoid > 127, avoid - 127, avoid + 127)
    return colour.astype(np.float32)


def _v2_render(seed: int, split: str, idx: int, size: int = 32):
    """Generator 2's render: colours from the patched D._far_colour / D.background."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, D.SPLIT_IDS[split], idx]))
    geometry = D.sample_geometry(rng, idx % len(D.CLASSES), size)
    alpha = D.coverage(geometry, size)
    bg = D.background(rng, size)
    colour = D._far_colour(rng, bg[alpha > 0.5].mean(axis=0), 110)
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 2))):   # 0-1 distractor blob
        fill = tuple(int(c) for c in D._far_colour(rng, colour, 90))
        centre, n = rng.uniform(0, size, 2), int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.03, 0.07) * size * rng.uniform(0.4, 1.0, n)
        draw.polygon((centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]).ravel().tolist(),
                     fill=fill)
    yy, xx = np.indices((size, size), dtype=np.float32)
    shade = 1 + rng.uniform(-0.25, 0.25) * ((xx - geometry.cx) * np.cos(geometry.angle)
                                             + (yy - geometry.cy) * np.sin(geometry.angle)) / geometry.radius
    out = np.asarray(canvas, dtype=np.float32) * (1 - alpha[..., None]) + colour * (shade * alpha)[..., None]
    image = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    return image, Image.fromarray(np.where(alpha >= 0.5, 255, 0).astype(np.uint8)), geometry


def v2() -> None:
    D.background, D._far_colour, S.render = _v2_background, _v2_far_colour, _v2_render
    S.GENERATOR_VERSION = 2   # recorded in index.json


def dark() -> None:
    v2()

    def background(rng, size):
        smooth = _smooth(rng, size)   # draw order as in the trials
        return rng.uniform(20, 80) + 0.15 * smooth + _noise(rng, size)

    def far_colour(rng, avoid, distance):
        r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.35), rng.uniform(0.7, 1.0))
        return np.array([r, g, b], dtype=np.float32) * 255
    D.background, D._far_colour = background, far_colour


def upright() -> None:
    sample = D.sample_geometry

    def sample_geometry(rng, label, size):
        g = sample(rng, label, size)   # same draws; the angle uniform(0, 2 pi) maps to +-15 degrees
        return D.ShapeGeometry(g.label, g.cx, g.cy, g.radius, float(np.deg2rad(15) * (g.angle / np.pi - 1)))
    D.sample_geometry = sample_geometry


def _radius(lo: float, hi: float) -> None:
    def sample_geometry(rng, label, size):   # generator 3's draws, another radius range
        radius = rng.uniform(lo, hi) * size
        cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
        return D.ShapeGeometry(label, float(cx), float(cy), float(radius), float(rng.uniform(0, 2 * np.pi)))
    D.sample_geometry = sample_geometry


def wide() -> None:
    _radius(0.15, 0.42)


def small() -> None:
    _radius(0.12, 0.30)


def palette() -> None:
    v2()

    def background(rng, size):
        smooth = _smooth(rng, size)   # draw order as in the trials
        return PALETTE[rng.integers(4)] * 0.5 + 0.1 * smooth + _noise(rng, size)

    def far_colour(rng, avoid, distance):
        return PALETTE[rng.integers(4)].copy()
    D.background, D._far_colour = background, far_colour


if __name__ == "__main__":
    for name in sys.argv[1].split(","):   # e.g. v2,upright applies both
        {"v2": v2, "dark": dark, "palette": palette, "upright": upright, "wide": wide, "small": small}[name]()
    S.prepare_shapes(sys.argv[2], num_train=int(sys.argv[3]) if len(sys.argv) > 3 else 2000, num_val=1000)
