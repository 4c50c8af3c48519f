"""How far a step is from the hardware's limit: its FLOPs and the machine's matmul peak.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and
attention, forward and backward; elementwise work is not counted) over one training step: the
student's forward and backward, the teacher's forward, the loss. PyTorch's table has no entry for
the CPU kernel of scaled_dot_product_attention; it is added here with PyTorch's own attention
formulas, so that a step with SDPA on the CPU counts its attention as the explicit one does.

The peak is the best rate of a square matmul (default 2048 x 2048, 2 n^3 FLOPs) at the step's
precision, timed in the same process right after the step, under the same load.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
aten = torch.ops.aten


def _register_cpu_attention() -> None:
    fwd = aten._scaled_dot_product_flash_attention_for_cpu
    bwd = aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd in flop_counter.flop_registry:
        return

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    register_flop_formula(fwd)(forward)
    register_flop_formula(bwd)(backward)


_register_cpu_attention()


def count_flops(fn: Callable[[], object]) -> dict:
    """FLOPs of one call of ``fn``: the total and per operator (aten name -> FLOPs)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(op): int(n)
             for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "flops_by_op": by_op}


def matmul_peak(precision: str, device: torch.device, n: int = 2048, reps: int = 5) -> dict:
    """Best GFLOP/s of an n x n matmul at ``precision`` over ``reps`` timed calls (one untimed)."""
    dtype = DTYPES[precision]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    times = []
    for i in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    return {"precision": precision, "n": n, "gflop_per_s": 2 * n ** 3 / min(times) / 1e9,
            "median_gflop_per_s": 2 * n ** 3 / sorted(times)[len(times) // 2] / 1e9,
            "times_s": [round(t, 5) for t in times], "threads": torch.get_num_threads()}


def distance_to_peak(row: dict, peak: dict) -> dict:
    """The step's achieved GFLOP/s (FLOPs / median step time) and its share of the matmul peak; the
    same per second of process CPU time (``*_cpu``: on a shared machine, the time the cores were the
    step's; with one thread it compares with a single-threaded peak)."""
    achieved, per_cpu = row["flops"] / row["s_per_step"] / 1e9, row["flops"] / row["cpu_s_per_step"] / 1e9
    return {"gflop_per_step": row["flops"] / 1e9, "gflop_per_s": achieved,
            "peak_gflop_per_s": peak["gflop_per_s"], "pct_of_peak": 100 * achieved / peak["gflop_per_s"],
            "gflop_per_cpu_s": per_cpu, "pct_of_peak_cpu": 100 * per_cpu / peak["gflop_per_s"], "peak": peak}
