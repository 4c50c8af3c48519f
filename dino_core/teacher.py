"""Teacher network and its update rules (Sec. 3.1, Fig. 6).

ema:                theta_t <- m theta_t + (1 - m) theta_s after every step, m on a cosine
                    schedule from `momentum` to 1 (over parameters, not buffers, as official)
student_copy:       m = 0, the teacher is the current student
previous_iteration: the teacher is the student of the previous iteration
previous_epoch:     the teacher is the student at the end of the previous epoch
"""
from __future__ import annotations

import torch
from torch import nn


class Teacher:
    """Holds matched (teacher, student) parameter lists; the predictor has no teacher twin."""

    def __init__(self, teacher: nn.Module, student: nn.Module, variant: str) -> None:
        self.variant = variant
        s_params = dict(student.named_parameters())
        names = [n for n, _ in teacher.named_parameters()]
        missing = [n for n in names if n not in s_params]
        if missing:
            raise ValueError(f"teacher parameters without a student twin: {missing[:5]}")
        self.t_params = [p for _, p in teacher.named_parameters()]
        self.s_params = [s_params[n] for n in names]
        for p in self.t_params:
            p.requires_grad = False
        self.copy()

    @torch.no_grad()
    def copy(self) -> None:
        """theta_t <- theta_s."""
        torch._foreach_copy_(self.t_params, [p.detach() for p in self.s_params])

    @torch.no_grad()
    def ema(self, m: float) -> None:
        """theta_t <- m theta_t + (1 - m) theta_s (foreach: one fused pass over all tensors)."""
        torch._foreach_mul_(self.t_params, m)
        torch._foreach_add_(self.t_params, [p.detach() for p in self.s_params], alpha=1.0 - m)

    def before_step(self) -> None:
        """Called before the optimiser step: keep theta_s(i) for the next iteration's teacher."""
        if self.variant == "previous_iteration":
            self.copy()

    def after_step(self, momentum: float) -> None:
        if self.variant == "ema":
            self.ema(momentum)
        elif self.variant == "student_copy":
            self.copy()

    def end_of_epoch(self) -> None:
        if self.variant == "previous_epoch":
            self.copy()
