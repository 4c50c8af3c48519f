"""Performance benchmark: the DINO training step, the k-NN evaluation and the multi-crop data pipeline.

    python -m pipelines.bench                                   # cpu-toy, fp32, k-NN 5k x 100k, data
    python -m pipelines.bench --configs cpu-toy --precisions fp32,bf16 --steps 5
    python -m pipelines.bench --configs vit-s16 --precisions bf16 --compile     # on a GPU
    python -m pipelines.bench --knn-full                        # k-NN 50,000 x 1,000,000 (dim 384)
    python -m pipelines.bench --configs tiny --steps 2 --no-knn --no-data      # smoke test

Training step: the full step of ``dino_core.train.train_step`` (teacher forward on the 2 global crops,
student forward/backward on all crops, DINO loss, per-parameter clipping, fused AdamW, foreach EMA)
on random crop tensors, the Run built by ``dino_core.train.setup`` from params.yaml merged with the
config's diff. Warm-up steps are excluded; the figure is the median of ``--steps`` steps.

"official-style": the same step written the way the official DINO code writes it (its ViT with
explicit attention and dropout layers, weight-normed head, python-loop loss over view pairs, per-
parameter clipping with ``.item()``, for-loop AdamW, python-loop EMA, ``loss.item()`` per step;
fp16 autocast with a GradScaler on GPU, fp32 on CPU), started from the same weights: the ratio
official / ours is the speed-up at equal work.

Peak memory: CUDA ``max_memory_allocated`` above the allocation before the timed code; CPU the
process peak RSS (VmHWM, reset through /proc/self/clear_refs) minus the RSS before it.

Writes JSON atomically (``--out``, default results/bench.json) and logs a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino_core.checkpoint import atomic_write_json
from dino_core.config import Config, load_params, merge
from dino_core.train import Run, resolve_device, setup, train_step

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]

# Each config is a diff over params.yaml (the single source of defaults).
CONFIGS: dict[str, dict] = {
    # Smoke test: seconds on any machine.
    "tiny": {"model": {"arch": "vit_custom", "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
             "head": {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32},
             "crops": {"global_size": 16, "local_size": 8, "local_number": 2},
             "optim": {"batch_size": 8}},
    # Issue 9 "cpu-toy": ViT-Tiny/4, 2 x 32 px + 6 x 16 px, batch 64, K = 4096.
    "cpu-toy": {"model": {"arch": "vit_tiny", "patch_size": 4},
                "head": {"out_dim": 4096, "hidden_dim": 2048, "bottleneck_dim": 256},
                "crops": {"global_size": 32, "local_size": 16, "local_number": 6},
                "optim": {"batch_size": 64}},
    # The paper's ViT-S/16: 2 x 224 + 10 x 96, batch 64 per device, K = 65536.
    "vit-s16": {"model": {"arch": "vit_small", "patch_size": 16},
                "head": {"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256},
                "crops": {"global_size": 224, "local_size": 96, "local_number": 10},
                "optim": {"batch_size": 64}},
}


def build_config(name: str, precision: str = "auto", device: str = "auto",
                 params: str | Path = REPO / "params.yaml", attn_impl: str | None = None) -> Config:
    """params.yaml merged with the named config's diff (and precision / device / attention)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown bench config {name!r}; allowed: {', '.join(CONFIGS)}")
    core = {f.name for f in dataclasses.fields(Config)}   # params.yaml also holds pipeline sections
    base = {k: v for k, v in load_params(params).items() if k in core}
    diff = {**CONFIGS[name], "train": {"precision": precision, "device": device}}
    if attn_impl is not None:
        diff["model"] = {**diff.get("model", {}), "attn_impl": attn_impl}
    return Config.from_dict(merge(base, diff, f"bench config {name}"), source=f"bench config {name}")


# --------------------------------------------------------------------------------- environment
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
    return [f for f in wanted if f" {f}" in text]


