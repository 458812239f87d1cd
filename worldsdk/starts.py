"""A bank of real starts: short windows of recorded frames that ship with a world, so an episode can
begin from a real game state (`WorldEnv(start="real")`) rather than from the prompt alone.

The windows come from held-out (test split) episodes when the dataset has enough frames there,
else from every episode; each one keeps a single prompt (a window never straddles a prompt switch
when it can avoid it), and that prompt travels with it.
"""

from __future__ import annotations

import os

import numpy as np

from worldsdk.data.splits import split_of
from worldsdk.data.store import EpisodeRecord, EpisodeStore


def build_start_bank(dataset_dir: str | os.PathLike, count: int, frames: int, seed: int = 0,
                     split: str | None = "test") -> tuple[np.ndarray, list[str]]:
    """`count` windows of `frames` consecutive real frames -> (uint8 (count, frames, H, W, 3), prompts).

    Windows are drawn with `seed` from the episodes of `split` (None: all), falling back to every
    episode when that split has none long enough; episodes take turns so the bank spreads over them.
    """
    if count < 1 or frames < 1:
        raise ValueError(f"count and frames must be >= 1, got {count}, {frames}")
    store = EpisodeStore(dataset_dir)
    meta = store.meta()
    records = [r for r in store.verified_records() if r.length >= frames]
    chosen = [r for r in records if split is None or split_of(r.id) == split] or records
    if not chosen:
        raise ValueError(f"{dataset_dir} has no episode of at least {frames} frames")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(chosen))
    windows, prompts = [], []
    for i in range(count):
        record = chosen[int(order[i % len(order)])]
        start = _draw_start(record, frames, rng)
        first, last = start // meta.frame_chunk, (start + frames - 1) // meta.frame_chunk
        chunks = store.read_frame_chunks(record, list(range(first, last + 1)))
        episode_frames = np.concatenate([chunks[c] for c in range(first, last + 1)])
        offset = start - first * meta.frame_chunk
        windows.append(episode_frames[offset : offset + frames])
        prompts.append(_prompt_at(store, record, start + frames - 1))
    return np.stack(windows).astype(np.uint8, copy=False), prompts


def _draw_start(record: EpisodeRecord, frames: int, rng: np.random.Generator, tries: int = 16) -> int:
    """A window start in the episode, preferring windows that do not straddle a prompt switch."""
    start = 0
    for _ in range(tries):
        start = int(rng.integers(0, record.length - frames + 1))
        if not any(start < s < start + frames for s in record.switch_frames):
            break
    return start


def _prompt_at(store: EpisodeStore, record: EpisodeRecord, frame: int) -> str:
    if not record.switch_frames:
        return record.prompts[0]
    episode = store.read(record, with_frames=False)
    return episode.prompts[int(episode.prompt_ids[frame])]
