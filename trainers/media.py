"""Writing samples: image grids (autoencoder reconstructions) and videos (world-model rollouts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _uint8(frames) -> np.ndarray:
    a = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {a.dtype}")
    return a


def image_grid(rows: list, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Rows of uint8 frames (N, H, W, 3) -> one uint8 image, frames separated by `pad` black pixels."""
    rows = [_uint8(r) for r in rows]
    n = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    grid = np.zeros((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, frame in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = frame
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def save_image(path: str | Path, image: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_uint8(image)).save(path)
    return path


def save_video(path: str | Path, frames, fps: float = 15.0, scale: int = 1) -> Path:
    """uint8 frames (T, H, W, 3) -> a .gif or .mp4 (by suffix; mp4 needs imageio-ffmpeg)."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = _uint8(frames)
    if scale > 1:
        a = a.repeat(scale, axis=1).repeat(scale, axis=2)
    if path.suffix == ".gif":
        iio.imwrite(path, a, duration=1000.0 / fps, loop=0)
    else:
        iio.imwrite(path, a, fps=fps)
    return path