def git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (sha + ("-dirty" if dirty else "")) or None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(device: torch.device) -> dict:
    env = {"device": str(device), "cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
           "git_sha": git_sha(), "loadavg_start": loadavg(), "hostname": platform.node()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


# ------------------------------------------------------------------------------------ measuring
def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block in MB (``.peak_mb``, above the level at entry; ``.total_mb`` absolute)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb, self.total_mb, self.method = device, float("nan"), float("nan"), ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
        else:
            try:   # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
                Path("/proc/self/clear_refs").write_text("5")
                self.method = "VmHWM after clear_refs"
            except OSError:
                self.method = "ru_maxrss (process peak, not reset)"
            self.base = (_proc_status_kb("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _proc_status_kb("VmHWM")
            if hwm is None or "ru_maxrss" in self.method:
                import resource
                hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = hwm * 1024
        self.total_mb, self.peak_mb = peak / 2**20, (peak - self.base) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], None], warmup: int, steps: int, device: torch.device) -> dict:
    """Wall times of ``fn`` (synchronised): warm-up excluded, median / min / max of ``steps``; and the
    median process CPU time (all threads), less sensitive than wall time to other jobs on the machine."""
    first = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        first.append(time.perf_counter() - t0)
    times, cpu = [], []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"s_per_step": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "cpu_s_per_step": statistics.median(cpu), "times_s": [round(t, 4) for t in times],
            "cpu_times_s": [round(t, 4) for t in cpu], "warmup_times_s": [round(t, 4) for t in first]}


