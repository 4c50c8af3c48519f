"""How one `shapes` image and its mask are drawn (generator version 3): the class outlines, the
random geometry, the grey background and object, the distractor blob, the super-sampled mask.
:mod:`dino_core.data.shapes` writes these images to disk; its module doc describes the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SPLIT_IDS = {"train": 0, "val": 1}
SUPERSAMPLE = 4


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _outlines() -> dict[str, tuple[tuple[np.ndarray, bool], ...]]:
    """Polygons per class, scaled to circumradius 1 around (0, 0): ``((vertices (N, 2), is_hole), ...)``."""
    quarter = [(0.3, 1), (0.3, 0.3), (1, 0.3), (1, -0.3), (0.3, -0.3), (0.3, -1)]
    arrow = [(-1, -0.25), (0.1, -0.25), (0.1, -0.65), (1, 0), (0.1, 0.65), (0.1, 0.25), (-1, 0.25)]
    arc = np.linspace(0.0, np.pi, 25)
    raw = {"arrow": [(np.array(arrow, dtype=float), False)],
           "circle": [(_regular(48), False)],
           "cross": [(np.array(quarter + [(-x, -y) for x, y in quarter], dtype=float), False)],
           "ring": [(_regular(48), False), (_regular(48, radius=0.55), True)],
           "semicircle": [(np.stack([np.cos(arc), 0.5 - np.sin(arc)], axis=1), False)],
           "square": [(_regular(4, phase=np.pi / 4), False)],
           "star": [(_regular(10, phase=-np.pi / 2) * np.tile([1.0, 0.42], 5)[:, None], False)],
           "triangle": [(_regular(3, phase=-np.pi / 2), False)]}
    scale = {name: max(np.linalg.norm(v, axis=1).max() for v, _ in polys) for name, polys in raw.items()}
    return {name: tuple((v / scale[name], hole) for v, hole in polys) for name, polys in raw.items()}


OUTLINES = _outlines()
CLASSES = tuple(sorted(OUTLINES))  # sorted, so the generator label is the ImageFolder class index


def polygon_area(vertices: np.ndarray) -> float:
    """Shoelace area of a simple polygon with vertices (N, 2)."""
    x, y = vertices[:, 0], vertices[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


@dataclass(frozen=True)
class ShapeGeometry:
    """The object of one image: class ``label``, centre (cx, cy) and circumradius in pixels."""

    label: int
    cx: float
    cy: float
    radius: float
    angle: float

    def polygons(self) -> list[tuple[np.ndarray, bool]]:
        """Pixel-space polygons ``[(vertices (N, 2) as (x, y), is_hole), ...]``."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        rot = np.array([[c, s], [-s, c]])
        return [(v @ rot * self.radius + (self.cx, self.cy), hole)
                for v, hole in OUTLINES[CLASSES[self.label]]]

    def area(self) -> float:
        """Analytic object area in pixels (holes subtracted)."""
        return sum(-polygon_area(v) if hole else polygon_area(v) for v, hole in self.polygons())


def sample_geometry(rng: np.random.Generator, label: int, size: int) -> ShapeGeometry:
    """Random size (circumradius 28-42% of the side), position (fully inside) and rotation."""
    radius = rng.uniform(0.28, 0.42) * size
    cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
    return ShapeGeometry(label, float(cx), float(cy), float(radius), float(rng.uniform(0, 2 * np.pi)))


def coverage(geometry: ShapeGeometry, size: int) -> np.ndarray:
    """Object coverage in [0, 1], (size, size) float32, from the super-sampled polygons."""
    canvas = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for vertices, hole in geometry.polygons():
        draw.polygon((vertices * SUPERSAMPLE - 0.5).ravel().tolist(), fill=0 if hole else 255)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth grey noise at 35% contrast plus pixel noise, (size, size, 3) float32 in ~[0, 255]."""
    k = int(rng.integers(2, 5))
    coarse = Image.fromarray(rng.integers(0, 256, (k, k, 3), dtype=np.uint8))
    bg = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    mean = bg.mean(axis=(0, 1), keepdims=True)
    bg = mean + 0.35 * (bg - mean) + rng.normal(0, rng.uniform(2, 6), (size, size, 3)).astype(np.float32)
    return bg.mean(axis=2, keepdims=True).repeat(3, axis=2)   # grey: no hue for two views to share


def _far_level(rng: np.random.Generator, avoid: float, distance: float = 70.0) -> np.ndarray:
    """A grey (3,): the first of 8 uniform levels at least ``distance`` from the level ``avoid``."""
    levels = rng.uniform(0, 255, 8)
    ok = np.flatnonzero(np.abs(levels - avoid) >= distance)
    value = levels[ok[0]] if len(ok) else (avoid - 110 if avoid > 127 else avoid + 110)
    return np.full(3, value, dtype=np.float32)


def _distractors(rng: np.random.Generator, canvas: Image.Image, avoid: float) -> None:
    """0-1 small irregular blob (never a class outline) in a grey level away from ``avoid``."""
    size = canvas.size[0]
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 2))):
        fill = tuple(int(c) for c in _far_level(rng, avoid))
        centre = rng.uniform(0, size, 2)
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.03, 0.07) * size * rng.uniform(0.4, 1.0, n)
        pts = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        draw.polygon(pts.ravel().tolist(), fill=fill)


def render(seed: int, split: str, idx: int, size: int = 32) -> tuple[Image.Image, Image.Image, ShapeGeometry]:
    """Image ``idx`` of ``split``: (RGB image size x size, L mask 0/255, geometry of the object)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], idx]))
    geometry = sample_geometry(rng, idx % len(CLASSES), size)
    alpha = coverage(geometry, size)
    bg = background(rng, size)
    level = _far_level(rng, float(bg[alpha > 0.5].mean()))
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    _distractors(rng, canvas, float(level[0]))
    yy, xx = np.indices((size, size), dtype=np.float32)
    shade = 1 + rng.uniform(-0.25, 0.25) * ((xx - geometry.cx) * np.cos(geometry.angle)
                                             + (yy - geometry.cy) * np.sin(geometry.angle)) / geometry.radius
    out = np.asarray(canvas, dtype=np.float32) * (1 - alpha[..., None]) + level * (shade * alpha)[..., None]
    image = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    mask = Image.fromarray(np.where(alpha >= 0.5, 255, 0).astype(np.uint8))
    return image, mask, geometry
