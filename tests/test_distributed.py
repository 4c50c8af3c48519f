"""DDP equivalence: W processes with per-process batch B train exactly like 1 process with batch W*B.

Why it holds (dino_core/train.py): every world size uses a DistributedSampler (rank r of W
takes perm[r::W], so the W per-rank batches of a step are the single process's batch of
W*B), augmentations are seeded per (seed, epoch, sample index), the loss is a per-sample mean
whose rank means DDP averages into the full-batch gradient, the center, the Sinkhorn-Knopp
sums and the InfoNCE queue go through all-reduce / all-gather, and per-parameter clipping,
AdamW and the EMA teacher then act on identical averaged gradients. Drop path is off (its
draws differ per rank).

Tolerance (rtol 0) on the per-epoch loss curve, the center and every student and teacher weight:
one peak AdamW step, ATOL = lr_peak = optim.lr x W*B / 256 = 0.004 x 8 / 256 = 1.25e-4. Why: the
W processes sum each gradient in another fp32 order than one process (per rank over B samples,
then the all-reduce over W partial sums); a reordered sum of n terms differs by up to
(n-1) u sum|x_i|, u = 2^-24 ~ 6e-8, about n u relative where the terms agree in sign but
unbounded where they cancel. AdamW normalises each coordinate (|m_hat / sqrt(v_hat)| <~ 1), so on
a coordinate whose gradient cancels to rounding level the runs can step in opposite directions, a
difference of up to one step lr_t <= lr_peak; such coordinates are few and their flips of random
sign, so the weights differ by at most about one step. A real error (another sample split, a
missing all-reduce) changes every coordinate's step at each of the S = 12 steps, ~S x lr_peak =
1.5e-3. Measured: ~2e-7 on the student, <1e-7 on teacher and center (AVX2 EPYC); the 4x longer
SLURM run of tests/test_slurm_training.py reached 1.0e-5 on an AVX512-BF16 EPYC.

Processes are forked from the test process (torch is already imported: a spawned or torchrun
process re-imports torch and torchvision, 10-30 s each on the loaded 2-core test machine);
each child sets 1 intra-op thread before any torch op, and uses gloo on 127.0.0.1 with a
free port. The torchrun path (docs/scaling.md) is covered by the slow test at the end.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from helpers import MEAN, STD, random_images, tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]
N_IMAGES, B, WORLD, EPOCHS = 32, 4, 2, 3   # 32 / (2 x 4) = 4 steps per epoch, 12 steps
ATOL = tiny_config().optim.lr * WORLD * B / 256   # one peak AdamW step, 1.25e-4: see the module docstring
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SUBMITIT_EXECUTOR")
VARIANTS = {
    "centering": {},
    "sinkhorn_knopp": {"loss": {"normalization": "sinkhorn_knopp"}},
    "infonce_queue": {"loss": {"kind": "infonce", "queue_size": 64}},
}


def config_dict(batch: int, variant: str = "centering") -> dict:
    """Tiny config (tests/helpers.py) without drop path, with warm-up and last-layer freezing."""
    over = {"model": {"drop_path_rate": 0.0},
            "optim": {"batch_size": batch, "warmup_epochs": 1},
            "head": {"freeze_last_layer": 1},
            "train": {"epochs": EPOCHS, "saveckp_freq": 1}}
    for section, diff in VARIANTS[variant].items():
        over[section] = {**over.get(section, {}), **diff}
    return tiny_config(**over).to_dict()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_rank_env(rank: int, world: int, port: int) -> None:
    for k in DIST_VARS:
        os.environ.pop(k, None)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _train_worker(rank: int, world: int, port: int, cfg: dict, out_dir: str) -> None:
    torch.set_num_threads(1)
    _set_rank_env(rank, world, port)
    from dino_core.config import Config
    from dino_core.train import train

    dataset = [(img, 0) for img in random_images(N_IMAGES)]
    try:
        train(Config.from_dict(cfg), out_dir, dataset, MEAN, STD)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_processes(target, world: int, args: tuple, timeout_s: float = 300) -> None:
    """Fork `world` processes running target(rank, world, port, *args); fail on error or hang."""
    ctx = mp.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, *args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.time() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} of {world} still running after {timeout_s}s (collective hang?)"
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world, f"exit codes {codes} (tracebacks in the captured stderr)"


def load_run(out_dir: Path) -> dict:
    ckpt = torch.load(out_dir / "checkpoint.pth", map_location="cpu", weights_only=False)
    return {"ckpt": ckpt,
            "log": [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()],
            "metrics": json.loads((out_dir / "metrics.json").read_text())}


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    """(single process with batch W*B, W gloo processes with batch B), trained once per variant."""
    variant = request.param
    root = tmp_path_factory.mktemp(f"ddp_{variant}")
    t0 = time.time()
    run_processes(_train_worker, 1, (config_dict(WORLD * B, variant), str(root / "single")))
    t1 = time.time()
    run_processes(_train_worker, WORLD, (config_dict(B, variant), str(root / "ddp")))
    print(f"[{variant}] single {t1 - t0:.1f}s, {WORLD} processes {time.time() - t1:.1f}s")
    return variant, load_run(root / "single"), load_run(root / "ddp")


# ----- the sampler alone (no training) ---------------------------------------------------------


@pytest.mark.parametrize("n, world, batch", [(32, 2, 4), (30, 3, 2), (37, 2, 4)])
def test_distributed_sampler_splits_the_single_process_batches(n, world, batch):
    """Step i of W ranks with batch B covers exactly the single process's step i (batch W*B)."""
    data = list(range(n))
    for epoch in (0, 3):
        single = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=7, drop_last=True)
        single.set_epoch(epoch)
        s_idx = list(single)
        s_batches = [s_idx[i:i + world * batch] for i in range(0, len(s_idx) - world * batch + 1, world * batch)]
        per_rank = []
        for r in range(world):
            smp = DistributedSampler(data, num_replicas=world, rank=r, shuffle=True, seed=7, drop_last=True)
            smp.set_epoch(epoch)
            idx = list(smp)
            per_rank.append([idx[i:i + batch] for i in range(0, len(idx) - batch + 1, batch)])
        assert [len(b) for b in per_rank] == [len(s_batches)] * world   # floor(floor(n/W)/B) = floor(n/WB)
        for i in range(len(s_batches)):
            assert sorted(sum((per_rank[r][i] for r in range(world)), [])) == sorted(s_batches[i])


