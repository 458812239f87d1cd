"""The codec protocol a World decodes through: uint8 video <-> normalised latents (B, C, F, h, w).

Two kinds exist: the per-frame `FrameAutoencoder` of the small worlds (stateless, wrapped by
`FrameCodec`) and Wan's causal video VAE (`worldsdk.wan.WanVAE`), which keeps a decoder state per
session so that every step decodes only its new chunk.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch


class VideoCodec(Protocol):
    """`config` has `latent_channels`, `stride` (spatial) and `temporal_stride`: F latent frames decode to
    F * temporal_stride frames. `decoder_state()` makes one session's state (None when decoding is
    stateless); states are copied with their `copy()` when sessions are stacked and advanced in place
    by `decode_chunk`."""

    config: Any

    def decoder_state(self) -> Any: ...

    def decode_chunk(self, latents: torch.Tensor, states: Sequence[Any]) -> torch.Tensor:
        """(B, C, F, h, w) -> uint8 (B, F * temporal_stride, H, W, 3)."""
        ...

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (F * temporal_stride, H, W, 3) -> (1, C, F, h, w)."""
        ...


class FrameCodec:
    """A per-frame autoencoder (`encode` / `decode` of (N, ...) frames) seen as a stateless VideoCodec."""

    def __init__(self, autoencoder):
        self.autoencoder = autoencoder
        self.config = autoencoder.config

    def decoder_state(self) -> None:
        return None

    def decode_chunk(self, latents: torch.Tensor, states: Sequence[Any] = ()) -> torch.Tensor:
        b, _, f = latents.shape[:3]
        frames = self.autoencoder.decode(latents.transpose(1, 2).flatten(0, 1))  # (B * F, H, W, 3)
        return frames.reshape(b, f, *frames.shape[1:])

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(frames).transpose(0, 1).unsqueeze(0)  # (N, C, h, w) -> (1, C, N, h, w)


def as_codec(autoencoder) -> VideoCodec:
    """The autoencoder itself when it is a VideoCodec, else its per-frame FrameCodec view."""
    return autoencoder if hasattr(autoencoder, "decode_chunk") else FrameCodec(autoencoder)
