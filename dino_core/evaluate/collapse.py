"""Collapse diagnostics (paper §5.3, Fig. 7) on a held-out set of single eval-transformed images.

Head side, with teacher logits t, student logits s (B, K), center c:

    Pt = softmax((t - c) / tau_t),   Ps = softmax(s / tau_s)
    (or Pt = targets(t), the training's own teacher targets: e.g. DINOLoss.teacher_probs, which
    centres only under centering and applies Sinkhorn-Knopp per batch under SK)
    h(P) = -sum_k P_k ln P_k                    (0 ln 0 = 0; uniform: ln K, one-hot: 0)
    KL(Pt || Ps) = sum_k Pt_k (ln Pt_k - ln Ps_k),   H(Pt, Ps) = h(Pt) + KL(Pt || Ps)

Reported: mean per-sample h(Pt) (``teacher_entropy``), h of the set-mean teacher distribution
mean_b Pt (``teacher_mean_entropy``), mean KL, mean cross-entropy, and how many prototypes are
the teacher argmax for at least one image (``prototypes_used``).

Backbone side, on features f (N, d), f_hat = f / |f|:
    feature_std = mean_j std_i(f_hat_ij)   (population std; ~1/sqrt(d) if spread, 0 if collapsed)
    effective_rank = exp(-sum_i p_i ln p_i), p_i = sigma_i / sum_j sigma_j over the singular values
    of the uncentred f_hat (Roy & Vetterli 2007): d for an isotropic set, 1 for identical rows.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import split_batch

log = logging.getLogger(__name__)
UNIFORM_ENTROPY, UNIFORM_KL = 0.97, 0.01   # uniform collapse: h(Pt) > 0.97 ln K and KL < 0.01 ln K


def teacher_probs(t_logits: Tensor, center: Tensor | float, tau_t: float) -> Tensor:
    """Pt = softmax((t - center) / tau_t) over the last dim, (B, K)."""
    return F.softmax((t_logits.float() - center) / tau_t, dim=-1)


def entropy(p: Tensor) -> Tensor:
    """h(p) = -sum_k p_k ln p_k per row, (B, K) -> (B,), with 0 ln 0 = 0."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


