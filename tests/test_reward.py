"""Reward and termination prediction (worldsdk.reward, stage=reward), the world file's optional parts
(reward model, bank of real starts) and what the envs make of them."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldsdk  # noqa: F401  (registers the IDs)
from envs.world_env import NO_REWARD_NOTE, WorldEnv, WorldVectorEnv
from tests.conftest import perturb_
from trainers.app import run
from worldsdk import World
from worldsdk.config import ActionSpec
from worldsdk.data.latents import build_latent_cache
from worldsdk.data.splits import split_of
from worldsdk.data.store import DatasetMeta, Episode, EpisodeStore
from worldsdk.reward import (
    RewardConfig,
    RewardModel,
    class_weights,
    decide_rewards,
    episode_scores,
    event_counts,
    precision_recall,
    reward_classes,
)
from worldsdk.starts import build_start_bank

SIZE, STEPS, EPISODES = 32, 32, 26  # ids 24 and 25 are the test split, 1, 8, 15, 17, 23 validation
PROMPTS = ("blink, classic style", "blink, neon style")
TINY = {"name": "tiny", "preset": "tiny", "autoencoder": "tiny"}


def blink_episode(seed: int) -> Episode:
    """A dot drifting over a dark field; a reward of +1 (-1) flashes an 8x8 square top-left (bottom-right)
    for exactly its frame; even episodes end terminated on an all-red frame."""
    rng = np.random.default_rng(seed)
    frames = np.full((STEPS, SIZE, SIZE, 3), 40, dtype=np.uint8)
    rewards = np.zeros(STEPS, dtype=np.float32)
    for t in range(STEPS):
        y, x = (4 + 2 * t + seed) % 28, (10 + 3 * t) % 28
        frames[t, y : y + 2, x : x + 2] = 220
    for t in range(3 + seed % 4, STEPS - 2, 7):
        rewards[t] = rng.choice([-1.0, 1.0])
        square = (slice(0, 8), slice(0, 8)) if rewards[t] > 0 else (slice(24, 32), slice(24, 32))
        frames[t][square] = (60, 230, 60)
    terminated = np.zeros(STEPS, dtype=bool)
    if seed % 2 == 0:
        terminated[-1] = True
        frames[-1] = (230, 30, 30)
    return Episode(frames=frames, actions=rng.integers(0, 6, STEPS), rewards=rewards, terminated=terminated,
                   truncated=~terminated & (np.arange(STEPS) == STEPS - 1), prompt_ids=np.zeros(STEPS, dtype=np.int16),
                   prompts=(PROMPTS[seed % 2],), styles=(PROMPTS[seed % 2].split(", ")[1],))


@pytest.fixture(scope="module")
def blink(tmp_path_factory):
    """A recording of blink episodes, a tiny world and the latent cache of its autoencoder."""
    root = tmp_path_factory.mktemp("blink")
    meta = DatasetMeta(env_id="Synthetic/Blink", game="blink", height=SIZE, width=SIZE, fps=15.0,
                       action_spec=ActionSpec.discrete(6), frame_chunk=16)
    store = EpisodeStore(root / "data")
    with store.writing(meta):
        for e in range(EPISODES):
            store.append(blink_episode(e), meta)
    world = World.from_preset("tiny", seed=0)
    perturb_(world.model)
    world_file = world.save(root / "world.safetensors")
    latents = build_latent_cache(root / "data", world.autoencoder, root / "latents", progress=False)
    assert [split_of(i) for i in (24, 25)] == ["test", "test"]
    return root, str(world_file), str(latents), str(root / "data")


def tiny_reward_model(world: World, seed: int = 0, **config) -> RewardModel:
    mc = world.model.config
    torch.manual_seed(seed)
    return RewardModel(RewardConfig(latent_channels=mc.latent_channels, latent_height=mc.latent_height,
                                    latent_width=mc.latent_width, action_dim=mc.action_dim, channels=8, hidden=16, **config)).eval()


def constant_bank(world: World, n: int = 5, frames: int = 4) -> np.ndarray:
    """Start i is `frames` frames of the constant value 20 * (i + 1): easy to recognise in an observation."""
    bank = np.zeros((n, frames, world.spec.height, world.spec.width, 3), dtype=np.uint8)
    for i in range(n):
        bank[i] = 20 * (i + 1)
    return bank


def set_bias(model: RewardModel, reward_class: int | None = None, terminate: bool | None = None) -> RewardModel:
    """Make the model say one thing whatever it sees: a reward class, and / or always or never terminating."""
    with torch.no_grad():
        if reward_class is not None:
            model.reward_head.weight.zero_()
            model.reward_head.bias.fill_(-10.0)
            model.reward_head.bias[reward_class] = 10.0
        if terminate is not None:
            model.termination_head.weight.zero_()
            model.termination_head.bias.fill_(10.0 if terminate else -10.0)
    return model


# -- pure helpers ----------------------------------------------------------------------------------


def test_event_counts_match_events_one_to_one_within_the_tolerance():
    target = np.array([0, 1, 0, 0, 0, -1, 0, 0, 0, 1], dtype=np.float32)
    exact = np.array([0, 1, 0, 0, 0, 0, -1, 0, 0, 0], dtype=np.float32)
    assert event_counts(exact, target, 0) == (1, 1, 2)
    assert event_counts(exact, target, 1) == (2, 0, 1)
    assert event_counts(-exact, target, 1) == (0, 2, 3)  # the sign must match
    assert event_counts(np.array([0, 1, 1, 0, 0, 0, 0, 0, 0, 0]), target, 2) == (1, 1, 2)  # one-to-one
    assert precision_recall(0, 0, 0) == {"precision": None, "recall": None, "f1": None, "tp": 0, "fp": 0, "fn": 0}
    assert precision_recall(1, 1, 3)["f1"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    scores = episode_scores([exact, exact], [target, target], 1)
    assert (scores["tp"], scores["fp"], scores["fn"], scores["precision"]) == (4, 0, 2, 1.0)


def test_classes_weights_and_decisions():
    assert reward_classes(torch.tensor([-1.0, 0.0, 0.9, 0.2]), (-1.0, 0.0, 1.0)).tolist() == [0, 1, 2, 1]
    w = class_weights([10, 980, 10], power=1.0)
    assert w[0] == pytest.approx(1000 / 30) and w[1] == pytest.approx(1000 / 2940)
    assert torch.allclose(class_weights([10, 980, 10], power=0.0), torch.ones(3))
    assert class_weights([0, 90, 10])[0] == class_weights([0, 90, 10]).max()
    probs = torch.tensor([[0.3, 0.6, 0.1], [0.05, 0.9, 0.05], [0.1, 0.2, 0.7]])
    assert decide_rewards(probs, 1, 0.35).tolist() == [0, 1, 2]
    assert decide_rewards(probs, 1, 0.5).tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match="must contain 0"):
        RewardConfig(reward_values=(-1.0, 1.0))


def test_streaming_chunks_equals_the_whole_sequence(tiny_world):
    model = perturb_(tiny_reward_model(tiny_world), 0.3)
    mc = tiny_world.model.config
    latents = torch.randn(3, 8, mc.latent_channels, mc.latent_height, mc.latent_width)
    actions = torch.rand(3, 8, mc.action_dim + 1)
    reward_logits, termination_logits = model(latents, actions)
    state = model.empty_state(3)
    rewards = []
    for start in range(0, 8, 2):
        state = model.step(latents[:, start : start + 2], actions[:, start : start + 2], state)
        rewards.append(state.rewards)
    expected, ends = model.decide(reward_logits, termination_logits)
    assert torch.equal(torch.cat(rewards, 1), expected) and torch.equal(state.terminated, ends[:, -2:])
    halves = [model.step(latents[b : b + 1, :4], actions[b : b + 1, :4], model.empty_state(1)) for b in range(3)]
    from worldsdk.reward import RewardState

    stacked = model.step(latents[:, 4:6], actions[:, 4:6], RewardState.stack(halves))
    assert torch.allclose(stacked.hidden, model.step(latents[:, :6], actions[:, :6], model.empty_state(3)).hidden, atol=1e-5)


# -- the training stage ----------------------------------------------------------------------------


def loop(steps: int, **kw) -> dict:
    return {"max_steps": steps, "batch_size": 8, "seed": 0, "device": "cpu", "precision": "fp32", "log_every": 10,
            "checkpoint_every": 1000, "progress": False, "tensorboard": False, **kw}


def test_the_stage_learns_the_blinks_and_writes_a_world_with_rewards_and_starts(blink):
    root, world_file, latents, data = blink
    run_dir = root / "reward"
    stage = {"name": "reward", "world": world_file, "latents": latents, "data": data, "clip_frames": 8, "channels": 16,
             "hidden": 32, "noise_std": 0.05, "start_count": 4, "optimizer": {"lr": 3e-3, "warmup_steps": 0}}
    run({"run_dir": str(run_dir), "loop": loop(60), "model": TINY, "stage": stage})
    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["reward/loss"] for r in logs if "reward/loss" in r]
    assert losses[-1] < 0.3 * losses[0]
    metrics = json.loads((run_dir / "reward_metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["episodes"] == 2 and metrics["reward_values"] == [-1.0, 0.0, 1.0]
    assert metrics["within_2_frames"]["reward"]["recall"] >= 0.75 and metrics["within_2_frames"]["reward"]["precision"] >= 0.75
    assert (run_dir / "reward_pr.png").stat().st_size > 0
    world = World.load(run_dir / "world.safetensors")
    assert world.reward_model is not None and world.reward_model.config.reward_threshold == metrics["reward_threshold"]
    assert world.num_starts == 4 and set(world.start_prompts) <= set(PROMPTS)
    assert world.start_frames.shape == (4, 6, SIZE, SIZE, 3)  # the tiny clip (8) less one chunk (2)
    assert world.info["reward"]["split"] == "test"

    # Streaming a real test episode through the world's own step path gives the recorded rewards.
    episode = blink_episode(24)
    _, state = world.init_state(1, PROMPTS[0], 0, [episode.frames[:2]])
    got = [world.predicted_rewards(state)[0][0]]
    for start in range(2, STEPS, 2):
        with torch.inference_mode():
            x = world.codec.encode_video(torch.from_numpy(episode.frames[start : start + 2]))  # (1, C, 2, h, w)
            feats = torch.from_numpy(np.eye(6, dtype=np.float32)[episode.actions[start : start + 2]])
            state.rewards = world.reward_model.step(x.transpose(1, 2), torch.cat([feats, torch.ones(2, 1)], 1)[None], state.rewards)
        got.append(state.rewards.rewards[0].numpy())
    tp, fp, fn = event_counts(np.concatenate(got), episode.rewards, 2)
    assert tp >= 0.75 * (tp + fn) and fp <= 1


def test_the_stage_runs_from_its_yaml(blink, tmp_path):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    _, world_file, latents, _ = blink
    with initialize_config_module("trainers.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            "stage=reward", "model=tiny", f"stage.world={world_file}", f"stage.latents={latents}", "stage.clip_frames=8",
            f"run_dir={tmp_path / 'run'}", "loop.device=cpu", "loop.max_steps=2", "loop.batch_size=2", "loop.progress=false",
            "loop.tensorboard=false"])
    result = run(OmegaConf.to_container(cfg, resolve=True))
    assert result.finished and World.load(tmp_path / "run" / "world.safetensors").num_starts == 0  # no data: no bank


def test_the_stage_refuses_a_cache_of_another_autoencoder(blink, tmp_path):
    _, _, latents, _ = blink
    other = World.from_preset("tiny", seed=1).save(tmp_path / "other.safetensors")
    stage = {"name": "reward", "world": str(other), "latents": latents, "clip_frames": 8}
    with pytest.raises(ValueError, match="another autoencoder"):
        run({"run_dir": str(tmp_path / "run"), "loop": loop(1), "model": TINY, "stage": stage})


def test_start_bank_windows_are_real_frames_drawn_by_seed(blink):
    root, _, _, data = blink
    frames, prompts = build_start_bank(data, count=5, frames=4, seed=3)
    again, _ = build_start_bank(data, count=5, frames=4, seed=3)
    other, _ = build_start_bank(data, count=5, frames=4, seed=4)
    assert frames.shape == (5, 4, SIZE, SIZE, 3) and frames.dtype == np.uint8 and np.array_equal(frames, again)
    assert not np.array_equal(frames, other)
    test_episodes = {e: blink_episode(e) for e in (24, 25)}  # held-out episodes come first
    for window, prompt in zip(frames, prompts):
        found = [e for e, ep in test_episodes.items()
                 if any(np.array_equal(ep.frames[s : s + 4], window) for s in range(STEPS - 3))]
        assert found and prompt == PROMPTS[found[0] % 2]


# -- the world file's optional parts ----------------------------------------------------------------


def test_world_with_reward_model_and_bank_round_trips(tiny_world, tmp_path):
    tiny_world.set_reward_model(perturb_(tiny_reward_model(tiny_world), 0.3))
    tiny_world.set_start_bank(constant_bank(tiny_world), [f"p{i}" for i in range(5)])
    loaded = World.load(tiny_world.save(tmp_path / "w.safetensors"))
    assert loaded.start_prompts == [f"p{i}" for i in range(5)] and np.array_equal(loaded.start_frames, tiny_world.start_frames)
    assert loaded.reward_model.config == tiny_world.reward_model.config

    def rollout(world):
        frames, state = world.init_state(2, seeds=[1, 2], contexts=[world.start(3)[0], None])
        out = [world.predicted_rewards(state)]
        for action in (1, 2, 3):
            result = world.step_state(state, [action, action])
            frames, state = result.frames, result.state
            out.append(world.predicted_rewards(state) + (state.rewards.hidden.numpy(),))
        return out

    for a, b in zip(rollout(tiny_world), rollout(loaded)):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
    plain = World.load(World.from_preset("tiny").save(tmp_path / "plain.safetensors"))
    assert plain.reward_model is None and plain.num_starts == 0


def test_mismatched_reward_model_and_bank_are_refused(tiny_world):
    with pytest.raises(ValueError, match="reward model reads"):
        tiny_world.set_reward_model(RewardModel(RewardConfig(latent_channels=3)))
    with pytest.raises(ValueError, match="start frames must be uint8"):
        tiny_world.set_start_bank(np.zeros((2, 4, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 2 frames"):
        tiny_world.set_start_bank(np.zeros((2, 1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="no reward model"):
        tiny_world.predicted_rewards()


# -- the envs ---------------------------------------------------------------------------------------------


class RecordingRewardModel(RewardModel):
    """A reward model that remembers what it predicted, to compare with what the env reports."""

    def step(self, latents, actions, state):
        state = super().step(latents, actions, state)
        self.predicted.append(state.rewards.clone())
        return state


def test_env_reports_the_models_predicted_rewards(tiny_world):
    mc = tiny_world.model.config
    model = RecordingRewardModel(RewardConfig(latent_channels=mc.latent_channels, latent_height=mc.latent_height,
                                              latent_width=mc.latent_width, action_dim=mc.action_dim, channels=8, hidden=16,
                                              reward_threshold=0.3))
    model.predicted = []
    tiny_world.set_reward_model(perturb_(model, 1.0))
    env = gymnasium.make("worldsdk/World-v0", world=tiny_world)
    _, info = env.reset(seed=0)
    assert info["reward_predicted"] is True and "reward_note" not in info
    rewards = []
    for action in (0, 1, 2, 3, 4, 5):
        _, reward, terminated, _, info = env.step(action)
        assert info["reward_predicted"] is True and isinstance(reward, float) and isinstance(terminated, bool)
        assert reward == pytest.approx(float(model.predicted[-1].sum()))
        assert np.array_equal(info["frame_rewards"], model.predicted[-1][0].numpy())
        rewards.append(reward)
    assert any(r != 0 for r in rewards)  # a random model with a low threshold predicts some events
    set_bias(tiny_world.reward_model, reward_class=2, terminate=False)
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(0)
    assert reward == 2.0 and terminated is False  # +1 on both frames of the chunk


def test_predicted_termination_ends_the_episode(tiny_world):
    tiny_world.set_reward_model(set_bias(tiny_reward_model(tiny_world), reward_class=1, terminate=True))
    env = gymnasium.make("worldsdk/World-v0", world=tiny_world)
    env.reset(seed=0)
    _, reward, terminated, truncated, _ = env.step(0)
    assert terminated is True and truncated is False and reward == 0.0
    envs = WorldVectorEnv(3, world=tiny_world)
    envs.reset(seed=0)
    _, rewards, terminated, _, info = envs.step(np.zeros(3, dtype=np.int64))
    assert terminated.tolist() == [True] * 3 and info["reward_predicted"].tolist() == [True] * 3
    _, rewards, terminated, _, _ = envs.step(np.zeros(3, dtype=np.int64))  # next-step autoreset
    assert terminated.tolist() == [False] * 3 and rewards.tolist() == [0.0] * 3 and envs._episode_steps.tolist() == [0] * 3


def test_real_starts_are_seeded_and_show_the_bank(tiny_world):
    tiny_world.set_start_bank(constant_bank(tiny_world), [f"p{i}" for i in range(5)])

    def first(seed, **kw):
        obs, info = WorldEnv(tiny_world, **kw).reset(seed=seed)
        return obs, info

    indices = set()
    for seed in range(6):
        obs, info = first(seed)
        again, info2 = first(seed)
        assert info["start"] == "real" and info["start_index"] == info2["start_index"] and np.array_equal(obs, again)
        i = info["start_index"]
        assert np.array_equal(obs, tiny_world.start_frames[i][-2:]) and info["prompt"] == f"p{i}"
        indices.add(i)
    assert len(indices) > 1
    obs, info = first(0, prompt="my prompt")
    assert info["prompt"] == "my prompt"
    obs, info = first(0, start="prompt")
    assert info["start"] == "prompt" and "start_index" not in info
    env = WorldEnv(tiny_world, start="prompt")
    _, info = env.reset(seed=0, options={"start": "real"})
    assert info["start"] == "real"
    envs = WorldVectorEnv(4, world=tiny_world)
    obs, info = envs.reset(seed=5)
    again, info2 = WorldVectorEnv(4, world=tiny_world).reset(seed=5)
    assert np.array_equal(obs, again) and np.array_equal(info["start_index"], info2["start_index"])
    for b, i in enumerate(info["start_index"]):
        assert np.array_equal(obs[b], tiny_world.start_frames[i][-2:])
    check_env(gymnasium.make("worldsdk/World-v0", world=tiny_world).unwrapped)


def test_worlds_without_a_model_say_so_and_real_starts_need_a_bank(tiny_world):
    env = gymnasium.make("worldsdk/World-v0", world=tiny_world)
    _, info = env.reset(seed=0)
    assert info["start"] == "prompt" and info["reward_predicted"] is False and info["reward_note"] == NO_REWARD_NOTE
    _, reward, terminated, _, info = env.step(1)
    assert reward == 0.0 and terminated is False and info["reward_predicted"] is False and "reward_note" in info
    envs = WorldVectorEnv(2, world=tiny_world)
    envs.reset(seed=0)
    _, rewards, terminated, _, info = envs.step(np.zeros(2, dtype=np.int64))
    assert rewards.tolist() == [0.0, 0.0] and info["reward_predicted"].tolist() == [False, False]
    with pytest.raises(ValueError, match="start='real' needs a world with a bank"):
        WorldEnv(tiny_world, start="real")
    with pytest.raises(ValueError, match="start='real' needs a world with a bank"):
        env.reset(options={"start": "real"})
    with pytest.raises(ValueError, match="start='real' needs a world with a bank"):
        WorldVectorEnv(2, world=tiny_world, start="real")
    with pytest.raises(ValueError, match="start must be one of"):
        WorldEnv(tiny_world, start="random")
