"""Exponential moving average of a module's weights (Self Forcing keeps one of the generator)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    """An fp32 copy of `module` updated as ema <- decay * ema + (1 - decay) * weights.

    Before `start_step` the copy tracks the weights exactly. Buffers (e.g. normalisation
    statistics) are copied, not averaged.
    """

    def __init__(self, module: nn.Module, decay: float, start_step: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.start_step = start_step
        self.module = copy.deepcopy(module).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = self.decay if step >= self.start_step else 0.0
        for ema_p, p in zip(self.module.parameters(), module.parameters()):
            if decay == 0.0:
                ema_p.copy_(p)
            else:
                ema_p.lerp_(p.detach().float(), 1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), module.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
