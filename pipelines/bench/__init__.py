"""Performance benchmark: the DINO training step, the k-NN evaluation and the multi-crop data pipeline.

    python -m pipelines.bench                                   # cpu-toy, fp32, k-NN 5k x 100k, data
    python -m pipelines.bench --configs cpu-toy --precisions fp32,bf16 --steps 5
    python -m pipelines.bench --configs vit-s16 --precisions bf16 --compile     # on a GPU
    python -m pipelines.bench --knn-full                        # k-NN 50,000 x 1,000,000 (dim 384)
    python -m pipelines.bench --configs tiny --steps 2 --no-knn --no-data      # smoke test
    python -m pipelines.bench --configs cell,cpu-toy --precisions fp32,bf16 --no-knn   # distance to peak

Training step: the full step of ``dino_core.step.train_step`` (teacher forward on the 2 global crops,
student forward/backward on all crops, DINO loss, per-parameter clipping, fused AdamW, foreach EMA)
on random crop tensors, the Run built by ``dino_core.train.setup`` from params.yaml merged with the
config's diff. Warm-up steps are excluded; the figure is the median of ``--steps`` steps.

"official-style": the same step written the way the official DINO code writes it (its ViT with
explicit attention and dropout layers, weight-normed head, python-loop loss over view pairs, per-
parameter clipping with ``.item()``, for-loop AdamW, python-loop EMA, ``loss.item()`` per step;
fp16 autocast with a GradScaler on GPU, fp32 on CPU), started from the same weights: the ratio
official / ours is the speed-up at equal work.

Distance to the limit (flops.py): each step's FLOPs counted by FlopCounterMode over one step (student
forward + backward, teacher forward, loss), achieved GFLOP/s = FLOPs / median step time, and its
percentage of the best 2048 x 2048 matmul rate at the step's precision, timed in the same process
right after the step (``--peak-n``). Config ``cell`` is params.yaml as it stands: a learning-budget
cell. The data step (``data_step`` in the JSON, skipped by ``--no-data``): the cell's real loader and
step for each ``crops.backend``, alternated step by step in one process, and the data path's share
of data + step in wall and process-CPU time (``--data-warmup``, ``--data-steps``, ``--data-threads``).

Peak memory: CUDA ``max_memory_allocated`` above the allocation before the timed code; CPU the
process peak RSS (VmHWM, reset through /proc/self/clear_refs) minus the RSS before it.

Writes JSON atomically (``--out``, default results/bench.json) and logs a table.

Modules: configs, environment, measuring, flops, step, train_steps (real data: the cost stage and the
data step), shared (one of N cells training at once: pipelines/launch/sharing.py), official_model,
official_step, knn, data, table, cli.
"""
from __future__ import annotations

from .configs import CONFIGS, REPO, build_config
from .step import bench_step, make_run, random_crops
from .train_steps import bench_data_step, bench_train_steps
from .flops import count_flops, matmul_peak
from .official_step import OfficialStep, bench_official, bench_paired
from .knn import bench_knn
from .data import bench_data
from .cli import main, measure
from .table import table

__all__ = ["CONFIGS", "OfficialStep", "REPO", "bench_data", "bench_data_step", "bench_knn", "bench_official",
           "bench_paired", "bench_step", "bench_train_steps", "build_config", "count_flops", "main", "make_run",
           "matmul_peak", "measure", "random_crops", "table"]
