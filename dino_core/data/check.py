"""Data checks made before any training: the whole data set is looked at once, every problem
is reported together, and the run never starts on data it would die on later.

``check_data(cfg, world_size)`` raises DataError (one line: the key, its value, every problem
with its path, and what fixes it) for: a missing data root or split; every empty class folder
and every unreadable image of the folder datasets (``shapes``: each file decoded; ``imagefolder``:
each header read, the cost that scales to ImageNet, as its ``skip_corrupt`` does); a pre-training
set smaller than one global batch. With ``data.skip_corrupt`` the unreadable images are logged
once and skipped, by training and evaluation alike (they build the same FolderDataset checks).
With ``data.download`` the files are fetched when the run starts and checked only then.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from dino_core.config import Config
from dino_core.data import registry
from dino_core.data.folder import IMAGE_EXTENSIONS, CorruptImageError, image_size

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data, found before training (the message names the paths)."""


def split_folders(cfg: Config) -> list[Path]:
    """The <class>/<image> folders of a folder-layout dataset's splits ([] for other datasets)."""
    root = Path(cfg.data.root)
    if cfg.data.dataset == "shapes":
        return [root / split / "images" for split in ("train", "val")]
    if cfg.data.dataset == "imagefolder":
        return [root / split for split in ("train", "val")]
    return []


def scan_folder(folder: Path, decode: bool) -> tuple[list[str], list[str]]:
    """(empty class folders, unreadable images with the reason) under folder/<class>/."""
    empty, corrupt = [], []
    if not folder.is_dir():
        return empty, corrupt   # the dataset build below names the missing folder
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        files = sorted(p for p in Path(entry.path).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            empty.append(entry.path)
        for path in files:
            try:
                image_size(path, verify=decode)
            except CorruptImageError as exc:
                corrupt.append(str(exc).removeprefix("cannot read image "))
    return empty, corrupt


def check_files(cfg: Config) -> None:
    """Every empty class folder and unreadable image of the splits, all in one DataError."""
    decode = cfg.data.dataset == "shapes"
    empty, corrupt = [], []
    for folder in split_folders(cfg):
        e, c = scan_folder(folder, decode)
        empty += e
        corrupt += c
    where = f"data.root {cfg.data.root}"
    if empty:
        raise DataError(f"{where}: {len(empty)} empty class folder(s): {', '.join(empty)}; allowed: class "
                        f"folders holding at least one {'/'.join(IMAGE_EXTENSIONS)} file (fill or remove them)"
                        + (f"; also {len(corrupt)} unreadable image(s): {'; '.join(corrupt)}" if corrupt else ""))
    if corrupt and not cfg.data.skip_corrupt:
        raise DataError(f"{where}: {len(corrupt)} unreadable image(s): {'; '.join(corrupt)}; set "
                        f"data.skip_corrupt: true to skip them in training and evaluation, or replace them")
    if corrupt:
        log.warning("%s: data.skip_corrupt: %d unreadable image(s) will be skipped by training and evaluation: %s",
                    where, len(corrupt), "; ".join(corrupt))


def check_data(cfg: Config, world_size: int = 1) -> None:
    """All checks of the module docstring; DataError on the first kind of problem found."""
    d = cfg.data
    if d.download:
        return
    check_files(cfg)
    try:
        train = registry.build_dataset(d.dataset, d.root, registry.spec(d.dataset).pretrain_split,
                                       skip_corrupt=d.skip_corrupt, limit=d.num_train or None)
        registry.build_dataset(d.dataset, d.root, "val", skip_corrupt=d.skip_corrupt, limit=d.num_val or None)
        report = registry.spec(d.dataset).report_split
        if report != "val":   # the report split: its skip + limit must fit too
            registry.build_dataset(d.dataset, d.root, report, skip_corrupt=d.skip_corrupt,
                                   limit=d.num_test or None, skip=d.test_skip)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"data.root {d.root}: {exc}") from exc
    per_rank = len(train) // world_size
    if per_rank < cfg.optim.batch_size:
        raise DataError(f"optim.batch_size: {cfg.optim.batch_size} per process x {world_size} process(es) is more "
                        f"than the {len(train)} pre-training images of data.root {d.root} (data.num_train "
                        f"{d.num_train}): no full batch; allowed: batch_size <= {per_rank}")
