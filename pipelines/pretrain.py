"""One training run (pre-train + evaluate) from params.yaml, as one process or under torchrun.

    python -m pipelines.pretrain --params params.yaml --out runs/single/my_run \\
        --set train.epochs=50 --set optim.lr=1e-3
    torchrun --standalone --nproc_per_node=4 -m pipelines.pretrain --params params.yaml --out DIR

The config is params.yaml's core sections with its ``profile`` applied (as for the grid),
then the ``--set section.key=value`` overrides (values are YAML: ``eval.knn_k=[10,20]``,
``loss.sharpening=false``; ``--set profile=tiny`` picks another profile). Unknown keys and
bad values fail before any work starts.

``optim.batch_size`` is per process: ``--nproc_per_node=N`` trains with a global batch of
N x batch_size (the learning rate is scaled linearly with the global batch), exactly like one
process with batch N x batch_size. The output folder is a cell folder (config.yaml,
log.jsonl, checkpoint.pth, metrics.json, eval.json, DONE); a run that stops resumes from its
checkpoint when started again with the same arguments, and a finished one returns at once.
A folder holding a run of another training config is refused with the differing keys
(``--restart`` deletes its run files and starts over); so is a folder another process is
training, an ``--out`` that is a file, and bad data (docs/runs.md). Every check runs before the
output folder is created: an error leaves nothing behind (exit code 2).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from dino_core.config import Config, load_params, merge

from .params import PIPELINE_SECTIONS, ROOT, resolve_profile

log = logging.getLogger(__name__)


def parse_override(text: str) -> tuple[list[str], object]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ValueError(f"--set {text!r}: expected section.key=value, e.g. optim.lr=0.001")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str):   # YAML 1.1 reads 1e-3 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return parts, value


def _nest(parts: list[str], value: object) -> dict:
    out: object = value
    for p in reversed(parts):
        out = {p: out}
    return out  # type: ignore[return-value]


def build_params(params_path: str | Path, overrides: list[str] = (), root: Path = ROOT) -> dict:
    """The core sections (a dict for ``Config.from_dict``/``run_cell``) after profile + overrides."""
    params = load_params(params_path)
    parsed = [parse_override(o) for o in overrides]
    for parts, value in parsed:             # the profile first: its diff must not undo --set
        if parts == ["profile"]:
            params["profile"] = value
        elif parts[0] in PIPELINE_SECTIONS:
            raise ValueError(f"--set {'.'.join(parts)}: only the core sections (and profile) of "
                             f"params.yaml apply to a single run")
    core = resolve_profile(params, root)
    for parts, value in parsed:
        if parts != ["profile"]:
            core = merge(core, _nest(parts, value), "--set")
    Config.from_dict(core, source=f"{params_path} + --set")   # validate everything up front
    return core


def add_params_arguments(ap: argparse.ArgumentParser) -> None:
    """--params and the repeatable --set of every single-run command."""
    ap.add_argument("--params", default=str(ROOT / "params.yaml"), help="params.yaml to read")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one parameter (repeatable), e.g. optim.lr=1e-3 or data.dataset=cifar10")


def params_of(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """build_params of the parsed --params/--set; a bad file, key or value exits via ap.error."""
    try:
        return build_params(args.params, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))


def check_out_folder(out: Path, cfg: Config, restart: bool, world_size: int) -> None:
    """--out can hold this run: not a file, not another config's run (unless restart), not being
    trained by another process. ValueError naming the path and what is allowed."""
    from .lock import holder
    from .run_folder import check_same_config

    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise ValueError(f"--out {out}: {p} is a file; allowed: a folder (new or holding this run)")
    busy = holder(out) if out.is_dir() else None
    if busy:
        raise ValueError(f"--out {out}: is being trained by {busy}; wait for it to end or stop that process")
    if restart and world_size > 1:
        raise ValueError("--restart: start over with one process, then resume under torchrun")
    if not restart:
        check_same_config(out, cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output (cell) folder")
    ap.add_argument("--restart", action="store_true",
                    help="delete the run files of --out (config.yaml, log, checkpoint, metrics, eval, DONE) "
                    "and train from scratch, also when they hold a run of another config")
    add_params_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = params_of(ap, args)
    from dino_core.distributed import env_ranks
    ranks = env_ranks()
    world = ranks[1] if ranks else 1
    cfg = Config.from_dict(params)
    try:
        if ranks is None or ranks[0] == 0:
            check_out_folder(args.out, cfg, args.restart, world)
        from dino_core.data.check import check_data   # imports torch: after the cheap checks
        check_data(cfg, world)
    except ValueError as e:
        ap.error(str(e))
    if args.restart and args.out.is_dir():
        from .run_folder import start_over
        log.info("--restart: deleted %s from %s", start_over(args.out) or "nothing", args.out)
    from .ddp_entry import train_cell_ddp   # torch is imported only once the arguments are valid

    summary = train_cell_ddp(str(args.out), params)
    if ranks is None or ranks[0] == 0:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0   # a diverged run is a result too (status "diverged" in the summary and DONE)


if __name__ == "__main__":
    sys.exit(main())
