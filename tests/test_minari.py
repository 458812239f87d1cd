"""Minari: a recording exports to a Minari dataset that Minari reads, and imports back frame for frame;
a Minari dataset made elsewhere imports into a dataset that the latent cache and the clip loaders read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldsdk.autoencoder import AUTOENCODER_PRESETS, FrameAutoencoder
from worldsdk.data import ClipDataset, EpisodeStore, LatentClipDataset, build_latent_cache, resize_frames
from worldsdk.data.minari_io import export_minari, import_minari
from worldsdk.data.recorder import record
from worldsdk.errors import UserError

minari = pytest.importorskip("minari", reason="minari is not installed (pip install 'worldsdk[minari]')")

DATASET_ID = "worldsdk/pong/scripted-v0"


@pytest.fixture(autouse=True)
def minari_home(tmp_path, monkeypatch):
    """Minari writes under MINARI_DATASETS_PATH: a fresh folder per test, never ~/.minari."""
    home = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(home))
    return home


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Two real Pong episodes at 32x32; every episode switches style, so prompts change mid-episode."""
    root = tmp_path_factory.mktemp("rec") / "pong32"
    record("ALE/Pong-v5", root, episodes=2, policy="scripted", size=(32, 32), max_steps=14, seed=3,
           styles=["classic", "neon"], style_switch_fraction=1.0)
    return root


def _episodes(root):
    store = EpisodeStore(root)
    return [(r, store.read(r)) for r in store.verified_records()]


def _assert_actions_equal(got, want):
    if isinstance(want, dict):
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    else:
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


def test_minari_reads_the_exported_recording(recording):
    export_minari(recording, DATASET_ID)
    dataset = minari.load_dataset(DATASET_ID)  # as a Minari user opens it
    episodes = _episodes(recording)
    assert dataset.total_episodes == len(episodes) == 2
    assert dataset.total_steps == sum(len(e) - 1 for _, e in episodes)
    assert dataset.observation_space == gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
    assert dataset.action_space == gym.spaces.Discrete(6)
    assert dataset.env_spec.id == "ALE/Pong-v5" and dataset.env_spec.kwargs["repeat_action_probability"] == 0.0
    seeds = [m["seed"] for m in dataset.storage.get_episode_metadata(dataset.episode_indices)]
    for (record_, ours), theirs, seed in zip(episodes, dataset.iterate_episodes(), seeds):
        assert len(theirs) == len(ours) - 1 and seed == record_.seed
        np.testing.assert_array_equal(theirs.observations, ours.frames)  # raw frames: lossless
        np.testing.assert_array_equal(theirs.actions, ours.actions[1:])  # step t leads from frame t to t + 1
        np.testing.assert_array_equal(theirs.rewards, ours.rewards[1:])
        np.testing.assert_array_equal(theirs.terminations, ours.terminated[1:])
        np.testing.assert_array_equal(theirs.truncations, ours.truncated[1:])
        prompts = [p.decode() for p in theirs.infos["prompt"]]
        assert prompts == ours.frame_prompts() and len(set(prompts)) == 2  # the style switch, frame by frame
        np.testing.assert_array_equal(theirs.infos["prompt_id"], ours.prompt_ids)
    assert theirs.truncations[-1]  # cut by max_steps


