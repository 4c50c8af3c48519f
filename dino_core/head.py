"""DINO projection head, optional student predictor, and the multi-crop wrapper.

Head (official ``DINOHead``): MLP in -> hidden -> hidden -> bottleneck (GELU, optional BN),
L2-normalised bottleneck, then a weight-normalised linear layer to K prototypes
(``last_layer.weight_g`` / ``last_layer.weight_v`` as in the released checkpoints).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, nlayers: int, use_bn: bool) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, out_dim)
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (nlayers - 1)
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if use_bn else []) + [nn.GELU()]
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


class WeightNormLinear(nn.Module):
    """y = x W^T with W_k = g_k v_k / ||v_k|| (weight normalisation, dim 0), no bias.

    With g fixed to 1 (``norm_last_layer``) every prototype has unit norm, so the logits of an
    L2-normalised input are cosine similarities in [-1, 1].
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        v = torch.empty(out_dim, in_dim)
        # nn.Linear's default init, as the official weight_norm(nn.Linear(...)) (created after
        # the trunc-normal init of the MLP, so it keeps the default)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))
        return F.linear(x, w)


class DINOHead(nn.Module):
    """(B, in_dim) -> (B, K) prototype scores."""

    def __init__(self, in_dim: int, out_dim: int, use_bn: bool = False, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 predictor: bool = False) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, max(nlayers, 1), use_bn)
        # BYOL-style predictor on the student bottleneck (Table 7 row 6); teacher has none.
        self.predictor = _mlp(bottleneck_dim, hidden_dim, bottleneck_dim, 2, use_bn) if predictor else None
        self.apply(_init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)
        if self.predictor is not None:
            x = self.predictor(x)
        return self.last_layer(F.normalize(x, dim=-1, p=2))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of crops.

    Consecutive crops of equal resolution are concatenated and run through the backbone in
    one forward (2 global + n local crops = 2 forwards); the head runs once on all features.
    Input: list of (B, 3, H_i, W_i); output: (n_crops * B, K), crops in input order.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[Tensor] | Tensor) -> Tensor:
        if isinstance(crops, Tensor):
            crops = [crops]
        feats, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(feats))
