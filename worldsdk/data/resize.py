"""Area resizing of game frames.

Atari balls are 1-2 pixels wide; nearest-neighbour or bilinear downsizing drops them in some frames.
Area averaging (PIL's BOX filter: each output pixel is the mean of the source area it covers, with
fractional weights at the edges) keeps every object's total intensity, so a 2x4 ball becomes a
blended pixel or two that is always there.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (height, width, 3) by area averaging; `size` is (height, width)."""
    height, width = size
    if frame.shape[:2] == (height, width):
        return np.ascontiguousarray(frame, dtype=np.uint8)
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    return np.asarray(image.resize((width, height), Image.Resampling.BOX))


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, height, width, 3) by area averaging."""
    out = np.empty((len(frames), size[0], size[1], 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = resize_frame(frame, size)
    return out