# ---------------------------------------------------------------------------------- train step
class _Placeholder(torch.utils.data.Dataset):
    """setup() wants a dataset for its loader; the bench feeds crop tensors directly."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from PIL import Image
        return Image.new("RGB", (self.size, self.size)), 0


def make_run(cfg: Config) -> Run:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return setup(cfg, _Placeholder(cfg.optim.batch_size, cfg.crops.global_size), mean, std)


def random_crops(cfg: Config, device: torch.device, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, c = cfg.optim.batch_size, cfg.crops
    sizes = [c.global_size] * 2 + [c.local_size] * c.local_number
    return [torch.randn(b, 3, s, s, generator=g).to(device) for s in sizes]


def timed_epoch(cfg: Config) -> tuple[int, int]:
    """(it, epoch) of a regular step: past the last-layer freeze, so every parameter is updated."""
    epoch = min(cfg.head.freeze_last_layer, cfg.train.epochs - 1)
    return epoch, epoch   # setup's loader has 1 step per epoch


def bench_step(cfg: Config, warmup: int, steps: int, compile: bool = False) -> dict:
    """Our training step (train.train_step) on random crops."""
    run = make_run(cfg)
    crops = random_crops(cfg, run.device)
    it, epoch = timed_epoch(cfg)
    out = {"precision": run.precision, "compile": compile}
    if compile:
        run = dataclasses.replace(run, student=torch.compile(run.student), teacher_net=torch.compile(run.teacher_net))
        t0 = time.perf_counter()
        float(train_step(run, crops, it, epoch)[0])   # compiles forward + backward graphs
        _sync(run.device)
        out["compile_first_step_s"] = time.perf_counter() - t0
    losses: list[float] = []

    def step() -> None:
        loss, _ = train_step(run, crops, it, epoch)
        losses.append(float(loss))   # the host sync every real loop does (finite check / logging)

    with PeakMemory(run.device) as mem:
        out.update(time_calls(step, warmup, steps, run.device))
    if compile:
        out["compile_s"] = max(0.0, out.pop("compile_first_step_s") - out["s_per_step"])
    out.update(peak_mem_mb=mem.peak_mb, process_mem_mb=mem.total_mb, mem_method=mem.method,
               losses=[round(x, 5) for x in losses])
    return out


# ------------------------------------------------------------ official-style re-implementation
# Faithful to facebookresearch/dino (vision_transformer.py, main_dino.py, utils.py): same maths and
# parameter names, written as the official code writes it (so the same state dict loads strict).
def _official_drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    random_tensor.floor_()
    return x.div(keep_prob) * random_tensor


class _ODropPath(nn.Module):
    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return _official_drop_path(x, self.drop_prob, self.training)


class _OMlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.act = nn.Linear(in_features, hidden_features), nn.GELU()
        self.fc2, self.drop = nn.Linear(hidden_features, in_features), nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class _OAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv, self.attn_drop = nn.Linear(dim, dim * 3, bias=True), nn.Dropout(0.0)
        self.proj, self.proj_drop = nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x)), attn


class _OBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, drop_path: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _OAttention(dim, num_heads)
        self.drop_path = _ODropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _OMlp(dim, dim * 4)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.attn(self.norm1(x))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _OPatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _OViT(nn.Module):
    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 drop_path_rate: float) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = _OPatchEmbed(patch_size, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(0.0)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([_OBlock(embed_dim, num_heads, dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()

    def interpolate_pos_encoding(self, x: Tensor, w: int, h: int) -> Tensor:
        npatch, N = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        class_pos_embed, patch_pos_embed = self.pos_embed[:, 0], self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size + 0.1, h // self.patch_size + 0.1
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        B, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = self.pos_drop(x + self.interpolate_pos_encoding(x, w, h))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


class _ODINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, use_bn: bool, norm_last_layer: bool, nlayers: int,
                 hidden_dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if use_bn else []) + [nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if use_bn else []) \
                    + [nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        import warnings
        with warnings.catch_warnings():   # deprecated in torch 2.x; the official code uses it
            warnings.simplefilter("ignore", FutureWarning)
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class _OMultiCropWrapper(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: list[Tensor]) -> Tensor:
        if not isinstance(x, list):
            x = [x]
        idx_crops = torch.cumsum(torch.unique_consecutive(
            torch.tensor([inp.shape[-1] for inp in x]), return_counts=True)[1], 0)
        start_idx, output = 0, torch.empty(0).to(x[0].device)
        for end_idx in idx_crops:
            _out = self.backbone(torch.cat(x[start_idx:end_idx]))
            output = torch.cat((output, _out))
            start_idx = end_idx
        return self.head(output)


class _ODINOLoss(nn.Module):
    def __init__(self, out_dim: int, ncrops: int, teacher_temps, student_temp: float, center_momentum: float):
        super().__init__()
        self.student_temp, self.center_momentum, self.ncrops = student_temp, center_momentum, ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temps

    def forward(self, student_output: Tensor, teacher_output: Tensor, epoch: int) -> Tensor:
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(2)
        total_loss, n_loss_terms = 0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def _official_params_groups(model: nn.Module) -> list[dict]:
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or len(param.shape) == 1 else regularized).append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def _official_clip_gradients(model: nn.Module, clip: float) -> list[float]:
    norms = []
    for _, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def _official_cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


class OfficialStep:
    """The official training step (main_dino.train_one_epoch body) on a copy of a Run's weights."""

    def __init__(self, run: Run) -> None:
        cfg, m, h = run.cfg, run.cfg.model, run.cfg.head
        from dino_core.vit import ARCHS
        dim, depth, heads = ARCHS.get(m.arch, (m.embed_dim, m.depth, m.num_heads))

        def net(drop_path: float) -> _OMultiCropWrapper:
            return _OMultiCropWrapper(_OViT(cfg.crops.global_size, m.patch_size, dim, depth, heads, drop_path),
                                      _ODINOHead(dim, h.out_dim, h.use_bn, h.norm_last_layer, h.nlayers,
                                                 h.hidden_dim, h.bottleneck_dim))

        if h.predictor or cfg.loss.kind != "ce" or cfg.loss.normalization != "centering" or \
                cfg.teacher.variant != "ema":
            raise ValueError("official-style step: only the official recipe (ce, centering, EMA, no predictor)")
        self.device, self.cfg = run.device, cfg
        self.student = net(m.drop_path_rate).to(run.device)
        self.teacher = net(0.0).to(run.device)
        self.student.load_state_dict(run.student_mod.state_dict())
        self.teacher.load_state_dict(run.teacher_net.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.loss = _ODINOLoss(h.out_dim, 2 + cfg.crops.local_number, run.loss.teacher_temps, cfg.loss.student_temp,
                               cfg.loss.center_momentum).to(run.device)
        # torch<=1.8 AdamW (the official code's era) is the per-parameter for-loop implementation
        self.optimizer = torch.optim.AdamW(_official_params_groups(self.student), foreach=False)
        self.fp16_scaler = torch.amp.GradScaler("cuda") if run.device.type == "cuda" else None
        self.precision = "fp16" if self.fp16_scaler is not None else "fp32"
        self.sched = run.sched

    def step(self, images: list[Tensor], it: int, epoch: int) -> float:
        student, teacher, optimizer, fp16_scaler, args = self.student, self.teacher, self.optimizer, \
            self.fp16_scaler, self.cfg
        for i, param_group in enumerate(optimizer.param_groups):
            param_group["lr"] = self.sched.lr[it]
            if i == 0:
                param_group["weight_decay"] = self.sched.wd[it]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=fp16_scaler is not None):
            teacher_output = teacher(images[:2])
            student_output = student(images)
            loss = self.loss(student_output, teacher_output, epoch)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"official-style step: loss is {loss.item()}")
        optimizer.zero_grad()
        if fp16_scaler is None:
            loss.backward()
            _official_clip_gradients(student, args.optim.clip_grad)
            _official_cancel_gradients_last_layer(epoch, student, args.head.freeze_last_layer)
            optimizer.step()
        else:
            fp16_scaler.scale(loss).backward()
            fp16_scaler.unscale_(optimizer)
            _official_clip_gradients(student, args.optim.clip_grad)
            _official_cancel_gradients_last_layer(epoch, student, args.head.freeze_last_layer)
            fp16_scaler.step(optimizer)
            fp16_scaler.update()
        with torch.no_grad():
            m = self.sched.momentum[it]
            for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        _sync(self.device)
        return loss.item()


