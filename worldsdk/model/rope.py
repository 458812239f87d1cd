"""3D rotary position embedding (Wan2.1): the head dim is split between time, height and width.

Positions are integers per token: (frame, row, column). Frames are positions inside the window the
model attends over, never beyond `ModelConfig.latent_frames_max` (the trained clip length).
"""

from __future__ import annotations

import torch

from worldsdk.config import ModelConfig


def _inv_freq(dim: int, theta: float) -> torch.Tensor:
    """Wan `rope_params`: 1 / theta^(2i / dim) for i < dim / 2."""
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


class Rope3D(torch.nn.Module):
    """Builds (cos, sin) tables for token positions; `apply_rope` rotates q or k with them."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.grid = config.grid
        dt, dh, dw = config.rope_split
        self.register_buffer("inv_t", _inv_freq(dt, config.rope_theta).float(), persistent=False)
        hs, ws = self.grid
        ang_h = torch.arange(hs, dtype=torch.float64)[:, None] * _inv_freq(dh, config.rope_theta)  # (h, dh/2)
        ang_w = torch.arange(ws, dtype=torch.float64)[:, None] * _inv_freq(dw, config.rope_theta)  # (w, dw/2)
        spatial = torch.cat(
            [ang_h[:, None, :].expand(hs, ws, -1), ang_w[None, :, :].expand(hs, ws, -1)], dim=-1
        ).reshape(hs * ws, -1)  # (T, (dh + dw) / 2)
        self.register_buffer("spatial", spatial.float(), persistent=False)

    def forward(self, frame_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frame_pos (B, F) ints -> cos, sin of shape (B, F * T, 1, head_dim / 2), float32."""
        b, f = frame_pos.shape
        t = self.spatial.shape[0]
        ang_t = frame_pos.float()[..., None] * self.inv_t  # (B, F, dt/2)
        ang = torch.cat(
            [ang_t[:, :, None, :].expand(b, f, t, -1), self.spatial[None, None].expand(b, f, -1, -1)], dim=-1
        )  # (B, F, T, D/2)
        ang = ang.reshape(b, f * t, 1, -1)
        return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate consecutive pairs (x0, x1) of x (B, L, H, D) by the angles of `rope` (complex multiply)."""
    cos, sin = rope
    xf = x.float().unflatten(-1, (-1, 2))  # (B, L, H, D/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)
