"""crops.backend: tensor (augmentation.py) against the PIL path (multicrop.py).

Both backends take the same draws from the same per-sample generator (multicrop.draw_views), so the
rates of every op, the crop areas and aspect ratios are the same numbers, not merely the same
distribution; what differs is the pixel arithmetic. The tests pin: each op's pixels against PIL's,
whole samples against PIL's, the output statistics against an independent PIL sample within their
sampling error, the draws against the official ops' parameter distributions, and per-sample
determinism (a view depends on (seed, epoch, index) only, not on the batch it is computed in).
"""
from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from dino_core.augmentation import augment_view
from dino_core.config import Config
from dino_core.multicrop import MultiCropAugmentation, MultiCropDataset, ViewDraw, draw_views
from helpers import MEAN, STD, random_images, tiny_config

SIZE = 28   # Fashion-MNIST's side; the cell's views are 32 px (up-sampled) and 16 px (down-sampled)


def _crops_cfg(**kw):
    c = tiny_config().crops
    return dataclasses.replace(c, global_size=32, local_size=16, local_number=2, **kw)


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0) -> None:
        self.images = random_images(n, SIZE, seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], i % 3


def _pixels(images) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]).float() / 255


def _plain(**kw) -> ViewDraw:
    d = dict(angle=0.0, box=(0, 0, SIZE, SIZE), flip=False, jitter=(), gray=False, blur=None, solarize=False)
    return ViewDraw(**{**d, **kw})


OPS = {"identity": (_plain(), SIZE), "up-sample": (_plain(box=(3, 5, 20, 17)), 32),
       "down-sample": (_plain(box=(1, 2, 26, 25)), 16), "flip": (_plain(flip=True), SIZE),
       "brightness": (_plain(jitter=((0, 1.35),)), SIZE), "contrast": (_plain(jitter=((1, 0.65),)), SIZE),
       "saturation": (_plain(jitter=((2, 1.2),)), SIZE), "hue": (_plain(jitter=((3, -0.08),)), SIZE),
       "jitter, all four": (_plain(jitter=((3, 0.05), (1, 1.3), (0, 0.7), (2, 0.85))), SIZE),
       "grayscale": (_plain(gray=True), SIZE), "blur 0.3": (_plain(blur=0.3), SIZE),
       "blur 1.7": (_plain(blur=1.7), SIZE), "solarize": (_plain(solarize=True), SIZE)}


@pytest.mark.parametrize("name", list(OPS))
def test_each_tensor_op_matches_the_pil_op(name, one_thread):
    """Same draw, same image: the tensor op's pixels equal PIL's up to PIL's uint8 arithmetic, which
    rounds or truncates after every op and quantises H, S and V for the hue: mean |difference| <=
    1.5/255 over 16 noisy images (measured 0-0.6/255 per op, 1.2 for four jitter ops in a row), each
    pixel within 12/255 (measured 6/255 for the hue, 10/255 for the four ops)."""
    draw, size = OPS[name]
    images = random_images(16, SIZE, seed=1)
    aug = MultiCropAugmentation(_crops_cfg(), MEAN, STD)
    pil = torch.stack([aug.apply(im, size, draw) for im in images])
    ten = augment_view(_pixels(images), [draw] * 16, size, torch.tensor(MEAN), torch.tensor(STD))
    diff = (pil - ten).abs() * STD[0]   # in [0, 1] pixel units
    assert float(diff.mean()) <= 1.5 / 255 and float(diff.max()) <= 12 / 255, (name, float(diff.mean()) * 255,
                                                                               float(diff.max()) * 255)


def _datasets(n: int, seed_pil: int, seed_tensor: int, **kw):
    base = _Images(n)
    pil = MultiCropDataset(base, MultiCropAugmentation(_crops_cfg(**kw), MEAN, STD), seed_pil)
    ten = MultiCropDataset(base, MultiCropAugmentation(_crops_cfg(backend="tensor", **kw), MEAN, STD), seed_tensor)
    return pil, ten


def test_tensor_backend_gives_the_pil_views_per_sample(one_thread):
    """Same seed: every view of every sample (2 global, 2 local) is PIL's up to its uint8 rounding
    (mean |difference| per view <= 3/255)."""
    pil, ten = _datasets(48, 0, 0)
    idx = list(range(48))
    for (a, la), (b, lb) in zip(pil.__getitems__(idx), ten.__getitems__(idx)):
        assert la == lb and [v.shape for v in a] == [v.shape for v in b]
        for va, vb in zip(a, b):
            assert float((va - vb).abs().mean()) * STD[0] <= 3 / 255   # measured <= 2.3/255


def test_output_statistics_match_an_independent_pil_sample(one_thread):
    """Per view kind and channel, the mean and std of the output pixels over 256 images, tensor
    backend (seed 1) against PIL (seed 2, independent draws): the difference of means is within 4
    standard errors (sd of the per-image means x sqrt(2 / n)), the std within 10 % (the per-image
    std's spread over n = 256 makes its standard error ~3 %)."""
    n = 256
    pil, ten = _datasets(n, 2, 1)
    idx = list(range(n))
    for kind, views in (("global", (0, 1)), ("local", (2, 3))):
        a = torch.stack([torch.stack([s[0][v] for v in views]) for s in pil.__getitems__(idx)])
        b = torch.stack([torch.stack([s[0][v] for v in views]) for s in ten.__getitems__(idx)])
        for c in range(3):
            ma, mb = a[:, :, c].mean((2, 3)).flatten(), b[:, :, c].mean((2, 3)).flatten()
            se = float(torch.cat([ma, mb]).std()) * math.sqrt(2 / len(ma))
            assert abs(float(ma.mean() - mb.mean())) <= 4 * se, (kind, c, float(ma.mean()), float(mb.mean()), se)
            sa, sb = float(a[:, :, c].std()), float(b[:, :, c].std())
            assert abs(sa / sb - 1) <= 0.10, (kind, c, sa, sb)