def bench_official(cfg: Config, warmup: int, steps: int) -> dict:
    run = make_run(cfg)
    off = OfficialStep(run)
    del run
    crops = random_crops(cfg, off.device)
    it, epoch = timed_epoch(cfg)
    losses: list[float] = []
    with PeakMemory(off.device) as mem:
        out = time_calls(lambda: losses.append(off.step(crops, it, epoch)), warmup, steps, off.device)
    out.update(precision=off.precision, compile=False, peak_mem_mb=mem.peak_mb, process_mem_mb=mem.total_mb,
               mem_method=mem.method, losses=[round(x, 5) for x in losses])
    return out


def bench_paired(cfg: Config, warmup: int, steps: int) -> dict:
    """Our step and the official-style step alternated in one process: both see the same machine load,
    so the per-pair ratios are robust on a shared machine. Each turn runs a variant twice and times the
    second step (the first step after a switch pays the other model's allocator state, ~15 %)."""
    run = make_run(cfg)
    off = OfficialStep(run)
    crops = random_crops(cfg, run.device)
    it, epoch = timed_epoch(cfg)
    fns = {"ours": lambda: float(train_step(run, crops, it, epoch)[0]), "official": lambda: off.step(crops, it, epoch)}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(steps):
        for k in (("ours", "official") if i % 2 == 0 else ("official", "ours")):
            fns[k]()   # re-warm after the switch, untimed
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k]()
            _sync(run.device)
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    ratios = [o / u for o, u in zip(times["official"], times["ours"])]
    return {"precision": run.precision, "official_precision": off.precision, "attn_impl": cfg.model.attn_impl,
            "ours_s_per_step": statistics.median(times["ours"]), "official_s_per_step": statistics.median(times["official"]),
            "ours_min_s": min(times["ours"]), "official_min_s": min(times["official"]),
            "ours_cpu_s": statistics.median(cpu["ours"]), "official_cpu_s": statistics.median(cpu["official"]),
            "ratio_median": statistics.median(ratios), "ratio_of_mins": min(times["official"]) / min(times["ours"]),
            "ratio_geomean": math.exp(statistics.fmean(math.log(r) for r in ratios)),
            "ratios": [round(r, 4) for r in ratios], "ours_times_s": [round(t, 4) for t in times["ours"]],
            "official_times_s": [round(t, 4) for t in times["official"]]}


