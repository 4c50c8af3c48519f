"""The official-style training step and the paired comparison with ours at equal work."""
from __future__ import annotations

import math
import statistics
import time

import torch
from torch import Tensor, nn

from dino_core.config import Config
from dino_core.step import Run, train_step
from .flops import count_flops, distance_to_peak, matmul_peak
from .measuring import PeakMemory, sync, time_calls
from .official_model import _ODINOHead, _ODINOLoss, _OMultiCropWrapper, _OViT
from .step import make_run, random_crops, timed_epoch


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
        sync(self.device)
        return loss.item()


def bench_official(cfg: Config, warmup: int, steps: int, peak_n: int = 2048) -> dict:
    run = make_run(cfg)
    off = OfficialStep(run)
    del run
    crops = random_crops(cfg, off.device)
    it, epoch = timed_epoch(cfg)
    losses: list[float] = []
    counted = count_flops(lambda: off.step(crops, it, epoch))   # also a warm-up step
    with PeakMemory(off.device) as mem:
        out = time_calls(lambda: losses.append(off.step(crops, it, epoch)), warmup, steps, off.device)
    out.update(precision=off.precision, compile=False, peak_mem_mb=mem.peak_mb, process_mem_mb=mem.total_mb,
               mem_method=mem.method, losses=[round(x, 5) for x in losses], **counted)
    out.update(distance_to_peak(out, matmul_peak(off.precision, off.device, peak_n)))
    return out


def bench_paired(cfg: Config, warmup: int, steps: int, compile: bool = False) -> dict:
    """Our step (and, with ``compile``, our step compiled as train.compile sets it) and the
    official-style step alternated in one process: all see the same machine load, so the per-pair
    ratios are robust on a shared machine. Each turn runs a variant twice and times the second step
    (the first step after a switch pays the other model's allocator state, ~15 %)."""
    run = make_run(cfg)
    off = OfficialStep(run)
    crops = random_crops(cfg, run.device)
    it, epoch = timed_epoch(cfg)
    fns = {"ours": lambda: float(train_step(run, crops, it, epoch)[0]), "official": lambda: off.step(crops, it, epoch)}
    if compile:
        run_c = make_run(cfg.replace("train", compile=True))
        fns["ours+compile"] = lambda: float(train_step(run_c, crops, it, epoch)[0])
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(steps):
        for k in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            fns[k]()   # re-warm after the switch, untimed
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k]()
            sync(run.device)
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    out = {"precision": run.precision, "official_precision": off.precision, "attn_impl": cfg.model.attn_impl,
           "official_s_per_step": statistics.median(times["official"]), "official_min_s": min(times["official"]),
           "official_cpu_s": statistics.median(cpu["official"]),
           "official_times_s": [round(t, 4) for t in times["official"]]}
    for k in (v for v in fns if v != "official"):
        ratios = [o / u for o, u in zip(times["official"], times[k])]
        pre = "ours" if k == "ours" else "compiled"
        out.update({f"{pre}_s_per_step": statistics.median(times[k]), f"{pre}_min_s": min(times[k]),
                    f"{pre}_cpu_s": statistics.median(cpu[k]), f"{pre}_times_s": [round(t, 4) for t in times[k]],
                    f"{pre}_ratio_median": statistics.median(ratios), f"{pre}_ratios": [round(r, 4) for r in ratios],
                    f"{pre}_ratio_geomean": math.exp(statistics.fmean(math.log(r) for r in ratios)),
                    f"{pre}_ratio_of_mins": min(times["official"]) / min(times[k])})
    # the names the JSON has always had for our eager step
    out.update(ratio_median=out.pop("ours_ratio_median"), ratios=out.pop("ours_ratios"),
               ratio_geomean=out.pop("ours_ratio_geomean"), ratio_of_mins=out.pop("ours_ratio_of_mins"))
    return out
