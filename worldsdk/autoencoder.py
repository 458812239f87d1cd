"""Frame autoencoder for the tiny and small worlds: frames <-> a small latent grid.

Per-frame (no temporal compression), convolutional, downsampling by `2 ** num_down`. Latents are
normalised with per-channel statistics stored in the checkpoint (`latent_mean`, `latent_std`), so
the diffusion model always sees roughly unit-variance latents. The Wan VAE adapter, for the paper's
worlds, lives with the Wan import.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class AutoencoderConfig:
    image_channels: int = 3
    latent_channels: int = 8
    base_channels: int = 64
    num_down: int = 2  # spatial stride 2 ** num_down (4 for the default worlds)
    blocks_per_level: int = 1

    @property
    def stride(self) -> int:
        return 2**self.num_down

    @property
    def temporal_stride(self) -> int:
        return 1

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping) -> "AutoencoderConfig":
        return AutoencoderConfig(**d)


AUTOENCODER_PRESETS = {
    "tiny": AutoencoderConfig(latent_channels=4, base_channels=16, num_down=2),
    "small": AutoencoderConfig(latent_channels=8, base_channels=64, num_down=2),
}


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class FrameAutoencoder(nn.Module):
    """uint8 frames (N, H, W, 3) <-> normalised latents (N, C, H / s, W / s)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        c = config.base_channels
        enc: list[nn.Module] = [nn.Conv2d(config.image_channels, c, 3, padding=1)]
        for _ in range(config.num_down):
            enc += [ResBlock(c) for _ in range(config.blocks_per_level)]
            enc.append(nn.Conv2d(c, c, 4, stride=2, padding=1))
        enc += [ResBlock(c), nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, config.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(config.latent_channels, c, 3, padding=1), ResBlock(c)]
        for _ in range(config.num_down):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
            dec += [ResBlock(c) for _ in range(config.blocks_per_level)]
        dec += [nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, config.image_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_mean", torch.zeros(config.latent_channels))
        self.register_buffer("latent_std", torch.ones(config.latent_channels))

    # -- raw (unnormalised) maps used in training --------------------------------------------------
    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (N, 3, H, W) -> raw latents (N, C, h, w)."""
        return self.encoder(images)

    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents (N, C, h, w) -> images in about [-1, 1] (N, 3, H, W)."""
        return self.decoder(latents)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_raw(self.encode_raw(images))

    # -- the world's interface: uint8 frames <-> normalised latents ----------------------------------
    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised latents (N, C, h, w), float32."""
        images = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, 3, H, W)
        return self.normalize(self.encode_raw(images.to(self.latent_mean.device)))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents (N, C, h, w) -> uint8 (N, H, W, 3)."""
        images = self.decode_raw(self.denormalize(z.float()))
        return ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    @torch.no_grad()
    def set_latent_stats(self, raw_latents: torch.Tensor) -> None:
        """Store per-channel mean and std of raw latents (N, C, h, w) for normalisation."""
        self.latent_mean.copy_(raw_latents.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(raw_latents.std(dim=(0, 2, 3)).clamp_min(1e-4))
