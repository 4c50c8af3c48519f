"""The attention study (Fig. 4): the supervised and random-init references, their cells, the per-head
attention figure and the `attention` effect's verdict."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import PARAMS, tiny_config
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dino_core.checkpoint import CHECKPOINT
from dino_core.config import Config, merge
from dino_core.evaluate.features import knn_and_linear_features
from dino_core.evaluate.knn import knn_classify
from dino_core.networks import build_network
from dino_core.train import train
from pipelines.params import grid_cells, load_all, resolve_profile
from pipelines.protocol import load_protocol
from pipelines.store import cell_hash

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# the augmentations that would hide low-contrast stripes are off: the problem stays learnable in 80 steps
PLAIN_CROPS = {"global_scale": [0.8, 1.0], "jitter_prob": 0.0, "grayscale_prob": 0.0, "solarize_prob": 0.0,
               "blur_prob": [0.0, 0.0, 0.0]}


class Stripes(Dataset):
    """Horizontal vs vertical low-contrast stripes under a large random colour: the colour dominates
    random-init features (k-NN near chance), the orientation is the class."""
    classes = ["horizontal", "vertical"]

    def __init__(self, n: int, seed: int) -> None:
        rng, s = np.random.default_rng(seed), ((np.arange(16) // 2) % 2).astype(float)
        self.items = []
        for i in range(n):
            pattern = np.tile(s[:, None], (1, 16)) if i % 2 == 0 else np.tile(s[None, :], (16, 1))
            img = rng.uniform(0, 230, 3)[None, None] + 15 * pattern[..., None] + rng.normal(0, 8, (16, 16, 3))
            self.items.append((Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), i % 2))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class AsTensors(Dataset):
    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base[i]
        t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
        return (t - 0.5) / 0.25, label


def knn5(backbone: torch.nn.Module, bank: Dataset, queries: Dataset) -> float:
    (a, _, ya), (b, _, yb) = (knn_and_linear_features(backbone, DataLoader(AsTensors(d), batch_size=64))
                              for d in (bank, queries))
    return knn_classify(a, ya, b, yb, ks=(5,), T=0.07)["knn5_top1"]


def teacher_backbone(cfg: Config, run) -> torch.nn.Module:
    net = build_network(cfg, False)
    net.load_state_dict(torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)["teacher"])
    return net.backbone


def test_supervised_objective_learns_what_random_init_does_not(tmp_path, one_thread):
    cfg = tiny_config(train={"objective": "supervised", "epochs": 20}, optim={"lr": 0.02}, crops=PLAIN_CROPS)
    bank, queries = Stripes(64, 0), Stripes(64, 1)
    torch.manual_seed(cfg.train.seed)
    before = knn5(build_network(cfg, False).backbone, bank, queries)
    metrics = train(cfg, tmp_path / "run", bank, MEAN, STD)
    after = knn5(teacher_backbone(cfg, tmp_path / "run"), bank, queries)
    assert before < 70.0 and after > before + 20.0, (before, after)
    # a DINO run's files: config, one log line per epoch, metrics, a checkpoint with the classifier
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in log] == list(range(20)) and log[-1]["train_top1"] > 70.0
    assert metrics["status"] == "ok" and metrics["steps"] == 20 * 8 and (tmp_path / "run" / "config.yaml").is_file()
    assert "classifier" in torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    assert train(cfg, tmp_path / "run", bank, MEAN, STD) == metrics   # finished: kept, not re-trained


def test_objective_none_keeps_the_seeded_initialisation(tmp_path, one_thread):
    cfg = tiny_config(train={"objective": "none", "seed": 3})
    metrics = train(cfg, tmp_path / "run", Stripes(16, 0), MEAN, STD)
    torch.manual_seed(3)
    init = build_network(cfg, True).backbone.state_dict()
    saved = teacher_backbone(cfg, tmp_path / "run").state_dict()
    assert all(torch.equal(init[k], saved[k]) for k in init)
    assert metrics["status"] == "ok" and metrics["steps"] == 0
    assert (tmp_path / "run" / "log.jsonl").read_text() == ""
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["epoch"] == cfg.train.epochs


def attention_cells(profile: str) -> dict:
    params = load_all(PARAMS)
    params["profile"], params["grid"]["studies"] = profile, ["attention", "fig6_teacher"]
    return {(c.study, c.row, c.seed): cell_hash(Config.from_dict(c.params)) for c in grid_cells(params)}


@pytest.mark.parametrize("profile, seeds", [("tiny", [0]), ("shapes", load_protocol()["seeds"]["base"])])
def test_attention_study_cells_differ_by_objective_and_dino_is_the_dino_cell(profile, seeds):
    cells = attention_cells(profile)
    rows = {"dino", "supervised", "random_init"}
    assert {(r, s) for (st, r, s) in cells if st == "attention"} == {(r, s) for r in rows for s in seeds}
    for s in seeds:
        assert len({cells[("attention", r, s)] for r in rows}) == 3
    # the DINO row is the profile's own DINO cell at patch 4 (tiny is at patch 4: fig6's momentum row)
    params = {**load_all(PARAMS), "profile": profile}
    for s in seeds:
        own = merge(resolve_profile(params), {"model": {"patch_size": 4}, "train": {"seed": s}})
        assert cells[("attention", "dino", s)] == cell_hash(Config.from_dict(own))
        if profile == "tiny":
            assert cells[("attention", "dino", s)] == cells[("fig6_teacher", "momentum", s)]
    # a config stored before train.objective existed reads as DINO and keeps its cell
    cfg = Config.from_dict(grid_cells({**load_all(PARAMS), "profile": profile})[0].params)
    stored = cfg.to_dict()
    del stored["train"]["objective"]
    assert Config.from_stored(stored, "old config.yaml") == cfg
    assert cell_hash(cfg.replace("train", objective="none")) != cell_hash(cfg)


def write_maps(path, heads: int, seed: int) -> None:
    """A cell's attention_maps.json (pipelines.cell.save_attention_maps) for 2 report items
    (image, label, object mask) of 16 px at patch 4."""
    from pipelines.cell import save_attention_maps
    torch.manual_seed(seed)
    cfg = tiny_config(model={"num_heads": heads})
    backbone = build_network(cfg, False).backbone
    g = torch.Generator().manual_seed(seed)
    report = [(torch.randn(3, 16, 16, generator=g), 0, torch.rand(16, 16, generator=g) > 0.5) for _ in range(2)]
    save_attention_maps(backbone, report, 0.6, (MEAN, STD), [10.0 * h for h in range(heads)], path)


def test_attention_figure_renders_from_saved_maps_byte_stable(tmp_path, one_thread):
    from pipelines.report.figures import figure_specs
    from pipelines.report.render import render_png, uint8_array
    from pipelines.report.stage import load_extras, load_studies
    maps = tmp_path / "attention" / "maps"
    maps.mkdir(parents=True)
    for i, row in enumerate(("dino", "supervised", "random_init")):
        write_maps(maps / f"attention__{row}.json", 2, i)
    saved = json.loads((maps / "attention__dino.json").read_text())
    assert np.asarray(saved["attention"]).shape == (2, 2, 4, 4) and uint8_array(saved["images"]).shape == (2, 16, 16, 3)
    objects = uint8_array(saved["objects"])
    assert objects.shape == (2, 16, 16) and set(np.unique(objects)) == {0, 1}
    assert np.allclose(np.asarray(saved["attention"]).sum(axis=(-2, -1)), 1.0, atol=1e-3)
    study = next(s for s in load_studies(PARAMS.parent / "ablations") if s["study"] == "attention")
    specs = [f for f in figure_specs([study], pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), load_extras(tmp_path))
             if f.kind == "attention_maps"]
    assert len(specs) == 1 and list(specs[0].data["row"]) == ["dino", "supervised", "random_init"]
    png = render_png(specs[0], tmp_path)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and render_png(specs[0], tmp_path) == png


def crafted(means: dict[str, float]) -> pd.DataFrame:
    spread = (-1.0, 0.0, 1.0)
    return pd.DataFrame([{"study": "attention", "row": r, "seed": s, "ok": True, "jaccard_best_head": m + spread[s]}
                         for r, m in means.items() for s in range(3)])


@pytest.mark.parametrize("means, verdict", [
    ({"dino": 45.0, "supervised": 30.0, "random_init": 20.0}, "reproduced"),
    ({"dino": 45.0, "supervised": 46.0, "random_init": 20.0}, "not reproduced"),   # supervised as good
    ({"dino": 45.0, "supervised": 30.0, "random_init": 31.0}, "not reproduced"),   # no gain over init
])
def test_attention_effect_verdict_on_a_three_seed_table(means, verdict):
    from pipelines.params import load_study
    from pipelines.report.effects import effect_results
    protocol = load_protocol()
    spec = next(e for e in protocol["effects"] if e["test"] == "attention")
    r = effect_results({**protocol, "effects": [spec]}, crafted(means), {"attention": load_study("attention")}, None)[0]
    assert (r.n, r.n_target, r.verdict) == (3, 3, verdict), r.detail


def test_a_random_init_cell_evaluates_its_attention_and_the_evaluate_stage_collects_its_maps(tmp_path, one_thread):
    from dino_core.data.shapes import prepare_shapes
    from pipelines.cell import ATTENTION_MAPS, run_cell
    from pipelines.evaluate import copy_attention_maps
    prepare_shapes(tmp_path / "shapes", num_train=64, num_val=32, image_size=16)
    params = merge(resolve_profile({**load_all(PARAMS), "profile": "tiny"}),
                   {"data": {"root": str(tmp_path / "shapes")}, "train": {"objective": "none"}})
    cell = tmp_path / "store" / "cells" / "c0"
    summary = run_cell(str(cell), params)
    assert summary["status"] == "ok" and 0.0 <= summary["jaccard_best_head"] <= 100.0
    assert not (cell / "collapse.json").exists()   # no DINO head was trained: no targets to judge
    maps = json.loads((cell / ATTENTION_MAPS).read_text())
    assert np.asarray(maps["attention"]).shape == (3, 2, 4, 4) and maps["jaccard_per_head"] == \
        json.loads((cell / "eval.json").read_text())["jaccard_per_head"]
    table = pd.DataFrame([{"study": "attention", "row": "random_init", "seed": 0, "cell": "c0"},
                          {"study": "fig6_teacher", "row": "momentum", "seed": 0, "cell": "c0"}])
    copy_attention_maps(table, tmp_path / "store", tmp_path / "maps")
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["attention__random_init.json"]
