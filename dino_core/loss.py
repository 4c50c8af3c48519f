"""DINO loss and the normalisations of the teacher output (centering, Sinkhorn-Knopp, ...).

Cross-entropy (Eq. 2-3 of the paper), for teacher global views t in {1, 2} and student views
v != t:   L = 1/n_terms * sum_{t, v != t} mean_b  sum_k -P_t[b,k] log P_s^v[b,k]
with P_s = softmax(s / tau_s), P_t = softmax((g_t - c) / tau_t) and the center
c <- m c + (1 - m) mean_b g_t  updated after the loss from the raw teacher outputs.
Variants (Table 7, Fig. 7, Tables 14-15): MSE (BYOL-style 2 - 2 cos), InfoNCE with a memory
queue (MoCo-v2-style), teacher normalisation none / sinkhorn_knopp / softmax_batch, and
sharpening off (tau_t = tau_s). tau_t = 0 is the appendix's argmax teacher (App. D "Sharpening",
k-NN 43.9): P_t is the one-hot of argmax_k (g_t - c)_k, the limit of the softmax as tau_t -> 0.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import all_gather_cat, all_reduce_sum, world_size


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temp: float, iters: int) -> Tensor:
    """SwAV's Sinkhorn-Knopp on (B, K) scores: rows of the result sum to 1, columns to ~B/K.

    Q = exp(logits / temp)^T, then alternately normalise prototypes (rows of Q) to 1/K and
    samples (columns) to 1/B; all sums are over every process. iters=1 is Softmax(batch).
    """
    scores = logits.float() / temp
    gmax = scores.max().reshape(1)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(gmax, op=torch.distributed.ReduceOp.MAX)
    q = torch.exp(scores - gmax).t()                          # (K, B)
    k, b = q.shape[0], q.shape[1] * world_size()
    q /= all_reduce_sum(q.sum().reshape(1))
    for _ in range(iters):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def entropy(p: Tensor) -> Tensor:
    """Per-row Shannon entropy -sum p log p (nats); 0 log 0 = 0."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)


