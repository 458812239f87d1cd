"""The Wan2.1 causal video VAE (diffusers `AutoencoderKLWan`) as a World codec, decoded chunk by chunk.

Wan's decoder is causal in time: it decodes one latent frame at a time and every causal conv keeps
the last two frames it saw (`feat_cache`). diffusers keeps that cache on the model (`_feat_map`,
reset by `clear_cache`); here it lives in a `WanDecoderState` per session, so many sessions share one
VAE and each step decodes only the new chunk. Decoding a sequence chunk by chunk gives exactly the
frames of decoding it whole.

Frame counts: latent frame 0 decodes to 1 frame, every later one to 4 (stride 4), so a first chunk of
3 latents gives 9 frames and later chunks 12. A world step must always return `F * temporal_stride`
frames, so the first chunk is padded at its start with 3 copies of its first frame (a short hold).
`encode_video` is the inverse: it drops the first 3 of `4 F` frames and encodes the remaining
`1 + 4 (F - 1)` frames to F latents.

Latents are normalised per channel with the VAE's `latents_mean` / `latents_std` (Wan's
`WanVAEWrapper`): z = (mu - mean) / std.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn


@dataclass(frozen=True)
class WanVAEConfig:
    """What a World reads from its codec: latent channels and strides."""

    latent_channels: int = 16
    stride: int = 8  # spatial
    temporal_stride: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class WanDecoderState:
    """One session's causal decoder cache: per causal conv, None (not run yet), "Rep" (Wan's marker
    for an upsampler that has seen only the first frame) or its last input frames (1, C, <= 2, h, w).

    Tensors are replaced, never written in place, so `copy()` is a shallow copy.
    """

    feat_map: list
    frames: int = 0  # latent frames decoded so far

    def copy(self) -> "WanDecoderState":
        return WanDecoderState(list(self.feat_map), self.frames)

    def signature(self) -> tuple:
        """Sessions with equal signatures can be decoded in one batch."""
        return (self.frames == 0, tuple(e if e is None or isinstance(e, str) else tuple(e.shape[1:]) for e in self.feat_map))


class WanVAE(nn.Module):
    """uint8 video <-> normalised latents (B, C, F, h, w) through a diffusers AutoencoderKLWan."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        cfg = vae.config
        if getattr(cfg, "patch_size", None) is not None or getattr(cfg, "is_residual", False):
            raise ValueError("only the Wan2.1 VAE (no patch_size, not residual) is supported")
        self.vae = vae
        temporal = 2 ** sum(bool(d) for d in cfg.temperal_downsample)
        spatial = 2 ** (len(cfg.dim_mult) - 1)
        self.config = WanVAEConfig(latent_channels=cfg.z_dim, stride=spatial, temporal_stride=temporal)
        self.register_buffer("latents_mean", torch.tensor(cfg.latents_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("latents_std", torch.tensor(cfg.latents_std, dtype=torch.float32), persistent=False)
        self._conv_count = sum(type(m).__name__ == "WanCausalConv3d" for m in vae.decoder.modules())
        self._has_first_chunk = "first_chunk" in inspect.signature(vae.decoder.forward).parameters

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "WanVAE":
        """Open a diffusers AutoencoderKLWan folder (config.json + weights) from a local path."""
        from diffusers import AutoencoderKLWan

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a diffusers AutoencoderKLWan folder (no config.json)")
        return cls(AutoencoderKLWan.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)).eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.post_quant_conv.weight.dtype

    # -- normalisation ------------------------------------------------------------------------------
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        return self.latents_mean.view(shape).to(like), self.latents_std.view(shape).to(like)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(raw)
        return (raw - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return z * std + mean

    # -- decoding --------------------------------------------------------------------------------------
    def decoder_state(self) -> WanDecoderState:
        """A fresh per-session decoder state."""
        return WanDecoderState([None] * self._conv_count)

    @torch.no_grad()
    def decode_frames(self, latents: torch.Tensor, states: Sequence[WanDecoderState]) -> list[torch.Tensor]:
        """Normalised latents (B, C, F, h, w) -> per session images in [-1, 1] (3, f, H, W), advancing `states`.

        f = 1 + 4 (F - 1) for a session's first chunk, 4 F afterwards. Sessions whose caches have the
        same structure are decoded together in one batch.
        """
        if len(states) != latents.shape[0]:
            raise ValueError(f"{latents.shape[0]} latent sequences but {len(states)} decoder states")
        x = self.vae.post_quant_conv(self.denormalize(latents.float()).to(self.dtype))  # a 1x1x1 conv: no time cache
        out: list[torch.Tensor | None] = [None] * len(states)
        groups: dict[tuple, list[int]] = {}
        for b, state in enumerate(states):
            groups.setdefault(state.signature(), []).append(b)
        for members in groups.values():
            images = self._decode_group(x[members], [states[b] for b in members])
            for i, b in enumerate(members):
                out[b] = images[i]
        return out  # type: ignore[return-value]

    def _decode_group(self, x: torch.Tensor, states: list[WanDecoderState]) -> torch.Tensor:
        """Decode one batch of sessions whose caches share a structure, frame by frame (as diffusers does)."""
        feat_map = [_stack_entry([s.feat_map[i] for s in states]) for i in range(self._conv_count)]
        first = states[0].frames == 0
        frames = []
        for f in range(x.shape[2]):
            kwargs = {"first_chunk": first and f == 0} if self._has_first_chunk else {}
            frames.append(self.vae.decoder(x[:, :, f : f + 1], feat_cache=feat_map, feat_idx=[0], **kwargs))
        for b, state in enumerate(states):
            state.feat_map = [e if e is None or isinstance(e, str) else e[b : b + 1] for e in feat_map]
            state.frames += x.shape[2]
        return torch.cat(frames, dim=2).float().clamp(-1.0, 1.0)  # (B, 3, f, H, W)

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, states: Sequence[WanDecoderState]) -> torch.Tensor:
        """Normalised latents (B, C, F, h, w) -> uint8 frames (B, F * 4, H, W, 3), advancing `states`.

        A session's first chunk yields 1 + 4 (F - 1) frames and is padded at its start with copies of
        its first frame (see the module docstring).
        """
        want = latents.shape[2] * self.config.temporal_stride
        videos = []
        for images in self.decode_frames(latents, states):
            pad = want - images.shape[1]
            if pad:
                images = torch.cat([images[:, :1].expand(-1, pad, -1, -1), images], dim=1)
            videos.append(images)
        video = torch.stack(videos)  # (B, 3, F', H, W)
        return ((video + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)

    # -- encoding --------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, H, W, 3), N = 4 F -> normalised latents (1, C, F, h, w) (posterior means).

        The first 3 frames are dropped: they are the hold that pads a first decoded chunk.
        """
        ts = self.config.temporal_stride
        if frames.shape[0] % ts:
            raise ValueError(f"encode_video needs a multiple of {ts} frames, got {frames.shape[0]}")
        frames = frames[ts - 1 :]
        video = frames.permute(3, 0, 1, 2).unsqueeze(0).to(self.dtype) / 127.5 - 1.0  # (1, 3, N', H, W)
        mean = self.vae.encode(video.to(self.latents_mean.device)).latent_dist.mean
        return self.normalize(mean.float())


def _stack_entry(entries: list[Any]):
    """Batch one cache slot of several sessions (all None, all "Rep", or tensors of one shape)."""
    first = entries[0]
    if first is None or isinstance(first, str):
        return first
    return torch.cat(entries, dim=0)
