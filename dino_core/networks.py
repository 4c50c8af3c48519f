"""The student and teacher networks g_θs, g_θt of a config (Sec. 3.1: a ViT backbone followed by the
projection head), the DINO loss H(Pt, Ps) with its τt schedule, and the matmul shapes of one step
(what the precision probe times).
"""
from __future__ import annotations

from .config import Config
from .device import matmul_shapes
from .head import DINOHead, MultiCropWrapper
from .loss import DINOLoss
from .multicrop import n_crops
from .schedules import teacher_temp_schedule
from .vit import build_vit


def build_network(cfg: Config, student: bool) -> MultiCropWrapper:
    """Student (drop path, optional predictor) or teacher (neither) backbone + head."""
    m, h = cfg.model, cfg.head
    backbone = build_vit(m.arch, m.patch_size, cfg.crops.global_size, m.embed_dim, m.depth, m.num_heads,
                         m.drop_path_rate if student else 0.0, m.attn_impl)
    head = DINOHead(backbone.embed_dim, h.out_dim, h.use_bn, h.norm_last_layer, h.nlayers, h.hidden_dim,
                    h.bottleneck_dim, predictor=h.predictor and student)
    return MultiCropWrapper(backbone, head)


def build_loss(cfg: Config) -> DINOLoss:
    lc = cfg.loss
    temps = teacher_temp_schedule(lc.warmup_teacher_temp, lc.teacher_temp, lc.warmup_teacher_temp_epochs,
                                  cfg.train.epochs)
    return DINOLoss(cfg.head.out_dim, n_crops(cfg.crops), temps, lc.student_temp, lc.kind, lc.normalization,
                    lc.sharpening, lc.center_momentum, lc.sk_iters, lc.queue_size, lc.infonce_temp)


def model_shapes(cfg: Config, dim: int) -> list[tuple[int, int, int]]:
    """The matmul shapes of one global-crop batch through a block and the head (precision probe)."""
    tokens = cfg.optim.batch_size * (1 + (cfg.crops.global_size // cfg.model.patch_size) ** 2)
    h = cfg.head
    return matmul_shapes(tokens, cfg.optim.batch_size, dim,
                         (*[h.hidden_dim] * (h.nlayers - 1), h.bottleneck_dim, h.out_dim))
