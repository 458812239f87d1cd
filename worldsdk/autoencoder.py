"""Frame autoencoder for the tiny and small worlds: frames <-> a small latent grid.

Per-frame (no temporal compression) and convolutional. The encoder folds `patch_size` x
`patch_size` pixel blocks into channels (space-to-depth), then downsamples `num_down` times by 2,
so the spatial stride is `patch_size * 2 ** num_down`; the decoder mirrors it and unfolds the last
layer's channels back into pixels (depth-to-space). Folding first keeps every convolution at low
resolution, which is what makes the small preset train on a CPU, and a depth-to-space output can
still place a single pixel (a 1-2 pixel Atari ball) exactly.

Latents are normalised with per-channel statistics stored in the checkpoint (`latent_mean`,
`latent_std`), so the diffusion model always sees roughly unit-variance latents. A World sees it through
`worldsdk.codec.FrameCodec`; the Wan VAE, for the paper's worlds, lives with the Wan import.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

AUTOENCODER_FORMAT = "worldsdk-autoencoder"


@dataclass(frozen=True)
class AutoencoderConfig:
    image_channels: int = 3
    latent_channels: int = 8
    base_channels: int = 64
    num_down: int = 2  # stride-2 downsamplings after the space-to-depth fold
    blocks_per_level: int = 1  # residual blocks at each resolution level
    patch_size: int = 1  # space-to-depth fold of the input (and depth-to-space of the output)
    channel_mult: tuple[int, ...] = ()  # channels of level i = base_channels * channel_mult[i]; () = all base_channels
    mid_blocks: int = 1  # residual blocks at the latent resolution, in the encoder and in the decoder

    def __post_init__(self):
        if self.channel_mult and len(self.channel_mult) != self.num_down + 1:
            raise ValueError(f"channel_mult needs num_down + 1 = {self.num_down + 1} entries, got {self.channel_mult}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")

    @property
    def stride(self) -> int:
        return self.patch_size * 2**self.num_down

    @property
    def temporal_stride(self) -> int:
        return 1

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels at each resolution level, from the folded input (0) to the latent grid (num_down)."""
        mult = self.channel_mult or (1,) * (self.num_down + 1)
        return tuple(self.base_channels * m for m in mult)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @staticmethod
    def from_dict(d: Mapping) -> "AutoencoderConfig":
        names = {f.name for f in fields(AutoencoderConfig)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown AutoencoderConfig fields {sorted(unknown)}")
        d = dict(d)
        if "channel_mult" in d:
            d["channel_mult"] = tuple(d["channel_mult"])
        return AutoencoderConfig(**d)


AUTOENCODER_PRESETS = {
    # 32x32 frames -> 8x8x4 latents.
    "tiny": AutoencoderConfig(latent_channels=4, base_channels=16, num_down=0, patch_size=4, mid_blocks=1),
    # 64x64 frames -> 16x16x8 latents: fold 4x4 pixels, three residual blocks of 64 channels at 16x16 each
    # side. On a 2-core CPU it beat folding 2x2 + one downsampling (64/128 channels), folding 4x4 with
    # 128 channels and the unfolded 64-channel stride-4 network at equal CPU time (docs/training.md).
    "small": AutoencoderConfig(latent_channels=8, base_channels=64, num_down=0, patch_size=4, mid_blocks=3),
}
AUTOENCODER_PRESETS["small-ctx"] = AUTOENCODER_PRESETS["small"]  # the same frames, the same autoencoder


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
    """uint8 frames (N, H, W, 3) <-> normalised latents (N, C, H / stride, W / stride)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        ch = config.level_channels
        folded = config.image_channels * config.patch_size**2
        enc: list[nn.Module] = [nn.PixelUnshuffle(config.patch_size), nn.Conv2d(folded, ch[0], 3, padding=1)]
        for level in range(config.num_down):
            enc += [ResBlock(ch[level]) for _ in range(config.blocks_per_level)]
            enc.append(nn.Conv2d(ch[level], ch[level + 1], 4, stride=2, padding=1))
        enc += [ResBlock(ch[-1]) for _ in range(config.mid_blocks)]
        enc += [nn.GroupNorm(min(8, ch[-1]), ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], config.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(config.latent_channels, ch[-1], 3, padding=1)]
        dec += [ResBlock(ch[-1]) for _ in range(config.mid_blocks)]
        for level in reversed(range(config.num_down)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[level + 1], ch[level], 3, padding=1)]
            dec += [ResBlock(ch[level]) for _ in range(config.blocks_per_level)]
        dec += [nn.GroupNorm(min(8, ch[0]), ch[0]), nn.SiLU(), nn.Conv2d(ch[0], folded, 3, padding=1), nn.PixelShuffle(config.patch_size)]
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
        images = to_images(frames.to(self.latent_mean.device))  # (N, 3, H, W)
        return self.normalize(self.encode_raw(images).float())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents (N, C, h, w) -> uint8 (N, H, W, 3)."""
        return to_frames(self.decode_raw(self.denormalize(z.float())))

    @torch.no_grad()
    def set_latent_stats(self, raw_latents: torch.Tensor) -> None:
        """Store per-channel mean and std of raw latents (N, C, h, w) for normalisation."""
        self.latent_mean.copy_(raw_latents.float().mean(dim=(0, 2, 3)))
        self.latent_std.copy_(raw_latents.float().std(dim=(0, 2, 3)).clamp_min(1e-4))


# ----------------------------------------------------------------------------------------------
# Files: safetensors + the JSON config (read by the world and the latent cache)
# ----------------------------------------------------------------------------------------------


def save_autoencoder(path: str | Path, autoencoder: FrameAutoencoder, extra: Mapping | None = None) -> Path:
    """Write weights and latent statistics with the config (and JSON `extra`, e.g. metrics) atomically."""
    from worldsdk.checkpoint import atomic_save

    meta = {"format": AUTOENCODER_FORMAT, "version": 1, "autoencoder_config": autoencoder.config.to_dict(), "extra": dict(extra or {})}
    return atomic_save(autoencoder.state_dict(), meta, path)


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> FrameAutoencoder:
    """Rebuild a `FrameAutoencoder` from a file written by `save_autoencoder` (no code runs from the file)."""
    from worldsdk.checkpoint import CheckpointError, load_state, read

    tensors, meta = read(path, expected_format=AUTOENCODER_FORMAT)
    try:
        config = AutoencoderConfig.from_dict(meta["autoencoder_config"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: bad autoencoder config in metadata: {err}") from err
    autoencoder = FrameAutoencoder(config)
    load_state(autoencoder, tensors, path, "autoencoder")
    return autoencoder.to(device).eval()


# ----------------------------------------------------------------------------------------------
# Losses and metrics (pure functions)
# ----------------------------------------------------------------------------------------------


def to_images(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) -> float images in [-1, 1] (N, 3, H, W)."""
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_frames(images: torch.Tensor) -> torch.Tensor:
    """Float images in about [-1, 1] (N, 3, H, W) -> uint8 frames (N, H, W, 3)."""
    return ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def background_colour(frames: torch.Tensor) -> torch.Tensor:
    """The most frequent colour of each uint8 frame (N, H, W, 3) -> (N, 3) uint8."""
    rgb = frames.reshape(frames.shape[0], -1, 3).long()
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # (N, H * W)
    mode = codes.mode(dim=1).values
    return torch.stack([(mode >> 16) & 255, (mode >> 8) & 255, mode & 255], dim=1).to(torch.uint8)


def foreground_mask(frames: torch.Tensor, tolerance: int = 8, dilate: int = 1) -> torch.Tensor:
    """Pixels that differ from their frame's background colour, grown by `dilate` pixels.

    uint8 frames (N, H, W, 3) -> bool (N, 1, H, W). In Atari games the background is one flat colour,
    so this marks the paddles, the bricks, the score and the 1-2 pixel ball.
    """
    mask = (background_contrast(frames) * 127.5 > tolerance).float()[:, None]  # (N, 1, H, W)
    if dilate > 0:
        mask = F.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate)
    return mask > 0


def weighted_reconstruction_loss(
    recon: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, l1: float = 1.0, mse: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """l1 * weighted L1 + mse * weighted MSE of images (N, 3, H, W), weights (N, 1, H, W) (mean-normalised)."""
    w = weights / weights.mean()
    err = recon.float() - target.float()
    l1_term = (err.abs() * w).mean()
    mse_term = (err.square() * w).mean()
    return l1 * l1_term + mse * mse_term, {"l1": l1_term.detach(), "mse": mse_term.detach()}


def hard_pixel_loss(recon: torch.Tensor, target: torch.Tensor, k: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of each image's `k` largest per-pixel L1 errors (summed over channels), images (N, 3, H, W).

    Hard-pixel mining: once flat areas are learned, the worst pixels of an Atari frame are the
    1-2 pixel ball and the edges around it, which a mean over 4096 pixels barely sees. With `scale`
    (N, H, W), errors are multiplied by it first (e.g. 1 / contrast on the foreground and 0 elsewhere).
    """
    err = (recon.float() - target.float()).abs().sum(dim=1)  # (N, H, W)
    if scale is not None:
        err = err * scale
    err = err.flatten(1)
    return err.topk(min(k, err.shape[1]), dim=1).values.mean()


def background_contrast(frames: torch.Tensor) -> torch.Tensor:
    """Largest channel difference of each pixel from its frame's background colour, uint8 (N, H, W, 3)
    -> (N, H, W) in image units (uint8 difference / 127.5, as between images in [-1, 1])."""
    diff = (frames.short() - background_colour(frames).short()[:, None, None, :]).abs().amax(dim=-1)
    return diff.float() / 127.5


def psnr(real: torch.Tensor, recon: torch.Tensor) -> float:
    """PSNR in dB of uint8 frames over the whole set: 10 log10(255^2 / mean squared error)."""
    mse = (real.double() - recon.double()).square().mean().item()
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