def test_draws_follow_the_official_ops_distributions():
    """Over n = 4,000 draws per view: each op's rate is its configured probability within 4 binomial
    standard errors (sqrt(p (1 - p) / n)), solarize only on global view 2, and the crop's area fraction
    and log aspect ratio follow torchvision's RandomResizedCrop.get_params (two-sample Kolmogorov-
    Smirnov distance below 1.95 sqrt(2 / n), its 0.1 % critical value)."""
    cfg, n = _crops_cfg(), 4000
    draws = [draw_views(random.Random(f"0/0/{i}"), cfg, SIZE, SIZE) for i in range(n)]
    probs = {"flip": [cfg.flip_prob] * 4, "jitter": [cfg.jitter_prob] * 4, "gray": [cfg.grayscale_prob] * 4,
             "blur": [cfg.blur_prob[0], cfg.blur_prob[1], cfg.blur_prob[2], cfg.blur_prob[2]],
             "solarize": [0.0, cfg.solarize_prob, 0.0, 0.0]}
    for op, ps in probs.items():
        for v, p in enumerate(ps):
            rate = sum(bool(getattr(d[v], op)) if op != "blur" else d[v].blur is not None for d in draws) / n
            assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12, (op, v, rate, p)
    torch.manual_seed(0)
    img = torch.zeros(3, SIZE, SIZE)
    for v, scale in ((0, cfg.global_scale), (2, cfg.local_scale)):
        ref = [T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
        ours = [d[v].box for d in draws]
        for stat in (lambda b: b[2] * b[3] / SIZE ** 2, lambda b: math.log(b[3] / b[2])):
            x, y = np.sort([stat(b) for b in ours]), np.sort([stat(b) for b in ref])
            grid = np.union1d(x, y)
            ks = np.abs(np.searchsorted(x, grid, "right") - np.searchsorted(y, grid, "right")).max() / n
            assert ks < 1.95 * math.sqrt(2 / n), (v, ks)


def test_tensor_views_depend_on_seed_epoch_and_index_only(one_thread):
    """A sample's views do not depend on the batch they are computed in (DDP ranks and resumed runs
    compute other batches), nor on the loader's path (DataLoader -> __getitems__ -> collate); the
    epoch changes them."""
    _, ten = _datasets(16, 0, 0)
    whole = ten.__getitems__(list(range(16)))
    parts = ten.__getitems__(list(range(8, 16)))[::-1] + ten.__getitems__(list(range(7, -1, -1)))
    for (a, _), (b, _) in zip(whole, parts[::-1]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(ten[5][0], whole[5][0]))
    loader = torch.utils.data.DataLoader(ten, batch_size=4, shuffle=False)
    crops, labels = next(iter(loader))
    assert [c.shape for c in crops] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2
    assert torch.equal(crops[0][3], whole[3][0][0]) and labels.tolist() == [0, 1, 2, 0]
    ten.set_epoch(1)
    assert not torch.equal(ten[5][0][0], whole[5][0][0])


def test_training_with_the_tensor_backend_resumes_bit_exactly(tmp_path, one_thread):
    """train() with crops.backend: tensor (DataLoader -> __getitems__): 2 epochs straight equal
    epoch 0, a stop, and a resumed epoch 1, to the bit."""
    from dino_core.train import train
    cfg = tiny_config(crops={"backend": "tensor"}, train={"epochs": 2})
    data = _Images(16)
    assert train(cfg, tmp_path / "straight", data, MEAN, STD)["status"] == "ok"
    assert train(cfg, tmp_path / "split", data, MEAN, STD, on_epoch_end=lambda e, s, r: e != 0)["status"] == "stopped"
    assert train(cfg, tmp_path / "split", data, MEAN, STD)["final_epoch"] == 1
    a, b = (torch.load(tmp_path / d / "checkpoint.pth", map_location="cpu", weights_only=False)["student"]
            for d in ("straight", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tensor_backend_refuses_rotation():
    with pytest.raises(ValueError, match="rotation"):
        _datasets(4, 0, 0, rotation=30.0)


def test_backend_key_keeps_stored_configs_and_cell_hashes():
    """crops.backend is a LATER_KEYS key at pil: a stored config without it reads as pil, and while it
    is pil the cell hash leaves it out (tests/test_config.py checks the committed grid's hashes)."""
    from pipelines import store
    base = tiny_config()
    stored = base.to_dict()
    del stored["crops"]["backend"]
    assert base.crops.backend == "pil" and Config.from_stored(stored, "old config.yaml") == base
    with pytest.raises(ValueError, match="backend"):
        Config.from_dict(stored, "params.yaml")
    assert store.cell_hash(base.replace("crops", backend="tensor")) != store.cell_hash(base)
