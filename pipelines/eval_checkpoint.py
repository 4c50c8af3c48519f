"""Evaluate any DINO checkpoint (ours or an official release) on a dataset: one metrics JSON.

    python -m pipelines.eval_checkpoint dino_deitsmall16_pretrain.pth --out eval/vits16.json \\
        --set data.dataset=imagefolder --set data.root=/datasets/imagenet --set data.image_size=224 \\
        --set data.num_train=0 --set data.num_val=0     # 0 = the whole split
    python -m pipelines.eval_checkpoint runs/single/try1/checkpoint.pth --key student --out s.json

The file is a bare backbone state dict (official ``*_pretrain.pth``) or a training checkpoint with
``teacher`` / ``student`` entries (official ``checkpoint.pth`` or ours; ``--key`` picks one,
teacher by default). The architecture is read from the weights (embed_dim, depth, patch size; the
head count of vit_tiny/small/base from Table 1), for other sizes from the checkpoint's own config
(ours) or else from params.yaml's ``model.num_heads``. Dataset, image size, val size and every
evaluation setting (k-NN k and T, linear probe, attention threshold) come from params.yaml with
its profile and the ``--set section.key=value`` overrides, as for ``pipelines.pretrain``.

Written atomically: k-NN top-1/top-5 per k, the linear probe (if ``eval.linear_epochs`` > 0),
backbone collapse statistics, attention-mask Jaccard (datasets with masks), the checkpoint, the
architecture and the resolved data/eval sections it was computed with.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import zipfile
from pathlib import Path

from .pretrain import add_params_arguments, params_of

log = logging.getLogger(__name__)


def evaluate(checkpoint: Path, params: dict, key: str | None, out: Path, weights_only: bool = True) -> dict:
    """Build the loaders from params' data section and run dino_core's evaluate_checkpoint."""
    from dino_core.config import Config
    from dino_core.device import resolve_device
    from dino_core.checkpoint import atomic_write_json
    from dino_core.evaluate.checkpoint import evaluate_checkpoint
    from dino_core.evaluate.protocol import eval_sets

    cfg = Config.from_dict(params)
    m = evaluate_checkpoint(checkpoint, eval_sets(cfg.data, cfg.eval.batch_size, with_masks=True), cfg.eval,
                            arch="auto", num_heads=cfg.model.num_heads, checkpoint_key=key,
                            device=resolve_device(cfg.train.device), weights_only=weights_only, seed=cfg.train.seed)
    m.update(config={"data": params["data"], "eval": params["eval"]})
    atomic_write_json(out, m)
    log.info("wrote %s: k-NN@20 %s, linear %s", out, m.get("knn20_top1"), m.get("linear_top1"))
    return m


# torch.save's legacy (non-zip) format opens with the pickled magic number 0x1950a86a20f9469cfc6c.
LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def check_format(checkpoint: Path) -> None:
    """The file is one torch.save writes (a zip with a data.pkl, or the legacy pickle format);
    ValueError naming it otherwise. A text or YAML file is "not a checkpoint", whatever --trusted
    says, since only torch.save's formats can hold one (--trusted only lets their pickle run)."""
    if zipfile.is_zipfile(checkpoint):
        with zipfile.ZipFile(checkpoint) as z:
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist()):
                raise ValueError(f"checkpoint {checkpoint}: a zip file without data.pkl, not a torch.save "
                                 f"checkpoint; allowed: a .pth file written by torch.save")
        return
    with open(checkpoint, "rb") as fh:
        if fh.read(len(LEGACY_TORCH_HEAD)) != LEGACY_TORCH_HEAD:
            raise ValueError(f"checkpoint {checkpoint}: not a checkpoint (neither of torch.save's "
                             f"formats); allowed: a .pth file written by torch.save")


def check_inputs(checkpoint: Path, out: Path) -> None:
    """Before any evaluation: the checkpoint's format (check_format; a missing file is reported
    by evaluate(), exit code 1, as any unreadable checkpoint) and an --out that can be written as
    a file (not a folder, no file among its parents). ValueError naming the path."""
    if checkpoint.is_file():
        check_format(checkpoint)
    for p in (out, *out.parents):
        if p.exists() and (p.is_dir() if p == out else not p.is_dir()):
            raise ValueError(f"--out {out}: {p} is a {'folder' if p.is_dir() else 'file'}; allowed: a JSON file "
                             f"path in a folder")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.eval_checkpoint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="a .pth file (bare backbone or training checkpoint)")
    ap.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    ap.add_argument("--key", default="teacher", help="entry of a training checkpoint: teacher | student")
    ap.add_argument("--trusted", action="store_true",
                    help="load with torch.load(weights_only=False), which runs the file's pickle: only for files "
                    "you trust (checkpoints of this suite written before their RNG state was tensor-only)")
    add_params_arguments(ap)
    args = ap.parse_args(argv)
    params = params_of(ap, args)
    try:
        check_inputs(args.checkpoint, args.out)
    except ValueError as e:
        ap.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        m = evaluate(args.checkpoint, params, args.key, args.out, weights_only=not args.trusted)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as e:   # bad file, keys, sizes or dataset
        log.error("%s", e.args[0] if isinstance(e, KeyError) and e.args else e)
        return 1
    print(json.dumps({k: v for k, v in m.items() if k.startswith(("knn", "linear_top1"))}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
