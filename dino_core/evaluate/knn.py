"""Weighted k-NN classifier of the official ``eval_knn.py`` (Wu et al. 2018 voting).

For a query q and train features t_j (both L2-normalised) with labels y_j:

    s_j = <q/|q|, t_j/|t_j|>,   N_k(q) = the k train samples of largest s_j,
    score_c(q) = sum_{j in N_k(q), y_j = c} exp(s_j / T)          (T = 0.07)

Classes are ranked by score; top-1 is the first class, top-5 counts a hit if the label is among
the first min(5, k) ranked classes (as the official ``correct.narrow(1, 0, min(5, k))``; classes
without votes rank after all voted ones).

Ties (deterministic, documented):
* class scores: a stable descending sort, so equal scores rank by ascending class index;
* neighbours: ``torch.topk(sorted=True)``; train samples with exactly the k-th similarity are
  chosen by topk's (fixed, per-row) algorithm, so the result does not depend on chunking.

Memory bound. Train features are not copied for normalisation: s = (q_hat @ T^T) / |t|.
Queries are processed in chunks of c = max(1, floor(budget / (8 N))) rows (a (c, N) fp32
similarity block plus one same-size temporary for topk). Peak memory on the device:

    N*D*4 (train feats) + N*12 (labels int64 + norms) + Q*D*4 (queries) + budget
    + c*k_max*20 (topk values/indices/labels) + c*C*4 (scores)

ImageNet (N = 1.28M, D = 384, Q = 50k, budget 1 GiB): 1.97 GB + 15 MB + 77 MB + 1.07 GB
+ ~2 MB ~= 3.1 GB (c = 104 queries per chunk).
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 1 << 30


def knn_chunk_size(n_train: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Queries per chunk so that the (chunk, n_train) similarity block and one same-size
    temporary (8 bytes per entry) fit in ``budget_bytes``."""
    return max(1, budget_bytes // (8 * max(n_train, 1)))


def knn_memory_bytes(n_train: int, dim: int, n_query: int, k_max: int, num_classes: int,
                     budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Upper bound on the device memory of ``knn_classify`` (formula in the module docstring)."""
    c = min(knn_chunk_size(n_train, budget_bytes), n_query)
    return (n_train * dim * 4 + n_train * 12 + n_query * dim * 4 + c * n_train * 8
            + c * k_max * 20 + c * num_classes * 4)


def _neighbours(train: Tensor, train_norm: Tensor, train_labels: Tensor, q: Tensor,
                k: int) -> tuple[Tensor, Tensor]:
    """One chunk: (c, D) queries -> (similarities (c, k) descending, neighbour labels (c, k))."""
    sim = torch.nn.functional.normalize(q.float(), dim=1) @ train.T
    sim.div_(train_norm)
    vals, idx = sim.topk(k, dim=1, largest=True, sorted=True)
    del sim
    return vals, train_labels[idx]


def _vote(vals: Tensor, labels: Tensor, k: int, T: float, num_classes: int) -> Tensor:
    """(c, k_max) sims/labels -> (c, C) scores sum_{first k} exp(s / T) per class."""
    scores = vals.new_zeros(vals.shape[0], num_classes)
    return scores.scatter_add_(1, labels[:, :k], (vals[:, :k] / T).exp())


def _chunks(train: Tensor, train_labels: Tensor, queries: Tensor, k_max: int, chunk_size: int | None,
            budget_bytes: int):
    """Yield (start, sims (c, k_max), neighbour labels (c, k_max)) over query chunks."""
    if train.shape[0] == 0 or train.shape[0] != train_labels.shape[0]:
        raise ValueError(f"k-NN: {train.shape[0]} train features but {train_labels.shape[0]} labels")
    train = train.float()
    norm = train.norm(dim=1).clamp_min(1e-12)
    labels = train_labels.to(train.device).long()
    c = chunk_size or knn_chunk_size(train.shape[0], budget_bytes)
    for s in range(0, queries.shape[0], c):
        vals, nl = _neighbours(train, norm, labels, queries[s:s + c].to(train.device), k_max)
        yield s, vals, nl


def knn_predict(train_feats: Tensor, train_labels: Tensor, query_feats: Tensor, k: int = 20, T: float = 0.07,
                num_classes: int | None = None, chunk_size: int | None = None,
                budget_bytes: int = DEFAULT_BUDGET_BYTES) -> Tensor:
    """Class scores (Q, C) = sum over the k nearest train samples of exp(cos / T) per class."""
    C = num_classes or int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    out = [_vote(v, nl, k, T, C) for _, v, nl in
           _chunks(train_feats, train_labels, query_feats, k, chunk_size, budget_bytes)]
    return torch.cat(out) if out else train_feats.new_zeros(0, C)


def rank_classes(scores: Tensor) -> Tensor:
    """(Q, C) scores -> (Q, C) class indices, best first; ties by ascending class index."""
    return scores.sort(dim=1, descending=True, stable=True).indices


def knn_classify(train_feats: Tensor, train_labels: Tensor | None, test_feats: Tensor,
                 test_labels: Tensor | None, ks: tuple[int, ...] | list[int] = (10, 20, 100, 200),
                 T: float = 0.07, num_classes: int | None = None, chunk_size: int | None = None,
                 budget_bytes: int = DEFAULT_BUDGET_BYTES) -> dict[str, float]:
    """Weighted k-NN accuracy for each k: {"knn{k}_top1": %, "knn{k}_top5": %}.

    One similarity pass per chunk serves every k (topk with k_max, sorted, sliced per k).
    k larger than the train set is capped at N (logged); the key keeps the requested k.
    """
    if train_labels is None or test_labels is None:
        raise ValueError("k-NN needs labels: the train or val features come without labels "
                         "(items must be (image, label))")
    if (train_labels < 0).any() or (test_labels < 0).any():
        raise ValueError("k-NN needs labels >= 0; the dataset has unlabelled (-1) samples")
    n = train_feats.shape[0]
    C = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    k_eff = {k: min(k, n) for k in ks}
    for k, ke in k_eff.items():
        if ke < k:
            log.warning("k-NN: k=%d capped at the %d train samples", k, n)
    hits = {k: [0, 0] for k in ks}
    for s, vals, nl in _chunks(train_feats, train_labels, test_feats, max(k_eff.values()), chunk_size,
                               budget_bytes):
        y = test_labels[s:s + vals.shape[0]].to(vals.device).view(-1, 1)
        for k, ke in k_eff.items():
            ranked = rank_classes(_vote(vals, nl, ke, T, C))
            correct = ranked[:, :min(5, ke)] == y
            hits[k][0] += int(correct[:, 0].sum())
            hits[k][1] += int(correct.any(dim=1).sum())
    q = max(test_feats.shape[0], 1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"knn{k}_top1"], out[f"knn{k}_top5"] = 100.0 * hits[k][0] / q, 100.0 * hits[k][1] / q
        log.info("k-NN k=%d T=%g: top-1 %.2f, top-5 %.2f", k, T, out[f"knn{k}_top1"], out[f"knn{k}_top5"])
    return out
