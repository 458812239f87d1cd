"""Attention masks over token sequences of latent frames (True = may attend).

Tokens are laid out frame-major; a chunk is `frames_per_chunk` consecutive latent frames.
"""

from __future__ import annotations

import torch


def token_chunk_ids(num_frames: int, frames_per_chunk: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Chunk index of every token, (num_frames * tokens_per_frame,)."""
    frame = torch.arange(num_frames, device=device).repeat_interleave(tokens_per_frame)
    return frame // frames_per_chunk


def block_causal_mask(num_frames: int, frames_per_chunk: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """A query attends to every key up to the end of its own chunk. (L, L) bool."""
    chunk = token_chunk_ids(num_frames, frames_per_chunk, tokens_per_frame, device)
    return chunk[:, None] >= chunk[None, :]


def teacher_forcing_mask(num_frames: int, frames_per_chunk: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Mask over [clean (L) | noisy (L)] tokens (Causal Forcing stage 1). (2L, 2L) bool.

    Clean tokens attend block-causally to clean tokens; noisy tokens of chunk i attend to clean
    chunks < i and to their own noisy chunk, never to their own clean copy or to later chunks.
    """
    chunk = token_chunk_ids(num_frames, frames_per_chunk, tokens_per_frame, device)
    clean_clean = chunk[:, None] >= chunk[None, :]
    noisy_clean = chunk[:, None] > chunk[None, :]
    noisy_noisy = chunk[:, None] == chunk[None, :]
    top = torch.cat([clean_clean, torch.zeros_like(clean_clean)], dim=1)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=1)
    return torch.cat([top, bottom], dim=0)
