"""Recorded frames for the autoencoder stage: a train split to sample and held-out frames to score.

Reads the data sets of `worldsdk.data` (one folder per recording), and measures ball recall with the
ball finder of `worldsdk.data.objects`, judging each reconstruction in the style detected on its
original frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)


def evenly_spaced(n: int, k: int) -> torch.Tensor:
    """k indices spread evenly over range(n) (all of them when k <= 0 or k >= n)."""
    if k <= 0 or k >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, k).round().long()


@dataclass
class FrameSet:
    """One recording folder: its training frames (a data set of uint8 (H, W, 3)) and held-out frames."""

    name: str  # the folder's name, used in metric names
    game: str
    root: Path
    train: Dataset
    heldout: Dataset
    heldout_split: str  # "test", or "val" when the recording has no test episodes

    @property
    def frame_shape(self) -> tuple[int, int]:
        h, w, _ = self.train[0].shape
        return int(h), int(w)

    def heldout_frames(self, count: int) -> torch.Tensor:
        """`count` held-out frames spread evenly over the split (all when count <= 0), uint8 (N, H, W, 3)."""
        return torch.stack([torch.as_tensor(self.heldout[int(i)]) for i in evenly_spaced(len(self.heldout), count)])


def open_frame_sets(folders: tuple[str, ...] | list[str], cache_bytes: int = 1 << 30) -> list[FrameSet]:
    """Open each recording folder's train split and its test split (or val split, when test is empty)."""
    from worldsdk.data.datasets import FrameDataset

    sets = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"recordings folder {root} does not exist (record one with `worldsdk record`)")
        train = FrameDataset(root, split="train", cache_bytes=cache_bytes)
        if len(train) == 0:
            raise ValueError(f"{root} has no training episodes")
        heldout, split = None, None
        for candidate in ("test", "val"):
            frames = FrameDataset(root, split=candidate, cache_bytes=cache_bytes // 4)
            if len(frames):
                heldout, split = frames, candidate
                break
        if heldout is None:
            raise ValueError(f"{root} has no test or validation episodes; record more episodes")
        if split != "test":
            log.warning("%s has no test episodes; scoring on its %s split", root, split)
        name = root.name or root.resolve().name
        sets.append(FrameSet(name=name, game=train.meta.game, root=root, train=train, heldout=heldout, heldout_split=split))
        log.info("%s: %s, %d train frames, %d %s frames", root, train.meta.game, len(train), len(heldout), split)
    shapes = {s.frame_shape for s in sets}
    if len(shapes) > 1:
        raise ValueError(f"recordings have different frame sizes {sorted(shapes)}: {[str(s.root) for s in sets]}")
    return sets


def ball_recall(real: torch.Tensor, recon: torch.Tensor, game: str, radius: float = 1.5) -> tuple[float, int]:
    """Of the frames (N, H, W, 3) whose original shows a ball, the fraction whose reconstruction shows
    it within `radius` pixels; returns (recall, frames with a ball). NaN when the game has no ball finder
    or no original shows a ball."""
    from worldsdk.data import objects

    if game not in objects.GAMES:
        return float("nan"), 0
    real_np, recon_np = real.cpu().numpy(), recon.cpu().numpy()
    styles = objects.detect_style(real_np, game)
    ref = np.full((len(real_np), 2), np.nan, dtype=np.float32)
    found = np.full_like(ref, np.nan)
    for style in dict.fromkeys(styles):
        idx = np.array([i for i, s in enumerate(styles) if s == style])
        ref[idx] = objects.find_balls(real_np[idx], game, style)
        found[idx] = objects.find_balls(recon_np[idx], game, style)
    seen = ~np.isnan(ref[:, 0])
    if not seen.any():
        return float("nan"), 0
    distance = np.nan_to_num(np.linalg.norm(ref[seen] - found[seen], axis=1), nan=np.inf)
    return float(np.mean(distance <= radius)), int(seen.sum())
