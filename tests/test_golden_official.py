"""Golden values computed by the official DINO code, so that a change to the core cannot drift from it.

Every expected number below was computed once by facebookresearch/dino at commit
7c446df5b9f45747937fb0d72314eb9f7b66930a (vision_transformer.vit_small, main_dino.DINOLoss,
utils.cosine_scheduler, utils.clip_gradients) on the inputs these tests build, on CPU in fp32 with
one thread under torch 2.14.1 (DINOLoss in a gloo process group of size 1, as its center update
all-reduces). Only the numbers are kept here; none of the official code is. Our ViT uses the
official state-dict key names, so one seeded state dict loads into both models.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dino_core.loss import DINOLoss
from dino_core.optim import Schedules, clip_gradients
from dino_core.schedules import teacher_temp_schedule
from dino_core.vit import build_vit
from helpers import tiny_config

RTOL = 1e-5


def close(actual, expected, atol: float = 0.0) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), rtol=RTOL, atol=atol)


def seeded_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """One float64 normal draw per tensor, in sorted key order (independent of module order), scaled
    so that attention is far from uniform's trivial case: weights by 1/sqrt(fan-in), LayerNorm gains
    near 1, CLS token and position embeddings at 0.5, biases at 0.02."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name in sorted(shapes):
        shape = shapes[name]
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if "norm" in name and name.endswith(".weight"):
            t = 1 + 0.1 * x
        elif name.endswith(".weight"):
            t = x / math.sqrt(math.prod(shape[1:]))
        elif name in ("cls_token", "pos_embed"):
            t = 0.5 * x
        else:
            t = 0.02 * x
        sd[name] = t.float()
    return sd


@pytest.fixture(scope="module", params=["explicit", "auto"])
def vit_s16(request):
    """explicit: the official attention formula; auto: fused SDPA, what CPU fp32 training runs."""
    torch.set_num_threads(1)
    model = build_vit("vit_small", 16, attn_impl=request.param).eval()
    model.load_state_dict(seeded_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}),
                          strict=True)
    return model


# SDPA rounds differently from softmax(QK^T)V: entries near 0 get an absolute allowance of 1e-5
# of the tensor's scale (features ~1, attention ~0.03); norms and sums must hold to 1e-5 relative.
@torch.no_grad()
def test_vit_s16_cls_features_equal_the_official(vit_s16):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    f = vit_s16(x).double()
    close(f.norm(dim=1), [19.38077483, 19.40960752])
    close(f.sum(dim=1), [2.353281906, 2.481227033], atol=1e-4)
    close(f[:, [0, 7, 100, 383]], [[1.258503675, -1.152872324, -0.193461448, 0.07730748504],
                                   [1.733491302, -1.24406743, 0.09054101259, 0.04403190687]], atol=1e-5)


@torch.no_grad()
def test_vit_s16_last_layer_attention_equals_the_official(vit_s16):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    a = vit_s16.get_last_selfattention(x).double()
    assert tuple(a.shape) == (2, 6, 197, 197)
    cls = a[:, :, 0, 1:]   # CLS -> patch attention of each head, what the attention maps show
    close(cls.norm(dim=-1), [[0.09395750284, 0.09112805657, 0.09121216375, 0.08234865984, 0.08885228963,
                              0.08488248668],
                             [0.08930665382, 0.08746294776, 0.08535813928, 0.08580524802, 0.08198678626,
                              0.08215097599]])
    close(cls.max(dim=-1).values, [[0.02906892821, 0.02602389455, 0.03665990755, 0.02123449743,
                                    0.02353407629, 0.02238497324],
                                   [0.02524394728, 0.0230636131, 0.02409511805, 0.01884389855,
                                    0.01847918145, 0.01617790759]])
    assert cls.argmax(dim=-1).tolist() == [[41, 47, 132, 143, 151, 25], [109, 106, 75, 26, 64, 190]]
    close([a[0, 0, 0, 1], a[1, 5, 0, 196], a[0, 3, 17, 42]],
          [0.005702701863, 0.002272772137, 0.003217435908], atol=3e-7)


