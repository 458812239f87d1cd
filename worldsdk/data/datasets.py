"""Torch datasets over recorded episodes: fixed-length clips (world training) and single frames
(autoencoder training).

Both read only episodes whose shard matches the index (others are logged by name and skipped),
keep the small per-frame arrays (actions, rewards, prompts) in memory, and read frames lazily in
chunks through a bounded cache, so a dataset larger than memory still trains. A clip never crosses
an episode boundary. Use `collate_clips` as the DataLoader's collate_fn to keep per-frame prompts as
one list per clip.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from worldsdk.config import ActionSpec
from worldsdk.data.actions import RecordedActions, encode_actions, slice_actions
from worldsdk.data.splits import TEST_FRACTION, VAL_FRACTION, check_split, split_of
from worldsdk.data.store import CorruptShardError, EpisodeRecord, EpisodeStore

log = logging.getLogger(__name__)


@dataclass
class EpisodeAnnotations:
    """The per-frame arrays of one episode, without its frames."""

    record: EpisodeRecord
    actions: RecordedActions
    action_features: np.ndarray  # float32 (T, feature_dim)
    rewards: np.ndarray
    terminated: np.ndarray
    prompt_ids: np.ndarray
    prompts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.rewards)


def clip_starts(lengths: list[int], clip_len: int, stride: int) -> np.ndarray:
    """(episode index, start) of every clip [start, start + clip_len) that fits inside its episode."""
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_len and stride must be >= 1, got {clip_len}, {stride}")
    pairs = [(e, s) for e, n in enumerate(lengths) for s in range(0, n - clip_len + 1, stride)]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor that owns a copy, so editing a sample never edits the dataset's cached arrays."""
    return torch.from_numpy(np.array(array, copy=True, order="C"))


def _as_tensor(actions: RecordedActions) -> torch.Tensor | dict[str, torch.Tensor]:
    if isinstance(actions, Mapping):
        return {name: _tensor(a) for name, a in actions.items()}
    return _tensor(actions)


