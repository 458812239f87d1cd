"""Clip and frame datasets, splits, action features and the latent cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from worldsdk.autoencoder import AUTOENCODER_PRESETS, FrameAutoencoder
from worldsdk.config import ActionSpec
from worldsdk.data import ClipDataset, FrameDataset, LatentClipDataset, build_latent_cache, collate_clips, encode_actions, split_of
from worldsdk.data.datasets import clip_starts
from worldsdk.data.store import DatasetMeta, Episode, EpisodeStore

LENGTHS = [7, 20, 3, 16, 33, 12, 25, 9, 18, 40]


def _episode(length: int, episode: int) -> Episode:
    # every frame encodes (episode, t) so a clip reveals where it came from
    frames = np.zeros((length, 8, 8, 3), dtype=np.uint8)
    frames[..., 0] = episode
    frames[..., 1] = np.arange(length)[:, None, None]
    prompt_ids = (np.arange(length) >= length // 2).astype(np.int16)
    return Episode(
        frames=frames,
        actions=np.arange(length) % 3,
        rewards=np.zeros(length, np.float32),
        terminated=np.arange(length) == length - 1,
        truncated=np.zeros(length, bool),
        prompt_ids=prompt_ids,
        prompts=(f"game {episode}, classic style", f"game {episode}, neon style"),
        styles=("classic", "neon"),
    )


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    meta = DatasetMeta(env_id="Fake-v0", game="fake", height=8, width=8, fps=15.0, action_spec=ActionSpec.discrete(3), frame_chunk=5)
    store = EpisodeStore(root)
    with store.writing(meta):
        for e, n in enumerate(LENGTHS):
            store.append(_episode(n, e), meta)
    return root


def test_clips_never_cross_episodes(dataset_dir):
    data = ClipDataset(dataset_dir, clip_len=6, split=None, stride=1, cache_bytes=2000)  # a tiny cache: evictions
    expected = sum(max(n - 6 + 1, 0) for n in LENGTHS)
    assert len(data) == expected
    for i in range(len(data)):
        clip = data[i]
        frames = clip["frames"].numpy()
        assert frames.shape == (6, 8, 8, 3) and frames.dtype == np.uint8
        assert (frames[..., 0] == clip["episode"]).all()  # one episode
        np.testing.assert_array_equal(frames[:, 0, 0, 1], np.arange(clip["start"], clip["start"] + 6))  # consecutive
        assert clip["start"] + 6 <= LENGTHS[clip["episode"]]
        np.testing.assert_array_equal(clip["actions"].numpy(), np.arange(clip["start"], clip["start"] + 6) % 3)
        assert clip["action_features"].shape == (6, 3) and clip["action_features"].dtype == torch.float32
        half = LENGTHS[clip["episode"]] // 2
        assert [p.endswith("neon style") for p in clip["prompts"]] == [t >= half for t in range(clip["start"], clip["start"] + 6)]
        assert clip["prompt"] == clip["prompts"][0]


@given(lengths=st.lists(st.integers(0, 50), max_size=8), clip_len=st.integers(1, 12), stride=st.integers(1, 12))
@settings(max_examples=60, deadline=None)
def test_clip_starts_fit_inside_episodes(lengths, clip_len, stride):
    pairs = clip_starts(lengths, clip_len, stride)
    for e, s in pairs:
        assert 0 <= s and s + clip_len <= lengths[e] and s % stride == 0
    assert len(pairs) == sum(len(range(0, n - clip_len + 1, stride)) for n in lengths)


def test_splits_are_by_episode_and_disjoint(dataset_dir):
    seen = {}
    for split in ("train", "val", "test"):
        data = ClipDataset(dataset_dir, clip_len=3, split=split, val_fraction=0.3, test_fraction=0.3)
        episodes = {data[i]["episode"] for i in range(len(data))}
        assert episodes == {a.record.id for a in data.episodes if a.record.length >= 3}
        seen[split] = {a.record.id for a in data.episodes}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert seen["train"] | seen["val"] | seen["test"] == set(range(len(LENGTHS)))
    assert all(split_of(e, 0.3, 0.3) == s for s, ids in seen.items() for e in ids)
    assert [split_of(e) for e in range(100)] == [split_of(e) for e in range(100)]  # deterministic
    counts = {s: sum(split_of(e) == s for e in range(2000)) for s in ("train", "val", "test")}
    assert 1700 < counts["train"] < 1900 and 150 < counts["val"] < 250 and 60 < counts["test"] < 140


def test_frame_dataset_and_loader(dataset_dir):
    frames = FrameDataset(dataset_dir, split=None)
    assert len(frames) == sum(LENGTHS)
    assert frames[7][0, 0, 0].item() == 1 and frames[7][0, 0, 1].item() == 0  # the first frame of episode 1
    batch = next(iter(DataLoader(frames, batch_size=16, shuffle=True)))
    assert batch.shape == (16, 8, 8, 3) and batch.dtype == torch.uint8
    clips = ClipDataset(dataset_dir, clip_len=4, split=None)
    batch = next(iter(DataLoader(clips, batch_size=5, collate_fn=collate_clips)))
    assert batch["frames"].shape == (5, 4, 8, 8, 3)
    assert len(batch["prompts"]) == 5 and all(len(p) == 4 for p in batch["prompts"])


def test_loader_skips_a_corrupt_episode(dataset_dir, tmp_path, caplog):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    (copy / "episodes" / "ep_000004.npz").write_bytes(b"\0" * 100)
    with caplog.at_level(logging.WARNING):
        data = ClipDataset(copy, clip_len=4, split=None)
    assert "ep_000004.npz" in caplog.text
    assert 4 not in {a.record.id for a in data.episodes}


def test_encode_actions_matches_spec_encode():
    rng = np.random.default_rng(0)
    specs_and_actions = [
        (ActionSpec.discrete(5), rng.integers(0, 5, 7)),
        (ActionSpec.multi_binary(3), rng.integers(0, 2, (7, 3)).astype(np.int8)),
        (ActionSpec.box((2,), 0.0, 2.0), rng.uniform(0, 2, (7, 2)).astype(np.float32)),
    ]
    for spec, actions in specs_and_actions:
        expected = np.stack([spec.encode(a.item() if spec.kind == "discrete" else a) for a in actions])
        np.testing.assert_allclose(encode_actions(spec, actions), expected, rtol=1e-6)
    spec = ActionSpec.dict(b=ActionSpec.discrete(2), a=ActionSpec.box((1,)))
    actions = {"a": rng.uniform(-1, 1, (4, 1)).astype(np.float32), "b": rng.integers(0, 2, 4)}
    expected = np.stack([spec.encode({"a": actions["a"][t], "b": int(actions["b"][t])}) for t in range(4)])
    np.testing.assert_allclose(encode_actions(spec, actions), expected, rtol=1e-6)


def test_latent_cache_round_trip_and_reuse(dataset_dir, tmp_path, caplog):
    torch.manual_seed(0)
    autoencoder = FrameAutoencoder(AUTOENCODER_PRESETS["tiny"])
    out = build_latent_cache(dataset_dir, autoencoder, tmp_path / "latents", batch_size=16, progress=False)
    latents = LatentClipDataset(out, clip_len=5, split=None, stride=5)
    clips = ClipDataset(dataset_dir, clip_len=5, split=None, stride=5)
    assert len(latents) == len(clips)
    for i in (0, len(latents) // 2, len(latents) - 1):
        z, x = latents[i], clips[i]
        assert (z["episode"], z["start"], z["prompts"]) == (x["episode"], x["start"], x["prompts"])
        expected = autoencoder.encode(x["frames"]).half().float()  # (T, C, h, w)
        torch.testing.assert_close(z["latents"], expected)
        torch.testing.assert_close(z["action_features"], x["action_features"])
    with caplog.at_level(logging.INFO):
        build_latent_cache(dataset_dir, autoencoder, out, progress=False)
    assert "0 encoded now" in caplog.text
    with torch.no_grad():
        next(autoencoder.parameters()).add_(1.0)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_latent_cache(dataset_dir, autoencoder, out, progress=False)
    assert f"{len(LENGTHS)} encoded now" in caplog.text
