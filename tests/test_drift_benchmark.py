"""benchmarks/drift.py: replay starts that keep one style, and rollout figures beside the recording's own."""

from types import SimpleNamespace

import numpy as np

from tests.conftest import ROOT, load_script
from worldsdk import World
from worldsdk.data.store import EpisodeStore
from worldsdk.evaluation import Sampler, evaluation_episodes


def _drift():
    return load_script(ROOT / "benchmarks" / "drift.py", "drift_benchmark")


def test_replays_start_where_the_recording_keeps_one_style():
    drift = _drift()
    episode = SimpleNamespace(prompt_ids=[0] * 30 + [1] * 70)  # the style switches at frame 30
    # from frame 20, a 16-frame replay with 6 context frames crosses the switch until it starts at 36
    assert drift.steady_start(episode, 20, 16, 2, 6) == 36
    assert drift.steady_start(episode, 21, 16, 2, 6) == 36  # chunk-aligned
    assert drift.steady_start(episode, 8, 16, 2, 6) == 8  # 2..24 keep style 0
    assert drift.steady_start(SimpleNamespace(prompt_ids=[0, 1] * 20), 0, 16, 2, 6) is None


def test_rollout_figures_separate_the_recording_from_a_world_that_draws_noise(pong_recording):
    drift = _drift()
    world = World.from_preset("small", seed=0)  # untrained: its head is zero, so it draws its autoencoder's blur
    store = EpisodeStore(pong_recording)
    episodes, _ = evaluation_episodes(store, "all")
    sampler = Sampler().resolve(world)
    r = drift.rollouts(world, store, episodes, sampler, count=2, steps=10, seed=0)
    assert set(r["world"]) == set(r["real"]) == {"10"}
    real, generated = r["real"]["10"], r["world"]["10"]
    assert real["player_paddle_present"] > 0.9 and real["histogram_distance"] < 0.3  # the game itself
    assert generated["histogram_distance"] > real["histogram_distance"] + 0.2
    assert generated["player_paddle_present"] < real["player_paddle_present"]
    replays = drift.replays(world, store, episodes, sampler, count=2, horizon=8)
    assert len(replays["psnr"]) == len(replays["mean_pixel_gap"]) == 8
    assert all(np.isfinite(replays["psnr"]))
