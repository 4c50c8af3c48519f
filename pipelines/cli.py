"""`dino`: one command for every stage of the suite, one override style (--set SECTION.KEY=VALUE).

    dino grid --set profile=tiny                    # the ablation grid (DVC stage grid)
    dino pretrain --out runs/single/a --set optim.lr=1e-3 --set train.epochs=50
    dino tune --set tune.n_trials=16 --set tune.n_workers=2
    dino params --set profile=paper                 # what a stage would read, resolved

Values are YAML (``eval.knn_k=[10,20]``, ``loss.sharpening=false``). ``--set`` changes a value of
params.yaml and wins over the profile (``--set profile=NAME``, the diff ablations/profiles/NAME.yaml
that every stage applies over params.yaml): ``--set profile=tiny --set train.epochs=3`` trains 3
epochs. ``--dry-run`` prints what the stage would read. Options a command does not know go to its
module (``python -m pipelines.<module> --help``). The ``python -m`` forms stay; DVC's ``dvc exp run
-S`` is DVC's own (it changes params.yaml, under the profile).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from dino_core.checkpoint import atomic_write_text

from .params import ROOT
from .resolve import resolved_with_profile, write_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    module: str            # pipelines.<module>
    summary: str
    params: bool           # reads params.yaml (takes --params and --set)
    extra: tuple = ()      # fixed arguments placed before the user's
    func: str = "main"     # its entry point, called with argv


COMMANDS = {
    "prepare": Command("prepare", "check or generate the data set (DVC stage prepare)", True),
    "pretrain": Command("pretrain", "one run: pre-train + evaluate into --out (resumes; torchrun for DDP)", True),
    "grid": Command("grid", "every cell of every study x seed (DVC stage grid); writes results/grid.csv", True),
    "budget": Command("budget", "the learning budget by ablations/protocol.yaml's rule, on the select split "
                      "(writes results/budget.json)", True),
    "precision": Command("precision", "the default row in fp32 and in bf16 (protocol seeds) and their TOST "
                         "(writes results/precision.json)", True),
    "eval": Command("evaluate", "collect the cells' evaluation, baselines, attention maps (DVC stage evaluate)", True),
    "cost": Command("cost", "Table 8 time and memory per step, one row at a time (DVC stage cost)", True),
    "tune": Command("tune", "optuna search of the temperatures on your data (DVC stage tune)", True),
    "params": Command("resolve", "print (or --out FILE write) the resolved parameters a stage reads "
                      "(DVC stage resolve)", True),
    "report": Command("report", "paper-style tables and plots from results/ (DVC stage report)", False),
    "bench": Command("bench", "time the training step, k-NN and data pipeline (writes results/bench.json)", False),
    "check": Command("launch.probes", "submit two probe cells with launch.yaml's executor", False, ("check",),
                     "check_cli"),
}

KNOBS = """The knobs a DINO run most often needs (the advice of the official code's help strings):
  --set loss.teacher_temp=0.04     0.04 works in most cases; lower it (0.02) if the loss does not
                                   decrease; above 0.06 held constant it collapses to ln K (App. D)
  --set loss.warmup_teacher_temp_epochs=30   warm tau_t up from warmup_teacher_temp (paper: 0.04 -> 0.07)
  --set teacher.momentum=0.996     raise it (0.9995) for small batches (official help at batch 256)
  --set head.norm_last_layer=false better for ViT-S, can be unstable (true for ViT-B)
  --set optim.lr=0.0005            at batch 256; scaled linearly with the global batch
  --set profile=quick|tiny|paper   a diff in ablations/profiles/ (tiny: seconds, for smoke runs)
A run that sits at ln K or at one prototype is named in the log after 3 epochs (docs/collapse-signal.md)."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dino", description=__doc__, epilog=KNOBS,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.summary, description=cmd.summary, epilog=KNOBS if cmd.params else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--params", default=str(ROOT / "params.yaml"), help="params.yaml to read")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one value of params.yaml (repeatable), e.g. optim.lr=1e-3, "
                            "profile=tiny, grid.seeds=[0,1], tune.n_trials=16")
        p.add_argument("--dry-run", action="store_true", help="print the resolved parameters and stop")
        if name == "params":
            p.add_argument("--out", help="write them to this YAML file instead of printing")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args, rest = ap.parse_known_args(argv)
    cmd = COMMANDS[args.command]
    if not cmd.params:
        if args.overrides:
            ap.error(f"dino {args.command} reads no parameters of params.yaml (--set {args.overrides[0]}); "
                     f"--set applies to: {', '.join(n for n, c in COMMANDS.items() if c.params)}")
        return _call(cmd, [*cmd.extra, *rest])
    try:
        params, chosen = resolved_with_profile(args.params, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    if args.command == "params" or args.dry_run:
        write_view(params, chosen, args.out if args.command == "params" else None)
        return 0
    if args.command == "pretrain":   # a single run: --set applies after the profile (pipelines.pretrain)
        over = [a for o in args.overrides for a in ("--set", o)]
        return _call(cmd, ["--params", args.params, *over, *rest])
    with tempfile.TemporaryDirectory(prefix="dino-params-") as tmp:
        path = Path(tmp) / "params.yaml"
        atomic_write_text(path, yaml.safe_dump(params, sort_keys=False))
        return _call(cmd, ["--params", str(path), *rest])


def _call(cmd: Command, argv: list[str]) -> int:
    module = importlib.import_module(f"pipelines.{cmd.module}")
    result = getattr(module, cmd.func)(argv)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
