"""Train / validation / test split by episode.

Each episode's split is a pure function of its id (a hash), so it never changes when episodes are
appended, and the splits are disjoint by construction. With few episodes the fractions are only met
on average; `split_of` is what decides.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")
VAL_FRACTION, TEST_FRACTION = 0.1, 0.05


def split_of(episode_id: int, val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION) -> str:
    """"train", "val" or "test" for this episode id (deterministic)."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction > 1:
        raise ValueError(f"split fractions must be >= 0 and sum to <= 1, got val={val_fraction}, test={test_fraction}")
    digest = hashlib.sha256(f"worldsdk-episode-{int(episode_id)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS} or None for all episodes")