def kl_divergence(p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) = sum_k p_k (ln p_k - ln q_k) per row, from p and ln q: (B, K) -> (B,)."""
    return torch.where(p > 0, p * (p.log() - log_q), torch.zeros_like(p)).sum(dim=-1)


def _head_sums(t_logits: Tensor, s_logits: Tensor, center: Tensor | float, tau_t: float,
               tau_s: float, targets: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
    pt = targets(t_logits).float() if targets is not None else teacher_probs(t_logits, center, tau_t)
    log_ps = F.log_softmax(s_logits.float() / tau_s, dim=-1)
    return {"h": entropy(pt).sum(), "kl": kl_divergence(pt, log_ps).sum(), "p": pt.sum(dim=0),
            "used": torch.bincount(pt.argmax(dim=-1), minlength=pt.shape[-1]) > 0, "n": pt.shape[0]}


def _merge(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return b
    return {"h": a["h"] + b["h"], "kl": a["kl"] + b["kl"], "p": a["p"] + b["p"],
            "used": a["used"] | b["used"], "n": a["n"] + b["n"]}


def _head_finish(s: dict[str, Any]) -> dict[str, float]:
    h, kl = float(s["h"]) / s["n"], float(s["kl"]) / s["n"]
    return {"teacher_entropy": h, "teacher_mean_entropy": float(entropy(s["p"] / s["n"])),
            "kl_teacher_student": kl, "cross_entropy": h + kl, "prototypes_used": int(s["used"].sum()),
            "log_K": math.log(s["p"].shape[-1])}


def head_metrics(t_logits: Tensor, s_logits: Tensor, center: Tensor | float = 0.0, tau_t: float = 0.04,
                 tau_s: float = 0.1) -> dict[str, float]:
    """Head statistics of (B, K) teacher/student logits (see module docstring)."""
    return _head_finish(_head_sums(t_logits, s_logits, center, tau_t, tau_s))


def feature_std(feats: Tensor) -> float:
    """mean over dims of the per-dim (population) std of L2-normalised (N, d) features."""
    return float(F.normalize(feats.double(), dim=1).std(dim=0, correction=0).mean())


def effective_rank(feats: Tensor) -> float:
    """exp(entropy of sigma_i / sum sigma) of the (N, d) matrix as given (no centring)."""
    s = torch.linalg.svdvals(feats.double())
    if float(s.sum()) == 0.0:
        return 0.0
    return float(torch.exp(entropy(s / s.sum())))


def feature_metrics(feats: Tensor) -> dict[str, float]:
    """{"feature_std", "effective_rank", "feature_dim"} of backbone features (N, d)."""
    return {"feature_std": feature_std(feats), "effective_rank": effective_rank(F.normalize(feats.double(), dim=1)),
            "feature_dim": int(feats.shape[1])}


def collapse_verdict(metrics: dict[str, float], K: int | None = None, d: int | None = None) -> tuple[bool, str]:
    """Collapsed iff any available check fires (checks whose metrics are absent are skipped):

    1. feature_std < 0.1 / sqrt(d): an order of magnitude below the isotropic value 1/sqrt(d),
       i.e. pairwise cosines of the features above ~0.99: every image maps to one direction.
    2. effective_rank < 2: the feature set is essentially one-dimensional.
    3. teacher_mean_entropy < 0.05 ln K (one-hot collapse, no centering): the *set-mean* teacher
       distribution is nearly one-hot, so one prototype wins for every image. The per-sample
       entropy is not used here: a sharpened healthy teacher is confident per image but spread
       over prototypes, and h(mean Pt) >= mean h(Pt) makes this the stricter sign.
    4. teacher_entropy > 0.97 ln K and KL < 0.01 ln K (uniform collapse, no sharpening): the
       teacher outputs (almost) the uniform distribution and the student copies it. Measured on
       the Fashion-MNIST grid (K = 256, 12 epochs): centering only 0.997 ln K / KL 0.0002 ln K,
       tau_t 0.08 0.985 / 0.001; rows that learn: default 0.72 / 0.03, tau_t 0.06 0.93 / 0.006,
       warm-up 0.04 -> 0.07 0.95 / 0.004. An exact KL = 0 needs infinite training, so the rule
       asks for "nearly uniform and nearly copied"; the 0.97 was set after seeing these numbers
       (docs/small-scale-recipe.md: the margin between warm-up and tau_t 0.08 is narrow).
    """
    fired, d = [], d or metrics.get("feature_dim")
    if "feature_std" in metrics and d:
        if metrics["feature_std"] < 0.1 / math.sqrt(d):
            fired.append(f"feature_std {metrics['feature_std']:.3g} < 0.1/sqrt({d}) = {0.1 / math.sqrt(d):.3g}")
    if "effective_rank" in metrics and metrics["effective_rank"] < 2:
        fired.append(f"effective_rank {metrics['effective_rank']:.3g} < 2")
    if K and "teacher_mean_entropy" in metrics and metrics["teacher_mean_entropy"] < 0.05 * math.log(K):
        fired.append(f"one-hot collapse: h(mean Pt) {metrics['teacher_mean_entropy']:.3g} < 0.05 ln K")
    if K and "kl_teacher_student" in metrics and "teacher_entropy" in metrics \
            and metrics["kl_teacher_student"] < UNIFORM_KL * math.log(K) \
            and metrics["teacher_entropy"] > UNIFORM_ENTROPY * math.log(K):
        fired.append(f"uniform collapse: KL {metrics['kl_teacher_student']:.3g} < {UNIFORM_KL:g} ln K and "
                     f"h(Pt) {metrics['teacher_entropy']:.3g} > {UNIFORM_ENTROPY:g} ln K")
    return (True, "; ".join(fired)) if fired else (False, "no collapse check fired")


@torch.no_grad()
def collapse_metrics(student: nn.Module, teacher: nn.Module, loader: Any, center: Tensor | float,
                     tau_s: float, tau_t: float, device: torch.device | str = "cpu",
                     targets: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
    """Run teacher and student (backbone + head modules) over a held-out loader of single images.
    Pt = softmax((t - center) / tau_t), or targets(t) (B, K) -> (B, K) when given.

    Head statistics are accumulated over batches (memory O(K), not O(N K)); the teacher backbone
    features (N, d) are kept for feature_std / effective_rank. Adds "collapsed" and "collapse_reason".
    """
    device = torch.device(device)
    modes = (student.training, teacher.training)
    student.eval().to(device)
    teacher.eval().to(device)
    center = center.to(device) if isinstance(center, Tensor) else center
    sums, feats = None, []
    for batch in loader:
        x = split_batch(batch)[0].to(device)
        f = teacher.backbone(x)
        sums = _merge(sums, _head_sums(teacher.head(f), student(x), center, tau_t, tau_s, targets))
        feats.append(f.float().cpu())
    student.train(modes[0])
    teacher.train(modes[1])
    if sums is None:
        raise ValueError("collapse_metrics: the held-out loader yielded no batches")
    out: dict[str, Any] = {**_head_finish(sums), **feature_metrics(torch.cat(feats))}
    out["collapsed"], out["collapse_reason"] = collapse_verdict(out, K=int(sums["p"].shape[-1]))
    log.info("collapse metrics: %s", out)
    return out