# ----- training: W processes == one process with W times the batch -----------------------------


def test_ddp_loss_curve_matches_single_process(pair):
    variant, single, ddp = pair
    assert ddp["metrics"]["world_size"] == WORLD and single["metrics"]["world_size"] == 1
    assert [r["epoch"] for r in single["log"]] == [r["epoch"] for r in ddp["log"]] == list(range(EPOCHS))
    for a, b in zip(single["log"], ddp["log"]):
        for key in ("loss", "ce", "kl", "teacher_entropy", "lr", "wd", "momentum", "teacher_temp"):
            assert abs(a[key] - b[key]) <= ATOL, (variant, a["epoch"], key, a[key], b[key])


def test_ddp_final_weights_and_center_match_single_process(pair):
    variant, single, ddp = pair
    a, b = single["ckpt"], ddp["ckpt"]
    assert a["epoch"] == b["epoch"] == EPOCHS
    d_student, d_teacher = max_abs_diff(a["student"], b["student"]), max_abs_diff(a["teacher"], b["teacher"])
    d_center = float((a["dino_loss"]["center"] - b["dino_loss"]["center"]).abs().max())
    print(f"[{variant}] max |diff|: student {d_student:.2e}, teacher {d_teacher:.2e}, center {d_center:.2e}")
    assert d_student <= ATOL and d_teacher <= ATOL and d_center <= ATOL, (d_student, d_teacher, d_center)
    # the runs really moved (a broken DDP that never stepped would also "match" itself)
    assert float(a["dino_loss"]["center"].abs().max()) > 0
    if "queue" in a["dino_loss"]:   # same keys, written in rank order instead of batch order
        qa, qb = a["dino_loss"]["queue"], b["dino_loss"]["queue"]
        proj = torch.linspace(1.0, 2.0, qa.shape[1])
        sa, sb = qa[torch.argsort(qa @ proj)], qb[torch.argsort(qb @ proj)]
        assert float((sa - sb).abs().max()) <= ATOL
        assert int(a["dino_loss"]["queue_ptr"]) == int(b["dino_loss"]["queue_ptr"])


