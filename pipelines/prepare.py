"""Prepare stage: make a dataset ready on disk and summarise it.

``shapes`` is generated once into ``--root`` (reused when index.json has the same params); the
other datasets are checked (and downloaded only with ``--download``). Usage::

    python -m pipelines.prepare --dataset shapes --root data/shapes --num-train 10000 --num-val 2000 \\
        --image-size 32 --seed 0
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import Sequence

from dino_core.data import registry, shapes

logger = logging.getLogger(__name__)

SHAPES_OPTIONS = ("num_train", "num_val", "image_size", "seed", "overwrite", "workers")


def prepare(name: str, root: str, **kwargs) -> dict:
    """Prepare dataset ``name`` at ``root``; returns a summary dict.

    shapes: kwargs ``num_train``, ``num_val``, ``image_size``, ``seed``, ``overwrite``, ``workers`` go to
    :func:`dino_core.data.shapes.prepare_shapes`; the summary is its index (classes, counts, params,
    sha256). Other datasets: kwarg ``download``; the summary holds classes and per-split counts.
    """
    registry.spec(name)
    if name == "shapes":
        unknown = set(kwargs) - set(SHAPES_OPTIONS)
        if unknown:
            raise ValueError(f"shapes: unknown options {sorted(unknown)}; allowed: {', '.join(SHAPES_OPTIONS)}")
        return {"root": str(root), **shapes.prepare_shapes(root, **kwargs)}
    unknown = set(kwargs) - {"download"}
    if unknown:
        raise ValueError(f"{name}: options {sorted(unknown)} only apply to shapes; {name} takes: download")
    counts, classes = {}, []
    for split in registry.spec(name).splits:
        dataset = registry.build_dataset(name, root, split, download=kwargs.get("download", False))
        counts[split], classes = len(dataset), list(dataset.classes)
    return {"dataset": name, "root": str(root), "classes": classes, "counts": counts}


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line entry point; logs the summary as JSON and returns it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", help="take dataset, root and sizes from this params.yaml (its profile); "
                        "the pipeline's way. Otherwise --dataset and --root are required")
    parser.add_argument("--dataset", choices=sorted(registry.DATASETS))
    parser.add_argument("--root", help="dataset folder")
    parser.add_argument("--num-train", type=int, help="shapes: train images")
    parser.add_argument("--num-val", type=int, help="shapes: val images")
    parser.add_argument("--image-size", type=int, help="shapes: side in pixels")
    parser.add_argument("--seed", type=int, help="shapes: generator seed")
    parser.add_argument("--workers", type=int, help="shapes: processes that render (files do not depend on it)")
    parser.add_argument("--download", action="store_true", help="torchvision datasets: download if missing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.params:
        from .params import load_all, resolve_profile
        data = resolve_profile(load_all(args.params))["data"]
        args.dataset, args.root = data["dataset"], data["root"]
        if data["dataset"] == "shapes":   # the data seed is fixed: training seeds vary, the images do not
            args.num_train, args.num_val, args.image_size, args.seed = \
                data["num_train"], data["num_val"], data["image_size"], 0
        args.download = args.download or data["download"]
    elif not (args.dataset and args.root):
        parser.error("--dataset and --root are required without --params")
    options = {key: getattr(args, key) for key in ("num_train", "num_val", "image_size", "seed", "workers")
               if getattr(args, key) is not None}
    if args.download:
        options["download"] = True
    summary = prepare(args.dataset, args.root, **options)
    if args.params:   # the stage's declared output folder always exists, whatever the dataset
        from dino_core.checkpoint import atomic_write_json
        from .params import ROOT
        (ROOT / "data" / "prepared").mkdir(parents=True, exist_ok=True)
        atomic_write_json(ROOT / "data" / "prepared" / "summary.json",
                          {k: v for k, v in summary.items() if k not in ("layout", "root")})
    logger.info("prepared %s", json.dumps({k: v for k, v in summary.items() if k != "layout"}, sort_keys=True))
    return summary


if __name__ == "__main__":
    main()
