"""Per-step schedules (arrays indexed by the global iteration), as in the official code.

cosine_schedule(base, final, epochs, niter_per_ep, warmup_epochs, start_warmup):
    warm-up: linspace(start_warmup, base, warmup_epochs * niter_per_ep)
    then v_i = final + (base - final) / 2 * (1 + cos(pi * i / N)),  i = 0..N-1
The teacher temperature is per epoch: linear warm-up then constant.
"""
from __future__ import annotations

import numpy as np


def cosine_schedule(base: float, final: float, epochs: int, niter_per_ep: int,
                    warmup_epochs: int = 0, start_warmup: float = 0.0) -> np.ndarray:
    """Array of length epochs * niter_per_ep."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup, base, warmup_iters) if warmup_iters > 0 else np.array([])
    n = epochs * niter_per_ep - warmup_iters
    if n < 0:
        raise ValueError(f"warm-up ({warmup_epochs} epochs) is longer than training ({epochs} epochs)")
    iters = np.arange(n)
    main = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / n))
    return np.concatenate((warmup, main))


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Per-epoch tau_t: linspace(warmup_temp, temp, warmup_epochs), then temp (length epochs)."""
    warmup_epochs = min(warmup_epochs, epochs)
    return np.concatenate((np.linspace(warmup_temp, temp, warmup_epochs),
                           np.ones(epochs - warmup_epochs) * temp))


def lr_base(lr: float, batch_size_per_proc: int, world_size: int) -> float:
    """Linear scaling rule: lr * global_batch / 256."""
    return lr * batch_size_per_proc * world_size / 256.0