class ClipSource(Dataset):
    """Shared clip indexing and sample assembly; subclasses say where the per-frame tensors come from."""

    key = "frames"

    def __init__(self, annotations: list[EpisodeAnnotations], clip_len: int, stride: int | None):
        self.episodes = annotations
        self.clip_len = clip_len
        self.clips = clip_starts([len(a) for a in annotations], clip_len, stride or clip_len)
        if len(self.clips) == 0:
            log.warning("no clips of %d frames: %d episodes, the longest %d frames", clip_len, len(annotations),
                        max((len(a) for a in annotations), default=0))

    def __len__(self) -> int:
        return len(self.clips)

    def _read(self, episode: int, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode, start = (int(v) for v in self.clips[index])
        a, stop = self.episodes[episode], start + self.clip_len
        prompts = [a.prompts[i] for i in a.prompt_ids[start:stop]]
        return {
            self.key: self._read(episode, start, stop),
            "actions": _as_tensor(slice_actions(a.actions, start, stop)),
            "action_features": _tensor(a.action_features[start:stop]),
            "rewards": _tensor(a.rewards[start:stop]),
            "terminated": _tensor(a.terminated[start:stop]),
            "prompt": prompts[0],
            "prompts": prompts,
            "episode": a.record.id,
            "start": start,
        }


def collate_clips(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Like default_collate, but "prompts" stays a list (B) of per-frame lists (T) of str."""
    prompts = [s["prompts"] for s in samples]
    batch = default_collate([{k: v for k, v in s.items() if k != "prompts"} for s in samples])
    batch["prompts"] = prompts
    return batch


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------


class _ChunkCache:
    """Least-recently-used frame chunks of a store, bounded in bytes; re-created after a fork."""

    def __init__(self, store: EpisodeStore, frame_chunk: int, capacity_bytes: int):
        self.store, self.frame_chunk, self.capacity = store, frame_chunk, capacity_bytes
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._pid = os.getpid()

    def frames(self, record: EpisodeRecord, start: int, stop: int) -> np.ndarray:
        if os.getpid() != self._pid:  # a DataLoader worker: start with its own cache
            self._chunks.clear()
            self._bytes, self._pid = 0, os.getpid()
        first, last = start // self.frame_chunk, (stop - 1) // self.frame_chunk
        wanted = range(first, last + 1)
        missing = [c for c in wanted if (record.id, c) not in self._chunks]
        if missing:
            for c, chunk in self.store.read_frame_chunks(record, missing).items():
                self._chunks[(record.id, c)] = chunk
                self._bytes += chunk.nbytes
        parts = []
        for c in wanted:
            self._chunks.move_to_end((record.id, c))
            parts.append(self._chunks[(record.id, c)])
        while self._bytes > self.capacity and len(self._chunks) > len(wanted):
            _, evicted = self._chunks.popitem(last=False)
            self._bytes -= evicted.nbytes
        frames = parts[0] if len(parts) == 1 else np.concatenate(parts)
        offset = first * self.frame_chunk
        return frames[start - offset : stop - offset]


def load_annotations(store: EpisodeStore, records: list[EpisodeRecord], spec: ActionSpec) -> list[EpisodeAnnotations]:
    """Per-frame arrays of each readable episode; unreadable shards are logged by name and skipped."""
    out = []
    for record in records:
        try:
            episode = store.read(record, with_frames=False)
        except CorruptShardError as e:
            log.warning("%s; skipping episode %d", e, record.id)
            continue
        out.append(
            EpisodeAnnotations(
                record=record,
                actions=episode.actions,
                action_features=encode_actions(spec, episode.actions),
                rewards=episode.rewards,
                terminated=episode.terminated,
                prompt_ids=episode.prompt_ids,
                prompts=episode.prompts,
            )
        )
    return out


def select_split(records: list[EpisodeRecord], split: str | None, val_fraction: float, test_fraction: float) -> list[EpisodeRecord]:
    check_split(split)
    return [r for r in records if split is None or split_of(r.id, val_fraction, test_fraction) == split]


class ClipDataset(ClipSource):
    """Clips of `clip_len` consecutive frames from one episode each, of one split (None: all).

    A sample is a dict: frames uint8 (T, H, W, 3); actions (T,) int64 for discrete specs (the action
    that produced each frame); action_features float32 (T, feature_dim); rewards float32 (T,);
    terminated bool (T,); prompt str (of the first frame); prompts list of T str; episode int; start int.
    Clips start every `stride` frames (default clip_len: no overlap).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        clip_len: int,
        *,
        split: str | None = "train",
        stride: int | None = None,
        val_fraction: float = VAL_FRACTION,
        test_fraction: float = TEST_FRACTION,
        cache_bytes: int = 512 << 20,
    ):
        self.store = EpisodeStore(root)
        self.meta = self.store.meta()
        records = select_split(self.store.verified_records(), split, val_fraction, test_fraction)
        super().__init__(load_annotations(self.store, records, self.meta.action_spec), clip_len, stride)
        self._cache = _ChunkCache(self.store, self.meta.frame_chunk, cache_bytes)

    def _read(self, episode: int, start: int, stop: int) -> torch.Tensor:
        return _tensor(self._cache.frames(self.episodes[episode].record, start, stop))


class FrameDataset(Dataset):
    """Single frames, uint8 tensors (H, W, 3), of one split; for autoencoder training.

    Frames are read in chunks through a bounded cache; `cache_bytes` at least the dataset's size
    (frames x H x W x 3) keeps every frame in memory after the first epoch.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str | None = "train",
        val_fraction: float = VAL_FRACTION,
        test_fraction: float = TEST_FRACTION,
        cache_bytes: int = 512 << 20,
    ):
        self.store = EpisodeStore(root)
        self.meta = self.store.meta()
        self.records = select_split(self.store.verified_records(), split, val_fraction, test_fraction)
        self._ends = np.cumsum([r.length for r in self.records])
        self._cache = _ChunkCache(self.store, self.meta.frame_chunk, cache_bytes)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)
        e = int(np.searchsorted(self._ends, index, side="right"))
        t = index - (int(self._ends[e - 1]) if e else 0)
        return _tensor(self._cache.frames(self.records[e], t, t + 1)[0])