# ------------------------------------------------------------------------------------------ k-NN
def bench_knn(n_query: int, n_train: int, dim: int = 384, num_classes: int = 1000,
              ks: Sequence[int] = (10, 20, 100, 200), device: str = "auto", seed: int = 0) -> dict:
    """knn_classify of random (n_query, dim) queries against random (n_train, dim) train features."""
    from dino_core.evaluate.knn import knn_chunk_size, knn_classify, knn_memory_bytes
    dev = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(n_train, dim, generator=g).to(dev)
    train_y = torch.randint(0, num_classes, (n_train,), generator=g).to(dev)
    query = torch.randn(n_query, dim, generator=g).to(dev)
    query_y = torch.randint(0, num_classes, (n_query,), generator=g).to(dev)
    la0 = loadavg()
    with PeakMemory(dev) as mem:
        t0 = time.perf_counter()
        acc = knn_classify(train, train_y, query, query_y, ks=tuple(ks), num_classes=num_classes)
        _sync(dev)
        dt = time.perf_counter() - t0
    inputs_mb = (train.numel() * 4 + train_y.numel() * 8 + query.numel() * 4 + query_y.numel() * 8) / 2**20
    return {"n_query": n_query, "n_train": n_train, "dim": dim, "ks": list(ks), "num_classes": num_classes,
            "device": str(dev), "time_s": dt, "queries_per_s": n_query / dt,
            "gflop_similarity": 2 * n_query * n_train * dim / 1e9, "gflops": 2 * n_query * n_train * dim / dt / 1e9,
            "chunk_queries": knn_chunk_size(n_train), "peak_mem_mb": mem.peak_mb, "inputs_mb": inputs_mb,
            "process_mem_mb": mem.total_mb, "mem_method": mem.method,
            "bound_mb": knn_memory_bytes(n_train, dim, n_query, max(ks), num_classes) / 2**20,
            "top1_random": acc[f"knn{min(ks)}_top1"], "loadavg": [la0, loadavg()]}


# ------------------------------------------------------------------------------- data pipeline
class _RandomImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import numpy as np
        from PIL import Image
        rng = np.random.default_rng(i)
        return Image.fromarray(rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)), 0


def pipeline_dataset(cfg: Config, root: str | Path | None):
    """The shapes train split at ``root`` (default: params' data.root, then data/shapes) if it exists,
    else random PIL images of the same size."""
    from dino_core.data import shapes
    from dino_core.data.registry import NORMALIZATION, build_dataset
    roots = [Path(root)] if root else [REPO / cfg.data.root, REPO / "data" / "shapes"]
    for r in roots:
        if shapes.read_index(r) is not None:
            return build_dataset("shapes", r, "train", None), NORMALIZATION["shapes"], f"shapes at {r}"
    log.warning("no shapes dataset at %s: the data pipeline is timed on random PIL images "
                "(python -m pipelines.prepare --dataset shapes --root %s ...)", roots[0], roots[0])
    return _RandomImages(5000, cfg.data.image_size), NORMALIZATION["shapes"], "random PIL images"