def test_ddp_optimizer_state_matches_single_process(pair):
    """AdamW moments too: a resumed DDP run continues like a resumed single-process run."""
    variant, single, ddp = pair
    sa, sb = single["ckpt"]["optimizer"]["state"], ddp["ckpt"]["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for m in ("exp_avg", "exp_avg_sq"):
            assert float((sa[k][m] - sb[k][m]).abs().max()) <= ATOL, (variant, k, m)


def test_ddp_teacher_batch_entropy_matches_single_process(pair):
    """H(mean_b P_t) is not a mean of per-sample terms: mean_b P_t is all-reduced before the entropy."""
    variant, single, ddp = pair
    for a, b in zip(single["log"], ddp["log"]):
        assert abs(a["teacher_batch_entropy"] - b["teacher_batch_entropy"]) <= ATOL, (variant, a["epoch"])


# ----- torchrun + pipelines/pretrain.py (the one-machine command of docs/scaling.md) ---------------------


def _pretrain_cmd(out: Path, batch: int, data_root: Path) -> list[str]:
    sets = [f"data.root={data_root}", "data.num_train=32", "data.num_val=16", "data.image_size=16",
            "model.drop_path_rate=0.0", f"optim.batch_size={batch}", "train.epochs=2",
            "train.device=cpu", "eval.knn_k=[5]",
            "head.use_bn=false"]   # BatchNorm statistics are per process under gloo (docs/deviations.md)
    return ["-m", "pipelines.pretrain", "--params", str(REPO_ROOT / "params.yaml"), "--out", str(out),
            "--set", "profile=tiny", *[a for s in sets for a in ("--set", s)]]


def test_pretrain_overrides_apply_after_the_profile():
    from pipelines.pretrain import build_params, parse_override

    p = build_params(REPO_ROOT / "params.yaml", ["profile=tiny", "train.epochs=3", "optim.lr=1e-3",
                                                 "eval.knn_k=[5, 7]", "loss.sharpening=false"])
    assert p["train"]["epochs"] == 3                    # the tiny profile sets 1: --set wins
    assert p["model"]["embed_dim"] == 32                # from the tiny profile
    assert p["optim"]["lr"] == 1e-3 and p["eval"]["knn_k"] == [5, 7] and p["loss"]["sharpening"] is False
    assert "grid" not in p and "profile" not in p
    assert parse_override("loss.kind=ce") == (["loss", "kind"], "ce")
    for bad, fragment in (("optim.lrr=1", "lrr"), ("nope.x=1", "nope"), ("optim.lr", "section.key=value"),
                          ("grid.seeds=[0]", "core sections")):
        with pytest.raises(ValueError, match=fragment):
            build_params(REPO_ROOT / "params.yaml", [bad])
    with pytest.raises(ValueError, match="optim"):      # validated by Config (batch_size >= 1)
        build_params(REPO_ROOT / "params.yaml", ["optim.batch_size=0"])


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m pipelines.pretrain` (batch B) == one process (batch 2B)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter nor on PATH"
    from dino_core.data.shapes import prepare_shapes

    data = tmp_path / "shapes"
    prepare_shapes(data, num_train=32, num_val=16, image_size=16)
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    t0 = time.time()
    one = subprocess.run([sys.executable, *_pretrain_cmd(tmp_path / "one", 8, data)], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    t1 = time.time()
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2",
                          *_pretrain_cmd(tmp_path / "two", 4, data)], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    print(f"pretrain: 1 process {t1 - t0:.1f}s, torchrun x2 {time.time() - t1:.1f}s")
    from pipelines.store import cell_summary
    done_one, done_two = cell_summary(tmp_path / "one"), cell_summary(tmp_path / "two")   # DONE + eval.json
    assert done_one["status"] == done_two["status"] == "ok"
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["world_size"] == 2
    a, b = load_run(tmp_path / "one"), load_run(tmp_path / "two")
    assert max_abs_diff(a["ckpt"]["student"], b["ckpt"]["student"]) <= ATOL
    assert max_abs_diff(a["ckpt"]["teacher"], b["ckpt"]["teacher"]) <= ATOL
    # rank 0 evaluated the DDP run: the same k-NN accuracy (percent of 16 val images)
    assert done_one["knn5_top1"] == pytest.approx(done_two["knn5_top1"], abs=1e-6)
    # a second call finds DONE and returns at once, without training
    again = subprocess.run([sys.executable, *_pretrain_cmd(tmp_path / "one", 8, data)], cwd=REPO_ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout) == done_one


# ----- pipelines/pretrain.py: a run folder bound to its config; checks before any work -----------


def _pretrain(out: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    sets = ["profile=tiny", f"data.root={data}", "train.epochs=2", *extra]
    return subprocess.run([sys.executable, "-m", "pipelines.pretrain", "--out", str(out),
                           *[a for s in sets for a in ("--set", s) if s != "--restart"],
                           *(["--restart"] if "--restart" in extra else [])],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def shapes16(tmp_path_factory) -> Path:
    from dino_core.data.shapes import prepare_shapes
    root = tmp_path_factory.mktemp("pretrain_cli") / "shapes"
    prepare_shapes(root, num_train=64, num_val=32, image_size=16)
    return root


def test_rerun_with_another_config_is_refused_naming_the_keys(tmp_path, shapes16):
    out = tmp_path / "run"
    assert _pretrain(out, shapes16).returncode == 0
    files = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = _pretrain(out, shapes16, "optim.lr=0.001", "train.epochs=3")   # finished under other values
    assert r.returncode == 2
    assert "holds a run of another config (2 key(s) differ: optim.lr: 0.004 -> 0.001; train.epochs: 2 -> 3)" \
        in r.stderr and "--restart" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == files   # nothing touched
    same = _pretrain(out, shapes16, "eval.knn_k=[3]")   # an evaluation setting: re-evaluated, not refused
    assert same.returncode == 0 and (out / "checkpoint.pth").stat().st_mtime_ns == files["checkpoint.pth"]
    again = _pretrain(out, shapes16, "optim.lr=0.001", "train.epochs=3", "--restart")
    assert again.returncode == 0, again.stderr[-2000:]
    assert [json.loads(ln)["epoch"] for ln in (out / "log.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert yaml_load(out / "config.yaml")["optim"]["lr"] == 0.001


def yaml_load(path: Path) -> dict:
    import yaml
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("extra, needle", [
    (["model.patch_size=3"], "model.patch_size: 3 does not divide crops.global_size 16, crops.local_size 8, "
                             "data.image_size 16 (the border would be dropped); allowed: a divisor of every "
                             "crop size, [1, 2, 4, 8]"),
    (["model.num_heads=3"], "model.num_heads: 3 does not divide model.embed_dim 32"),
    (["optim.batch_size=65"], "optim.batch_size: 65 per process x 1 process(es) is more than the 64 pre-training "
                              "images"),
    (["data.root=/nonexistent/shapes"], "data.root /nonexistent/shapes: shapes: /nonexistent/shapes/index.json "
                                        "not found"),
    ("out-is-a-file", "is a file; allowed: a folder"),
])
def test_pretrain_checks_before_any_work_one_line_rc2_nothing_written(tmp_path, shapes16, extra, needle):
    out = tmp_path / "out"
    if extra == "out-is-a-file":
        (tmp_path / "f").write_text("x")
        out, extra = tmp_path / "f" / "run", []
    t0 = time.time()
    r = _pretrain(out, shapes16, *extra)
    assert r.returncode == 2 and needle in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]   # one line
    assert "Traceback" not in r.stderr
    assert not out.exists() and time.time() - t0 < 60