class DINOLoss(nn.Module):
    def __init__(self, out_dim: int, ncrops: int, teacher_temps: np.ndarray, student_temp: float,
                 kind: str = "ce", normalization: str = "centering", sharpening: bool = True,
                 center_momentum: float = 0.9, sk_iters: int = 3, queue_size: int = 4096,
                 infonce_temp: float = 0.2, n_global: int = 2) -> None:
        super().__init__()
        self.out_dim, self.ncrops, self.n_global = out_dim, ncrops, n_global
        self.student_temp, self.kind, self.normalization = student_temp, kind, normalization
        self.teacher_temps = teacher_temps if sharpening else np.full_like(teacher_temps, student_temp)
        if normalization in ("sinkhorn_knopp", "softmax_batch") and float(np.min(self.teacher_temps)) == 0.0:
            raise ValueError(f"loss.teacher_temp = 0 (argmax teacher) needs loss.normalization centering or "
                             f"none; {normalization!r} divides the scores by tau_t (allowed: tau_t > 0)")
        self.center_momentum, self.sk_iters, self.infonce_temp = center_momentum, sk_iters, infonce_temp
        self.register_buffer("center", torch.zeros(1, out_dim))
        if kind == "infonce":
            self.register_buffer("queue", F.normalize(torch.randn(queue_size, out_dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def teacher_probs(self, teacher_out: Tensor, epoch: int) -> Tensor:
        """Targets P_t (n_global*B, K) from raw teacher scores, per the normalisation switch."""
        temp = float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])
        t = teacher_out.float()
        if temp == 0.0:   # argmax teacher: the tau_t -> 0 limit of the softmax below
            t = t - self.center if self.normalization == "centering" else t
            return F.one_hot(t.argmax(dim=-1), t.shape[-1]).to(t.dtype)
        if self.normalization == "centering":
            return F.softmax((t - self.center) / temp, dim=-1)
        if self.normalization == "none":
            return F.softmax(t / temp, dim=-1)
        iters = self.sk_iters if self.normalization == "sinkhorn_knopp" else 1
        return sinkhorn_knopp(t, temp, iters)

    def forward(self, student_out: Tensor, teacher_out: Tensor, epoch: int) -> tuple[Tensor, dict]:
        """student_out (ncrops*B, K), teacher_out (n_global*B, K) -> (loss, detached stats)."""
        s = student_out.float()
        b = s.shape[0] // self.ncrops
        with torch.no_grad():
            q = self.teacher_probs(teacher_out, epoch).reshape(self.n_global, b, -1)
        logp = F.log_softmax(s / self.student_temp, dim=-1).reshape(self.ncrops, b, -1)
        # CE of every (teacher view, student view) pair in one contraction: (n_global, ncrops)
        ce = -torch.einsum("tbk,vbk->tv", q, logp) / b
        mask = torch.ones_like(ce, dtype=torch.bool)
        mask[torch.arange(self.n_global), torch.arange(self.n_global)] = False   # skip same view
        n_terms = int(mask.sum())
        if self.kind == "ce":
            loss = ce[mask].sum() / n_terms
        elif self.kind == "mse":
            loss = self._pairwise(s, teacher_out, b, mask, self._mse) / n_terms
        else:
            loss = self._pairwise(s, teacher_out, b, mask, self._infonce) / n_terms
        stats = self._stats(q, ce.detach(), mask, n_terms)
        self.update_center(teacher_out)
        if self.kind == "infonce":
            self._enqueue(teacher_out)
        return loss, stats

    def _target_vectors(self, teacher_out: Tensor) -> Tensor:
        t = teacher_out.float().detach()
        return F.normalize(t - self.center if self.normalization == "centering" else t, dim=-1)

    def _pairwise(self, s: Tensor, teacher_out: Tensor, b: int, mask: Tensor, fn) -> Tensor:
        zt = self._target_vectors(teacher_out).reshape(self.n_global, b, -1)
        zs = F.normalize(s, dim=-1).reshape(self.ncrops, b, -1)
        total = s.new_zeros(())
        for ti, vi in mask.nonzero().tolist():
            total = total + fn(zs[vi], zt[ti])
        return total

    @staticmethod
    def _mse(zs: Tensor, zt: Tensor) -> Tensor:
        """BYOL's ||zs - zt||^2 = 2 - 2 cos(zs, zt), batch mean."""
        return (2 - 2 * (zs * zt).sum(dim=-1)).mean()

    def _infonce(self, zs: Tensor, zt: Tensor) -> Tensor:
        """MoCo-v2: -log exp(zs.zt/T) / (exp(zs.zt/T) + sum_queue exp(zs.n/T))."""
        pos = (zs * zt).sum(dim=-1, keepdim=True)
        neg = zs @ self.queue.clone().t()   # clone: _enqueue writes the queue in place before backward
        logits = torch.cat((pos, neg), dim=1) / self.infonce_temp
        return F.cross_entropy(logits, torch.zeros(zs.shape[0], dtype=torch.long, device=zs.device))

    @torch.no_grad()
    def _stats(self, q: Tensor, ce: Tensor, mask: Tensor, n_terms: int) -> dict:
        """Fig. 7 signals: h(P_t), H(mean_b P_t), KL(P_t || P_s) = CE - h(P_t) (pair mean)."""
        h = entropy(q)                                         # (n_global, B)
        kl = (ce - h.mean(dim=1, keepdim=True))[mask].sum() / n_terms
        q2 = q.reshape(-1, q.shape[-1])                        # the batch mean over all processes:
        mean_q = all_reduce_sum(q2.sum(dim=0)) / (q2.shape[0] * world_size())
        return {"ce": ce[mask].sum() / n_terms, "teacher_entropy": h.mean(),
                "teacher_batch_entropy": entropy(mean_q), "kl": kl}

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        """c <- m c + (1 - m) * sum_b g_t(x_b) / (B * world), over all processes."""
        batch_center = all_reduce_sum(teacher_out.float().sum(dim=0, keepdim=True))
        batch_center = batch_center / (teacher_out.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    @torch.no_grad()
    def _enqueue(self, teacher_out: Tensor) -> None:
        keys = all_gather_cat(self._target_vectors(teacher_out))
        n, size, ptr = keys.shape[0], self.queue.shape[0], int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % size
        self.queue[idx[-size:]] = keys[-size:]
        self.queue_ptr[0] = (ptr + n) % size


def log_k(out_dim: int) -> float:
    """ln K: the loss (and teacher entropy) of a uniform-collapsed DINO."""
    return math.log(out_dim)
