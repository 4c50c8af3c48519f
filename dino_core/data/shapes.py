"""`shapes`: a procedurally generated, seeded, deterministic image dataset with object masks.

Each image holds one object of a class (arrow, circle, cross, ring, semicircle, square, star,
triangle: :data:`CLASSES`, sorted so that a label is its ImageFolder index) with random grey level,
size, position and rotation, drawn over a low-contrast smooth grey-noise background (object and
background at least 70 levels apart) with at most one small distractor blob. Grey level, position
and background are nuisances; the outline is the class. The object dominates the image, as in the
object-centric photos DINO was made for. Generator history (README "Small data and CPU"): version
1 drew high-contrast stripes and checkers with up to four distractors, and two crops shared the
texture far more than the object (k-NN at chance, ablations/recipe_search/trials.csv); version 2
drew the same objects in colour, and DINO encoded the object and background hues, not the outline
(ablations/recipe_search/colour_probe.py); even with labels the backbone of a CPU cell learns the
outline of version 3 faster (ablations/recipe_search/supervised_bound.py).
Every image has a binary foreground mask rasterised from the same polygon vertices
as the object (4x super-sampled; mask = object coverage >= 0.5).

On-disk layout, written once by :func:`prepare_shapes` (atomically: temp dir, then rename)::

    root/index.json                          classes, counts, params, seed, sha256 of the files
    root/{train,val}/images/<class>/<idx>.png  RGB, image_size x image_size
    root/{train,val}/masks/<class>/<idx>.png   L, 0 (background) or 255 (object)

Image ``idx`` of a split is generated from ``SeedSequence([seed, split_id, idx])``, so the files
depend on the seed only (not on generation order nor on the number of worker processes); its label
is ``idx % len(CLASSES)``, so every class is in both splits.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dino_core.data.folder import content_hash

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 3
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


def shapes_params(num_train: int = 10_000, num_val: int = 2_000, image_size: int = 32,
                  seed: int = 0) -> dict:
    """The generator parameters recorded in index.json (a root with equal params is reused)."""
    params = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}
    for key, low in (("num_train", len(CLASSES)), ("num_val", len(CLASSES)), ("image_size", 16), ("seed", 0)):
        if not isinstance(params[key], (int, np.integer)) or params[key] < low:
            raise ValueError(f"shapes: {key} must be an integer >= {low} (num_*: one image per class and split),"
                             f" got {params[key]!r}")
    return {**{key: int(value) for key, value in params.items()}, "generator_version": GENERATOR_VERSION}


def read_index(root: str | os.PathLike) -> dict | None:
    """The parsed root/index.json, or None when it does not exist."""
    path = Path(root) / "index.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write_range(out: Path, split: str, count: int, size: int, seed: int, indices: range) -> None:
    width = max(5, len(str(count - 1)))
    for idx in indices:
        image, mask, geometry = render(seed, split, idx, size)
        rel = Path(CLASSES[geometry.label]) / f"{idx:0{width}d}.png"
        image.save(out / split / "images" / rel, format="PNG")
        mask.save(out / split / "masks" / rel, format="PNG")


def _write_splits(out: Path, params: dict, workers: int) -> dict[str, dict[str, int]]:
    """Render every split into ``out`` with ``workers`` processes; returns per-class counts."""
    jobs = []
    for split in SPLIT_IDS:
        count = params[f"num_{split}"]
        for kind, name in ((kind, name) for kind in ("images", "masks") for name in CLASSES):
            (out / split / kind / name).mkdir(parents=True)
        step = -(-count // workers)
        jobs += [(out, split, count, params["image_size"], params["seed"], range(i, min(i + step, count)))
                 for i in range(0, count, step)]
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        list((pool.map if pool else map)(_write_range, *zip(*jobs)))
    return {split: {name: len(range(label, params[f"num_{split}"], len(CLASSES)))
                    for label, name in enumerate(CLASSES)} for split in SPLIT_IDS}


def _publish(tmp: Path, root: Path, params: dict, overwrite: bool) -> dict:
    """Rename the finished temp dir onto root; a concurrent writer with equal params wins."""
    if overwrite and root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.replace(root, old)
        shutil.rmtree(old)
    try:
        os.rename(tmp, root)  # atomic; also replaces an empty directory
    except OSError:
        existing = read_index(root)
        shutil.rmtree(tmp, ignore_errors=True)
        if existing is None or existing["params"] != params:
            raise
        return existing
    return read_index(root)


def prepare_shapes(root: str | os.PathLike, *, num_train: int = 10_000, num_val: int = 2_000,
                   image_size: int = 32, seed: int = 0, overwrite: bool = False,
                   verify: bool = False, workers: int = 1) -> dict:
    """Generate the dataset into ``root`` once and return its index (a dict, see module doc).

    A root whose index.json has the same params is reused (with ``verify``, after checking the
    content hash). Other params raise ValueError unless ``overwrite``. A non-empty root without
    index.json is never touched (FileExistsError). ``workers`` processes render in parallel; the
    files do not depend on it.
    """
    root = Path(root)
    params = shapes_params(num_train, num_val, image_size, seed)
    index = read_index(root)
    if index is not None and index.get("params") == params and not overwrite:
        if verify and content_hash(root, SPLIT_IDS) != index["sha256"]:
            raise ValueError(f"shapes: files under {root} do not match the sha256 in {root / 'index.json'}; "
                             "delete the folder or pass overwrite=True")
        logger.info("shapes: reusing %s (sha256 %s)", root, index["sha256"][:12])
        return index
    if index is not None and not overwrite:
        raise ValueError(f"shapes: {root} holds params {index.get('params')}, asked for {params}; "
                         "use another root or overwrite=True")
    if index is None and root.exists() and any(root.iterdir()):
        raise FileExistsError(f"shapes: {root} exists, is not empty and has no index.json; refusing to write there")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        start = time.perf_counter()
        counts = _write_splits(tmp, params, max(1, int(workers)))
        index = {"dataset": "shapes", "classes": list(CLASSES), "counts": counts, "params": params,
                 "seed": params["seed"], "sha256": content_hash(tmp, SPLIT_IDS),
                 "layout": "{split}/images/<class>/<idx>.png, {split}/masks/<class>/<idx>.png"}
        (tmp / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        logger.info("shapes: generated %d images of %d px in %.1f s", num_train + num_val, image_size,
                    time.perf_counter() - start)
        return _publish(tmp, root, params, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

