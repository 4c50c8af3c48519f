"""train.compile: the same run, compiled in place (torch.compile of student and teacher).

Compiled kernels fuse elementwise work and may reorder sums, so the weights equal the eager run's
up to rounding: per coordinate within one peak AdamW step (lr x 2B / 256; AdamW moves every
coordinate by about lr per step whatever the gradient's size, so rounding can shift a coordinate by
at most about that much where a gradient sits near zero: the bound of tests/test_distributed.py).
"""
from __future__ import annotations

import torch
from helpers import MEAN, STD, random_images, tiny_config

from dino_core.config import Config
from dino_core.train import train
from pipelines.store import cell_hash


def test_a_compiled_run_trains_the_eager_run_and_saves_the_same_keys(tmp_path):
    data = [(img, 0) for img in random_images(16, size=16)]
    eager_cfg = tiny_config(train={"epochs": 1})
    compiled_cfg = tiny_config(train={"epochs": 1, "compile": True})
    m_eager = train(eager_cfg, tmp_path / "eager", data, MEAN, STD)
    m_comp = train(compiled_cfg, tmp_path / "compiled", data, MEAN, STD)
    assert m_eager["status"] == m_comp["status"] == "ok"
    a = torch.load(tmp_path / "eager" / "checkpoint.pth", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "compiled" / "checkpoint.pth", map_location="cpu", weights_only=False)
    bound = eager_cfg.optim.lr * eager_cfg.optim.batch_size / 256 * 2
    for key in ("student", "teacher"):
        assert a[key].keys() == b[key].keys()          # no torch.compile prefix in the checkpoint
        gap = max(float((a[key][k].float() - b[key][k].float()).abs().max()) for k in a[key])
        assert gap <= bound, (key, gap, bound)
    assert abs(m_eager["final_loss"] - m_comp["final_loss"]) <= 1e-3 * abs(m_eager["final_loss"])


def test_compile_off_keeps_every_stored_cell_hash():
    cfg = tiny_config()
    assert cfg.train.compile is False
    before = {s: dict(d) for s, d in cfg.to_dict().items()}
    before["train"].pop("compile")
    assert cell_hash(Config.from_stored(before, 'a config.yaml')) == cell_hash(cfg)      # a config written before the key
    assert cell_hash(cfg.replace("train", compile=True)) != cell_hash(cfg)