def bench_data(cfg: Config, workers: Sequence[int], batches: int, root: str | Path | None) -> list[dict]:
    """Images/s of MultiCropDataset + DataLoader (batch = optim.batch_size) per worker count."""
    from torch.utils.data import DataLoader

    from dino_core.multicrop import MultiCropAugmentation, MultiCropDataset
    base, (mean, std), source = pipeline_dataset(cfg, root)
    data = MultiCropDataset(base, MultiCropAugmentation(cfg.crops, mean, std), cfg.train.seed)
    b = cfg.optim.batch_size
    n = min(batches, len(data) // b)
    rows = []
    for w in workers:
        loader = DataLoader(data, batch_size=b, shuffle=True, drop_last=True, num_workers=w,
                            generator=torch.Generator().manual_seed(0), persistent_workers=False)
        la0 = loadavg()
        t0 = time.perf_counter()
        it = iter(loader)
        next(it)                  # worker start-up and the first batch: excluded
        t1 = time.perf_counter()
        for _ in range(n - 1):
            next(it)
        t2 = time.perf_counter()
        del it
        timed = max(n - 1, 1)
        rows.append({"workers": w, "batch_size": b, "batches_timed": n - 1, "first_batch_s": t1 - t0,
                     "s_per_batch": (t2 - t1) / timed, "img_per_s": (n - 1) * b / max(t2 - t1, 1e-9),
                     "crops_per_img": 2 + cfg.crops.local_number, "source": source, "loadavg": [la0, loadavg()]})
    return rows


# ------------------------------------------------------------------------------------------ main
def _in_child(name: str, threads: int | None, *args, **kw) -> dict:
    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return getattr(importlib.import_module("pipelines.bench"), name)(*args, **kw)


def measure(name: str, *args, isolate: bool = True, threads: int | None = None, **kw) -> dict:
    """Run the bench function ``name`` in a fresh spawned process (default), so that its peak memory
    is its own and not the leftovers of earlier measurements; or in this process."""
    if not isolate:
        return getattr(importlib.import_module("pipelines.bench"), name)(*args, **kw)
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(_in_child, name, threads, *args, **kw).result()


def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(result: dict) -> str:
    lines = [f"device {result['env']['device']} ({result['env'].get('gpu') or result['env']['cpu_model']}, "
             f"{result['env']['torch_threads']} threads), torch {result['env']['torch']}, "
             f"git {result['env']['git_sha']}",
             f"{'config':<9} {'variant':<20} {'prec':<5} {'s/step':>8} {'cpu s':>8} {'img/s':>8} {'peak MB':>9} "
             f"{'compile s':>9}  loadavg(1/5/15 start->end)"]
    for r in result["train_step"]:
        if "error" in r:
            lines.append(f"{r['config']:<9} {r['variant']:<20} {r.get('precision', '?'):<5} error: {r['error']}")
            continue
        lines.append(f"{r['config']:<9} {r['variant']:<20} {r['precision']:<5} {r['s_per_step']:>8.3f} "
                     f"{r['cpu_s_per_step']:>8.3f} "
                     f"{r['img_per_s']:>8.1f} {_fmt(r['peak_mem_mb'], '9.0f')} {_fmt(r.get('compile_s'), '>9.1f')}"
                     f"  {r['loadavg'][0]} -> {r['loadavg'][1]}")
    for r in result.get("speedup", []):
        lines.append(f"speed-up {r['config']} {r['ours']} vs {r['official']}: x{r['ratio']:.2f} wall "
                     f"(x{r['cpu_ratio']:.2f} process CPU time)")
    for r in result.get("paired", []):
        lines.append(f"paired {r['config']} ({len(r['ratios'])} alternating steps each): ours {r['precision']} "
                     f"{r['ours_s_per_step']:.3f} s/step, official-style {r['official_precision']} "
                     f"{r['official_s_per_step']:.3f} s/step, speed-up x{r['ratio_median']:.2f} (median of pair "
                     f"ratios; geometric mean x{r['ratio_geomean']:.2f}, ratio of minima x{r['ratio_of_mins']:.2f}), loadavg {r['loadavg'][0]} -> {r['loadavg'][1]}")
    k = result.get("knn")
    for r in k or []:
        lines.append(f"k-NN {r['n_query']:,} x {r['n_train']:,} (dim {r['dim']}): {r['time_s']:.1f} s, "
                     f"{r['queries_per_s']:.0f} queries/s, {r['gflops']:.0f} GFLOP/s, peak {r['peak_mem_mb']:.0f} MB "
                     f"above inputs-loaded RSS (inputs {r['inputs_mb']:.0f} MB, bound {r['bound_mb']:.0f} MB), "
                     f"loadavg {r['loadavg'][0]} -> {r['loadavg'][1]}")
    for r in result.get("data_pipeline", []):
        lines.append(f"data {r['workers']} workers: {r['img_per_s']:.0f} img/s ({r['crops_per_img']} crops/img, "
                     f"batch {r['batch_size']}, {r['source']}), loadavg {r['loadavg'][0]} -> {r['loadavg'][1]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="cpu-toy", help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--precisions", default="fp32", help="comma list of fp32, bf16, fp16, auto")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--attn", default="params",
                   help="comma list of model.attn_impl to time: params (params.yaml's), auto, explicit, sdpa")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-official", action="store_true", help="skip the official-style step")
    p.add_argument("--paired", type=int, default=0, metavar="N",
                   help="also alternate N timed steps of ours (params' attention) and official-style in one "
                   "process (each after an untimed re-warm step)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd student and teacher")
    p.add_argument("--knn-full", action="store_true", help="k-NN at 50,000 x 1,000,000 (instead of the small size)")
    p.add_argument("--knn-size", default="5000x100000", help="QUERIESxTRAIN of the default k-NN")
    p.add_argument("--no-knn", action="store_true")
    p.add_argument("--no-data", action="store_true")
    p.add_argument("--data-workers", default="0,1,2")
    p.add_argument("--data-batches", type=int, default=10)
    p.add_argument("--data-root", default=None, help="shapes root (default: params data.root, then data/shapes)")
    p.add_argument("--no-isolate", action="store_true",
                   help="measure in this process (default: one fresh process per measurement)")
    p.add_argument("--out", default=str(REPO / "results" / "bench.json"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    configs = [c for c in a.configs.split(",") if c]
    precisions = [x for x in a.precisions.split(",") if x]
    attns = [x for x in a.attn.split(",") if x]
    for c in configs:
        build_config(c)   # fail fast on a bad name
    device = resolve_device(a.device)
    iso = {"isolate": not a.no_isolate, "threads": a.threads}
    result: dict = {"env": environment(device), "args": vars(a), "train_step": [], "speedup": []}

    def record(name: str, variant: str, fn: Callable[[], dict], cfg: Config) -> dict | None:
        la0 = loadavg()
        log.info("timing %s %s ...", name, variant)
        try:
            r = fn()
        except Exception as exc:   # one failed measurement (e.g. out of memory) keeps the others
            log.exception("%s %s failed", name, variant)
            result["train_step"].append({"config": name, "variant": variant, "error": repr(exc)})
            return None
        r.update(config=name, variant=variant, batch_size=cfg.optim.batch_size, attn_impl=cfg.model.attn_impl,
                 img_per_s=cfg.optim.batch_size / r["s_per_step"], loadavg=[la0, loadavg()])
        result["train_step"].append(r)
        log.info("%s %s %s: %.3f s/step, %.1f img/s, peak %.0f MB", name, variant, r["precision"], r["s_per_step"],
                 r["img_per_s"], r["peak_mem_mb"])
        return r

    for name in configs:
        for prec in precisions:
            for attn in attns:
                cfg = build_config(name, prec, a.device, attn_impl=None if attn == "params" else attn)
                variant = "ours" if attn == "params" else f"ours attn={attn}"
                record(name, variant, lambda: measure("bench_step", cfg, a.warmup, a.steps, **iso), cfg)
            cfg = build_config(name, prec, a.device)
            if a.compile:
                record(name, "ours+compile",
                       lambda: measure("bench_step", cfg, a.warmup, a.steps, compile=True, **iso), cfg)
        if not a.no_official:
            cfg = build_config(name, "fp32", a.device)
            off = record(name, "official-style", lambda: measure("bench_official", cfg, a.warmup, a.steps, **iso),
                         cfg)
            if a.paired:
                la0 = loadavg()
                log.info("timing %s ours vs official-style, alternating steps ...", name)
                pr = measure("bench_paired", cfg, a.warmup, a.paired, **iso)
                pr.update(config=name, loadavg=[la0, loadavg()])
                result.setdefault("paired", []).append(pr)
            for r in result["train_step"]:
                if off and r.get("config") == name and r.get("variant", "").startswith("ours") and "error" not in r:
                    result["speedup"].append({"config": name, "ours": f"{r['variant']} {r['precision']}",
                                              "official": f"official-style {off['precision']}",
                                              "ratio": off["s_per_step"] / r["s_per_step"],
                                              "cpu_ratio": off["cpu_s_per_step"] / r["cpu_s_per_step"]})
    if not a.no_knn:
        q, n = (50_000, 1_000_000) if a.knn_full else map(int, a.knn_size.lower().split("x"))
        log.info("timing k-NN %d x %d ...", q, n)
        result["knn"] = [measure("bench_knn", q, n, device=a.device, **iso)]
    if not a.no_data:
        cfg = build_config(configs[0] if configs else "cpu-toy", "fp32", a.device)
        log.info("timing the data pipeline ...")
        result["data_pipeline"] = bench_data(cfg, [int(w) for w in a.data_workers.split(",")], a.data_batches,
                                             a.data_root)
    result["env"]["loadavg_end"] = loadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    log.info("bench results (%s):\n%s", out, table(result))
    return result


if __name__ == "__main__":
    main()