@torch.no_grad()
def test_vit_s16_non_square_inputs_equal_the_official_in_both_orientations(vit_s16):
    """The position-embedding interpolation for 160 x 224 and 224 x 160 inputs: the official code
    scales height and width each by their own factor (no swap), and so does ours."""
    x = torch.randn(1, 3, 160, 224, generator=torch.Generator().manual_seed(2))
    wide, tall = vit_s16(x).double(), vit_s16(x.transpose(2, 3)).double()
    close([wide.norm(), wide.sum()], [19.5181246, 2.549624408], atol=1e-4)
    close([tall.norm(), tall.sum()], [19.35237266, 2.262945811], atol=1e-4)


def test_dino_loss_and_center_equal_the_official_over_two_steps():
    """2 global + 4 local crops of batch 4, K 64, epoch 5 of a 30-epoch tau_t warm-up 0.04 -> 0.07
    (tau_t 0.04517), tau_s 0.1, center momentum 0.9: the loss of two consecutive steps (the second
    with the center the first left) and the center after each."""
    g = torch.Generator().manual_seed(3)
    k, b = 64, 4
    steps = [(torch.randn(6 * b, k, generator=g) * 3, torch.randn(2 * b, k, generator=g) * 3) for _ in range(2)]
    loss_fn = DINOLoss(k, 6, teacher_temp_schedule(0.04, 0.07, 30, 100), 0.1, center_momentum=0.9)
    first, _ = loss_fn(*steps[0], 5)
    close(first, 75.6424408)
    close(loss_fn.center.double().sum(), -0.8333074627)
    second, _ = loss_fn(*steps[1], 5)
    close(second, 67.32279968)
    c = loss_fn.center.double()[0]
    close([c.sum(), c.norm()], [-1.12159028, 1.161154559])
    close(c[[0, 1, 31, 63]], [-0.1683518291, -0.1432487518, -0.01655757613, 0.17767331])


def test_teacher_temperature_schedule_equals_the_official():
    temps = teacher_temp_schedule(0.04, 0.07, 30, 100)
    close(temps[[0, 5, 29, 30, 99]], [0.04, 0.04517241379, 0.07, 0.07, 0.07])


def test_lr_wd_and_momentum_schedules_equal_the_official():
    """ViT-S defaults over 8 processes of batch 64 (lr 5e-4 x 512/256), 100 epochs of 50 steps,
    10 warm-up epochs; the momentum as 1 - m, whose scale the comparison must resolve."""
    cfg = tiny_config(optim={"lr": 0.0005, "min_lr": 1e-6, "warmup_epochs": 10, "weight_decay": 0.04,
                             "weight_decay_end": 0.4, "batch_size": 64},
                      teacher={"variant": "ema", "momentum": 0.996}, train={"epochs": 100})
    s = Schedules.build(cfg, niter_per_ep=50, world_size=8)
    idx = [0, 1, 499, 500, 2500, 4999]
    assert len(s.lr) == len(s.wd) == len(s.momentum) == 5000
    close(s.lr[idx], [0.0, 2.004008016e-06, 0.001, 0.001, 0.0005872372647, 1.000121725e-06])
    close(s.lr.sum(), 2.5027495)
    close(s.wd[idx], [0.04, 0.04000003553, 0.04877491186, 0.04880982707, 0.22, 0.3999999645])
    close(s.wd.sum(), 1099.82)
    close(1 - s.momentum[idx], [0.004, 0.003999999605, 0.003902500979, 0.003902113033, 0.002,
                                3.947842053e-10], atol=1e-15)
    close(np.sum(1 - s.momentum), 10.002)


def test_per_parameter_clipping_equals_the_official():
    """Clip 3.0 on four gradients of norms 1.17, 20.4, 7.92 and 7.37: the first stays, each other one
    is scaled to norm 3 (less the official 1e-6 in the denominator)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    g = torch.Generator().manual_seed(4)
    for p, scale in zip(net.parameters(), [0.1, 5.0, 1.0, 10.0]):
        p.grad = torch.randn(p.shape, generator=g) * scale
    close([p.grad.norm() for p in net.parameters()], [1.173346996, 20.36261749, 7.917040348, 7.370215893])
    clip_gradients(net, 3.0)
    close([p.grad.norm() for p in net.parameters()], [1.173346996, 2.999999762, 2.999999285, 2.999999523])
    close([p.grad.double().sum() for p in net.parameters()],
          [-0.6305014075, -2.566145271, -3.006981254, 1.817063853])
