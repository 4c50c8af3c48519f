"""The bench's distance to the hardware's limit: FLOPs counted against formulas, and the JSON fields.

Formulas: a matmul (m x k) @ (k x n) is 2 m k n FLOPs; its backward is two such products (the
gradients of both operands), 4 m k n, or one (2 m k n) where one operand needs no gradient.
"""
from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from dino_core.step import train_step
from helpers import tiny_config
from pipelines.bench import bench_data_step, count_flops, main, make_run, random_crops, table
from pipelines.bench.flops import matmul_peak

PEAK_FIELDS = ("flops", "gflop_per_step", "gflop_per_s", "peak_gflop_per_s", "pct_of_peak", "gflop_per_cpu_s",
               "pct_of_peak_cpu")


def test_linear_layer_forward_and_backward_is_three_matmuls(one_thread):
    m, k, n = 16, 64, 32
    layer = torch.nn.Linear(k, n)
    x = torch.randn(m, k, requires_grad=True)
    assert count_flops(lambda: layer(x).sum().backward())["flops"] == 3 * 2 * m * k * n
    frozen_input = torch.randn(m, k)   # no input gradient: forward + the weight's gradient only
    assert count_flops(lambda: layer(frozen_input).sum().backward())["flops"] == 2 * 2 * m * k * n


def _vit_forward(b: int, size: int, p: int, d: int, depth: int) -> tuple[int, int, int]:
    """FLOPs of a ViT forward whose last block computes the CLS token only: (all, of which the
    patch embedding, of which the attention's two products)."""
    patches = (size // p) ** 2
    t = patches + 1
    embed = 2 * b * patches * 3 * p * p * d
    attention = (depth - 1) * 2 * 2 * b * t * t * d + 2 * 2 * b * t * d
    block = b * t * (2 * d * 3 * d + 2 * d * d + 2 * 2 * d * 4 * d)
    last = b * (2 * d * d + 2 * t * d * 2 * d + 2 * d * d + 2 * 2 * d * 4 * d)
    return embed + attention + (depth - 1) * block + last, embed, attention


def test_training_step_flops_equal_the_vit_formula(one_thread):
    """One train_step of the tiny config (ViT d32/L2/patch 4, 2 x 16 px + 2 x 8 px crops, batch 8,
    head 32 -> 64 -> 64 -> 16 -> K 64): the student's forward and backward on all crops (backward =
    2 x forward, except the patch embedding, whose input needs no gradient: 1 x), the teacher's
    forward on the 2 global crops, and the loss's cross-entropy of every (teacher view, student view)
    pair, einsum("tbk,vbk->tv"): 2 x 2 V b K forward, the same again for the student's gradient;
    the optimiser has no matmuls. With SDPA the attention's backward counts 2.5 x its forward
    (PyTorch's formula for the fused kernel, which recomputes the scores) instead of 2 x."""
    for attn in ("explicit", "sdpa"):
        cfg = tiny_config(model={"attn_impl": attn})
        run = make_run(cfg)
        b, c, m, h = cfg.optim.batch_size, cfg.crops, cfg.model, cfg.head
        head = 2 * (m.embed_dim * h.hidden_dim + h.hidden_dim ** 2 + h.hidden_dim * h.bottleneck_dim
                    + h.bottleneck_dim * h.out_dim)
        glob, g_embed, g_attn = _vit_forward(2 * b, c.global_size, m.patch_size, m.embed_dim, m.depth)
        loc, l_embed, l_attn = _vit_forward(c.local_number * b, c.local_size, m.patch_size, m.embed_dim, m.depth)
        student = glob + loc + (2 + c.local_number) * b * head
        backward = 2 * (student - g_embed - l_embed) + g_embed + l_embed
        if attn == "sdpa":
            backward += (g_attn + l_attn) // 2
        teacher = glob + 2 * b * head
        loss = 2 * (2 * 2 * (2 + c.local_number) * b * h.out_dim)
        crops = random_crops(cfg, run.device)
        counted = count_flops(lambda: train_step(run, crops, 0, 0))
        assert counted["flops"] == student + backward + teacher + loss, (attn, counted)


def test_matmul_peak_reports_a_rate(one_thread):
    peak = matmul_peak("fp32", torch.device("cpu"), n=64, reps=2)
    assert peak["gflop_per_s"] > 0 and peak["n"] == 64 and len(peak["times_s"]) == 2


def test_bench_json_carries_flops_and_distance_to_peak(tmp_path, one_thread):
    out = tmp_path / "bench.json"
    main(["--configs", "tiny", "--steps", "1", "--warmup", "0", "--no-knn", "--no-data", "--no-isolate",
          "--peak-n", "64", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["train_step"]}
    assert set(rows) == {"ours", "official-style"}
    for r in rows.values():
        assert all(isinstance(r[f], (int, float)) and r[f] > 0 for f in PEAK_FIELDS), r
        assert abs(r["gflop_per_s"] - r["flops"] / r["s_per_step"] / 1e9) < 1e-9 * r["gflop_per_s"] + 1e-12
        assert abs(r["pct_of_peak"] - 100 * r["gflop_per_s"] / r["peak_gflop_per_s"]) < 1e-6
        assert r["peak"]["precision"] == r["precision"] and sum(r["flops_by_op"].values()) == r["flops"]
    assert "%peak" in table(result)


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_data_step_reports_each_backends_share_of_the_step(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("t10k", 8)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    cfg = tiny_config(data={"dataset": "fashion_mnist", "root": str(tmp_path), "num_train": 32})
    rows = bench_data_step(cfg, 1, 2)
    assert [r["backend"] for r in rows] == ["pil", "tensor"]
    for r in rows:
        assert 0 < r["data_fraction"] < 1 and 0 < r["data_cpu_fraction"] < 1 and len(r["data_times_s"]) == 2
        assert abs(r["data_fraction"] - r["data_s_per_step"] / (r["data_s_per_step"] + r["train_step_s"])) < 1e-9


def test_paired_alternates_the_variants_and_reports_each_ratio(one_thread):
    from pipelines.bench import bench_paired
    got = bench_paired(tiny_config(), warmup=1, steps=2)
    assert got["precision"] == "fp32" and got["official_precision"] == "fp32"
    assert len(got["ratios"]) == len(got["ours_times_s"]) == len(got["official_times_s"]) == 2
    assert all(r > 0 for r in got["ratios"])
    assert got["ratio_median"] == pytest.approx(sum(got["ratios"]) / 2, abs=1e-4)   # the median of two
    assert "compiled_s_per_step" not in got       # the compiled variant only when asked for