def test_export_import_round_trip_is_the_recording(recording, tmp_path):
    export_minari(recording, DATASET_ID)
    out = tmp_path / "back"
    import_minari(DATASET_ID, out)
    original, back = EpisodeStore(recording), EpisodeStore(out)
    assert back.meta().to_dict() == original.meta().to_dict()  # env id, frame size, fps, action spec and names
    pairs = list(zip(_episodes(recording), _episodes(out), strict=True))
    for (want_record, want), (got_record, got) in pairs:
        np.testing.assert_array_equal(got.frames, want.frames)
        _assert_actions_equal(got.actions, want.actions)
        for name in ("rewards", "terminated", "truncated", "prompt_ids"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
            assert getattr(got, name).dtype == getattr(want, name).dtype
        assert (got.prompts, got.styles) == (want.prompts, want.styles)
        keep = ("id", "length", "game", "prompts", "styles", "switch_frames", "seed", "policy", "total_reward")
        assert {k: getattr(got_record, k) for k in keep} == {k: getattr(want_record, k) for k in keep}


def test_imported_dataset_trains_through_the_latent_cache(recording, tmp_path):
    export_minari(recording, DATASET_ID)
    out = tmp_path / "back"
    import_minari(DATASET_ID, out)
    torch.manual_seed(0)
    autoencoder = FrameAutoencoder(AUTOENCODER_PRESETS["tiny"])
    cache = build_latent_cache(out, autoencoder, tmp_path / "latents", batch_size=8, progress=False)
    latents = LatentClipDataset(cache, clip_len=6, split=None, stride=6)
    clips = ClipDataset(recording, clip_len=6, split=None, stride=6)
    assert len(latents) == len(clips) > 0
    for i in range(len(clips)):
        z, x = latents[i], clips[i]
        torch.testing.assert_close(z["latents"], autoencoder.encode(x["frames"]).half().float())
        torch.testing.assert_close(z["action_features"], x["action_features"])
        assert z["prompts"] == x["prompts"]


def test_a_minari_dataset_made_elsewhere_imports(tmp_path):
    """Grayscale frames, no infos, no worldsdk metadata: frames become RGB, the reset frame gets the no-op."""
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(0)
    buffers = []
    for steps in (5, 9):
        buffers.append(EpisodeBuffer(
            seed=steps, observations=rng.integers(0, 256, (steps + 1, 40, 48), dtype=np.uint8),
            actions=rng.integers(0, 4, steps), rewards=rng.normal(size=steps).astype(np.float32),
            terminations=np.arange(steps) == steps - 1, truncations=np.zeros(steps, bool),
        ))
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers(
            "atari/breakout/elsewhere-v0", buffers, observation_space=gym.spaces.Box(0, 255, (40, 48), np.uint8),
            action_space=gym.spaces.Discrete(4), algorithm_name="expert",
        )
    records = import_minari("atari/breakout/elsewhere-v0", tmp_path / "breakout", size=(32, 32))
    store = EpisodeStore(tmp_path / "breakout")
    meta = store.meta()
    assert (meta.game, meta.height, meta.width, meta.action_spec.n) == ("breakout", 32, 32, 4)
    assert [r.length for r in records] == [6, 10] and [r.seed for r in records] == [5, 9]
    assert {r.policy for r in records} == {"expert"} and records[0].prompts == ("breakout, classic style",)
    stored = minari.load_dataset("atari/breakout/elsewhere-v0").iterate_episodes()  # Minari's default: frames as JPEG
    for buffer, record_, theirs in zip(buffers, records, stored):
        episode = store.read(record_)
        rgb = np.repeat(theirs.observations[..., None], 3, axis=-1)
        np.testing.assert_array_equal(episode.frames, resize_frames(rgb, (32, 32)))
        np.testing.assert_array_equal(episode.actions, np.concatenate([[0], buffer.actions]))
        np.testing.assert_array_equal(episode.rewards, np.concatenate([[0.0], buffer.rewards]).astype(np.float32))
        assert episode.terminated[-1] and not episode.terminated[:-1].any() and not episode.truncated.any()


def test_jpeg_export_is_minaris_lossy_default(recording, tmp_path):
    export_minari(recording, DATASET_ID, jpeg=True)
    import_minari(DATASET_ID, tmp_path / "jpeg")
    for (_, want), (_, got) in zip(_episodes(recording), _episodes(tmp_path / "jpeg"), strict=True):
        difference = np.abs(got.frames.astype(int) - want.frames.astype(int))
        assert 0 < difference.mean() < 8  # close, not equal
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.rewards, want.rewards)


def test_missing_or_corrupt_sources_are_named(recording, tmp_path):
    with pytest.raises(UserError, match="no-such/dataset-v0"):
        import_minari("no-such/dataset-v0", tmp_path / "a")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "metadata.json").write_text('{"total_episodes": ')
    with pytest.raises(UserError, match=f"{corrupt}.*not a readable Minari dataset"):
        import_minari(corrupt, tmp_path / "b")
    export_minari(recording, DATASET_ID)
    truncated = minari.storage.get_dataset_path(DATASET_ID) / "data" / "main_data.hdf5"
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(UserError, match=f"{DATASET_ID}.*not a readable Minari dataset"):
        import_minari(DATASET_ID, tmp_path / "c")
    assert not (tmp_path / "c").exists()  # nothing written from an unreadable source
    with pytest.raises(UserError, match="already exists"):
        export_minari(recording, DATASET_ID)
    with pytest.raises(FileNotFoundError, match="is not a worldsdk dataset"):
        export_minari(tmp_path / "missing", "worldsdk/other-v0")


def test_missing_minari_package_is_one_clear_error(recording, monkeypatch):
    monkeypatch.setitem(sys.modules, "minari", None)  # `import minari` raises ImportError
    with pytest.raises(UserError, match=r"pip install 'worldsdk\[minari\]'"):
        export_minari(recording, DATASET_ID)


def _worldsdk(*args, home):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MINARI_DATASETS_PATH": str(home)}
    return subprocess.run([sys.executable, "-m", "worldsdk.cli", *args], capture_output=True, text=True, timeout=180, env=env)


def test_cli_round_trip_and_one_line_errors(recording, tmp_path, minari_home):
    out = _worldsdk("minari", "export", str(recording), DATASET_ID, "--quiet", home=minari_home)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "exported 2 episodes" in out.stdout and DATASET_ID in out.stdout
    out = _worldsdk("minari", "import", DATASET_ID, str(tmp_path / "small"), "--size", "16", "--quiet", home=minari_home)
    assert out.returncode == 0, out.stderr[-2000:]
    for (_, want), (_, got) in zip(_episodes(recording), _episodes(tmp_path / "small"), strict=True):
        np.testing.assert_array_equal(got.frames, resize_frames(want.frames, (16, 16)))
        np.testing.assert_array_equal(got.actions, want.actions)
    for args, fragment in (
        (("minari", "import", "nobody/nothing-v0", str(tmp_path / "x")), "nobody/nothing-v0"),
        (("minari", "export", str(tmp_path / "missing"), "worldsdk/x-v0"), "is not a worldsdk dataset"),
        (("minari", "export", str(recording), "not an id"), "is not a Minari dataset id"),
    ):
        result = _worldsdk(*args, home=minari_home)
        lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
        assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith("worldsdk minari: error:") and fragment in lines[0]
    assert json.loads((minari_home / DATASET_ID / "data" / "metadata.json").read_text())["worldsdk"]["dataset"]["height"] == 32
