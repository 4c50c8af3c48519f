"""`shapes`: a procedurally generated, seeded, deterministic image dataset with object masks.

Each image holds one object of a class (arrow, circle, cross, ring, semicircle, square, star,
triangle: :data:`CLASSES`, sorted so that a label is its ImageFolder index) with random grey level,
size, position and rotation, drawn over a low-contrast smooth grey-noise background (object and
background at least 70 levels apart) with at most one small distractor blob. Grey level, position
and background are nuisances; the outline is the class. The object dominates the image, as in the
object-centric photos DINO was made for. Generator history (docs/small-scale-recipe.md): version
1 drew high-contrast stripes and checkers with up to four distractors, and two crops shared the
texture far more than the object (k-NN at chance, experiments/recipe_search/trials.csv); version 2
drew the same objects in colour, and DINO encoded the object and background hues, not the outline
(experiments/recipe_search/colour_probe.py); even with labels the backbone of a CPU cell learns the
outline of version 3 faster (experiments/recipe_search/supervised_bound.py).
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
from pathlib import Path

import numpy as np

from dino_core.data.folder import content_hash
from dino_core.data.shapes_draw import CLASSES, SPLIT_IDS, render

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 3   # of shapes_draw's drawing; recorded in index.json


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

