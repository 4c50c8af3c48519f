"""The chunked weighted k-NN at ImageNet scale on random features (time and peak memory)."""
from __future__ import annotations

import time
from typing import Sequence

import torch

from dino_core.device import resolve_device
from .environment import loadavg
from .measuring import PeakMemory, sync


def bench_knn(n_query: int, n_train: int, dim: int = 384, num_classes: int = 1000,
              ks: Sequence[int] = (10, 20, 100, 200), device: str = "auto", seed: int = 0) -> dict:
    """knn_classify of random (n_query, dim) queries against random (n_train, dim) train features."""
    from dino_core.evaluate.knn import knn_chunk_size, knn_classify, knn_memory_bytes
    dev = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(n_train, dim, generator=g).to(dev)
    train_y = torch.randint(0, num_classes, (n_train,), generator=g).to(dev)
    query = torch.randn(n_query, dim, generator=g).to(dev)
    query_y = torch.randint(0, num_classes, (n_query,), generator=g).to(dev)
    la0 = loadavg()
    with PeakMemory(dev) as mem:
        t0 = time.perf_counter()
        acc = knn_classify(train, train_y, query, query_y, ks=tuple(ks), num_classes=num_classes)
        sync(dev)
        dt = time.perf_counter() - t0
    inputs_mb = (train.numel() * 4 + train_y.numel() * 8 + query.numel() * 4 + query_y.numel() * 8) / 2**20
    return {"n_query": n_query, "n_train": n_train, "dim": dim, "ks": list(ks), "num_classes": num_classes,
            "device": str(dev), "time_s": dt, "queries_per_s": n_query / dt,
            "gflop_similarity": 2 * n_query * n_train * dim / 1e9, "gflops": 2 * n_query * n_train * dim / dt / 1e9,
            "chunk_queries": knn_chunk_size(n_train), "peak_mem_mb": mem.peak_mb, "inputs_mb": inputs_mb,
            "process_mem_mb": mem.total_mb, "mem_method": mem.method,
            "bound_mb": knn_memory_bytes(n_train, dim, n_query, max(ks), num_classes) / 2**20,
            "top1_random": acc[f"knn{min(ks)}_top1"], "loadavg": [la0, loadavg()]}
