"""Agents: the real game seen as the world sees it (spaces and frames equal the recorder's), the
policy's two views (pixels; objects checked against the real game's own pixels), GAE in closed form,
and smoke runs of examples/ppo_in_world.py on the tiny preset in both views."""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.conftest import ROOT, load_script
from worldsdk import World
from worldsdk.agents import (OBJECT_FEATURES, ObservationConfig, PolicyObservation, RealGameEnv, evaluate,
                             make_real_env, object_observation, pixel_observation, random_actor)
from worldsdk.config import ActionSpec
from worldsdk.data import DatasetMeta, EpisodeStore, record
from worldsdk.data.objects import find_balls, find_paddles, raw_to_frame
from worldsdk.data.recorder import frame_of, make_env
from worldsdk.data.resize import resize_frame
from worldsdk.data.styles import apply_style

EXAMPLE = ROOT / "examples" / "ppo_in_world.py"

# data/pong/meta.json as the recorder writes it for ALE/Pong-v5 (data/ is not part of the repository)
PONG_META = DatasetMeta(
    env_id="ALE/Pong-v5", game="pong", height=64, width=64, fps=15.0, action_spec=ActionSpec.discrete(6), frameskip=4,
    action_meanings=("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"),
    env_kwargs={"frameskip": 4, "repeat_action_probability": 0.0, "full_action_space": False, "obs_type": "rgb"},
)


@pytest.fixture(scope="module")
def ppo():
    yield load_script(EXAMPLE, "ppo_in_world")
    sys.modules.pop("ppo_in_world", None)


@pytest.fixture(scope="module")
def tiny():
    from tests.conftest import reactive_world

    return reactive_world()  # observations that depend on the policy's actions


# -- the policy's view ---------------------------------------------------------------------------


def test_pixel_observation_is_luma_in_unit_range():
    frames = np.zeros((3, 2, 4, 5, 3), np.uint8)
    frames[..., 0, 0, :] = 255
    frames[..., 1, 1, :] = (255, 0, 0)
    x = pixel_observation(frames)
    assert x.shape == (3, 2, 4, 5) and x.dtype == np.float32
    assert x[..., 0, 0] == pytest.approx(1.0) and x[..., 2, 2] == pytest.approx(0.0)
    assert x[..., 1, 1] == pytest.approx(0.299)
    with pytest.raises(ValueError):
        pixel_observation(frames.astype(np.float32))


PONG_BALL, PONG_PADDLE = (236, 236, 236), (92, 186, 92)  # the classic palette (worldsdk.data.objects.GAMES)
PLAYFIELD = slice(34, 194)  # raw rows between Pong's walls (which have the ball's colour)


@pytest.fixture(scope="module")
def pong_raw():
    """400 raw 210x160 ALE Pong frames under random actions, from a reset (a serve: no ball at first)."""
    game, _ = make_env("ALE/Pong-v5")
    observation, _ = game.reset(seed=0)
    rng = np.random.default_rng(0)
    raw = []
    for _ in range(400):
        observation, *_ = game.step(int(rng.integers(0, 6)))
        raw.append(frame_of(observation, game))
    game.close()
    return np.stack(raw)  # (400, 210, 160, 3)


def _recorded(raw: np.ndarray, style: str, size=(64, 64)) -> np.ndarray:
    """The recorder's pipeline (worldsdk.data.recorder; RealGameEnv applies the same): area resize, then the style."""
    return apply_style(np.stack([resize_frame(f, size) for f in raw]), style)


def _pixels(unit: np.ndarray, n: int) -> np.ndarray:
    """object_observation's [-1, 1] coordinates back to pixels of an n-pixel axis."""
    return (unit + 1.0) * n / 2.0 - 0.5


@pytest.mark.parametrize("style", ["classic", "neon"])
def test_object_observation_finds_the_ball_and_paddle_where_the_raw_game_draws_them(pong_raw, style):
    frames = _recorded(pong_raw, style)  # (400, 64, 64, 3)
    x = object_observation(frames[:, None], "pong", style)  # one-frame chunks: (400, 5)
    assert x.shape == (400, len(OBJECT_FEATURES)) and x.dtype == np.float32 and np.all(np.abs(x) <= 1)
    checked_balls = checked_absent = checked_paddles = 0
    for raw, (paddle_seen, paddle, ball_seen, ball_row, ball_col) in zip(pong_raw, x):
        ys, xs = np.nonzero((raw[PLAYFIELD] == PONG_BALL).all(-1))
        if len(ys) == 0:  # between a point and the serve: no ball, encoded as flag 0 and coordinates 0
            assert (ball_seen, ball_row, ball_col) == (0.0, 0.0, 0.0)
            checked_absent += 1
        elif len(ys) == 8:  # the whole 4x2 ball: its centre, in the 64x64 frame's pixels
            row, col = raw_to_frame((ys.mean() + PLAYFIELD.start, xs.mean()), (64, 64))
            assert ball_seen == 1.0
            assert abs(_pixels(ball_row, 64) - row) < 0.75 and abs(_pixels(ball_col, 64) - col) < 0.75
            checked_balls += 1
        rows = np.flatnonzero((raw[:, 140:144] == PONG_PADDLE).all(-1).any(-1))
        if len(rows) == 16:  # the whole paddle
            assert paddle_seen == 1.0 and abs(_pixels(paddle, 64) - raw_to_frame((rows.mean(), 0.0), (64, 64))[0]) < 0.5
            checked_paddles += 1
        elif len(rows) <= 4:  # hidden behind a wall: not seen
            assert (paddle_seen, paddle) == (0.0, 0.0)
    assert checked_balls > 200 and checked_absent > 20 and checked_paddles > 200
    assert x[0, 2] == 0.0, "the first frames after reset are a serve: no ball yet"


def test_object_observation_equals_the_finders_and_keeps_the_chunk_in_order(pong_raw):
    frames = _recorded(pong_raw[:120], "classic").reshape(3, 20, 2, 64, 64, 3)  # (batch, env, chunk, H, W, 3)
    x = object_observation(frames)
    assert x.shape == (3, 20, 2 * len(OBJECT_FEATURES))
    flat = frames.reshape(-1, 64, 64, 3)
    ball, paddle = find_balls(flat, "pong", "classic"), find_paddles(flat, "pong", "classic")[:, 0]
    per_frame = x.reshape(-1, len(OBJECT_FEATURES))  # frame order: batch, env, then the chunk's frames
    np.testing.assert_array_equal(per_frame[:, 2], ~np.isnan(ball[:, 0]))
    np.testing.assert_array_equal(per_frame[:, 0], ~np.isnan(paddle))
    np.testing.assert_allclose(per_frame[:, 3:5], np.nan_to_num(2 * (ball + 0.5) / 64 - 1), atol=1e-6)
    np.testing.assert_allclose(per_frame[:, 1], np.nan_to_num(2 * (paddle + 0.5) / 64 - 1), atol=1e-6)
    np.testing.assert_array_equal(object_observation(frames, style=None), x)  # detected style: classic


def test_observation_config_checks_mode_game_and_style():
    assert ObservationConfig("objects").shape(2, 64, 64) == (10,)
    assert ObservationConfig("pixels").shape(2, 64, 64) == (2, 64, 64)
    with pytest.raises(ValueError, match="pixels"):
        ObservationConfig("ram")
    with pytest.raises(KeyError, match="pong"):
        ObservationConfig("objects", game="carracing")
    with pytest.raises(KeyError):
        ObservationConfig("objects", style="plaid")
    ObservationConfig("pixels", game="carracing")  # the game matters to objects only


# -- the real game as the world sees it ----------------------------------------------------------


def test_real_env_spaces_equal_the_world_envs(tiny):
    world_env = gym.make("worldsdk/World-v0", world=tiny)
    real = make_real_env(world_env)
    assert real.observation_space == world_env.observation_space == gym.spaces.Box(0, 255, (2, 32, 32, 3), np.uint8)
    assert real.action_space == world_env.action_space
    obs, info = real.reset(seed=0)
    assert real.observation_space.contains(obs) and info["reward_predicted"] is False
    real.close()


@pytest.mark.parametrize("mode", ["objects", "pixels"])
def test_world_and_real_env_seen_through_one_observation_config_share_a_space(tiny, mode):
    config = ObservationConfig(mode)
    world_env = PolicyObservation(gym.make("worldsdk/World-v0", world=tiny), config)
    real = PolicyObservation(make_real_env(tiny), config)
    expected = (2 * len(OBJECT_FEATURES),) if mode == "objects" else (2, 32, 32)
    assert world_env.observation_space == real.observation_space
    assert world_env.observation_space.shape == expected and world_env.observation_space.dtype == np.float32
    for env in (world_env, real):
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        for action in (2, 3):
            obs, *_ = env.step(action)
            assert env.observation_space.contains(obs)
        assert env.render() is None or env.render().shape == (32, 32, 3)
    world_env.close()
    real.close()


def test_real_env_spaces_equal_a_pong_sized_worlds_for_the_pong_meta():
    small = World.from_preset("small", seed=0)  # a pong world's shapes: 64x64, chunk 2, Discrete(6)
    world_env = gym.make("worldsdk/World-v0", world=small)
    real = make_real_env(small, dataset=PONG_META)
    assert real.observation_space == world_env.observation_space
    assert real.action_space == world_env.action_space == gym.spaces.Discrete(6)
    settings = real.unwrapped.settings()
    assert settings["env_kwargs"] == dict(PONG_META.env_kwargs) and settings["frameskip"] == 4
    assert RealGameEnv(**settings).observation_space == real.observation_space  # settings rebuild the env
    with pytest.raises(ValueError, match="64x64"):
        make_real_env(World.from_preset("tiny"), dataset=PONG_META)


class _Scripted:
    """A recorder policy that plays a fixed list of actions."""

    def __init__(self, actions):
        self.actions = actions

    def reset(self, env, rng):
        self.t = 0

    def act(self, observation, env):
        self.t += 1
        return self.actions[self.t - 1]


@pytest.mark.parametrize("style", ["classic", "neon"])
def test_real_env_frames_equal_what_the_recorder_stores(tmp_path, style):
    chunk, size = 3, (40, 48)  # odd sizes so a swapped height/width shows
    rng = np.random.default_rng(0)
    held = [int(a) for a in rng.integers(0, 6, size=60)]
    script = [0] * (chunk - 1) + [a for a in held for _ in range(chunk)]  # the no-ops of the first chunk, then holds
    record("ALE/Pong-v5", tmp_path, 1, policy=_Scripted(script), size=size, max_steps=len(script), styles=(style,))
    store = EpisodeStore(tmp_path)
    rec = store.records()[0]
    episode = store.read(rec)
    assert len(episode) == len(script) + 1, "the scripted episode should not end early"

    real = make_real_env(dataset=tmp_path, style=style)
    real = RealGameEnv(**{**real.unwrapped.settings(), "chunk": chunk})
    obs, _ = real.reset(seed=rec.seed)
    np.testing.assert_array_equal(obs, episode.frames[:chunk])
    for k, action in enumerate(held):
        obs, reward, terminated, truncated, _ = real.step(action)
        lo = chunk + k * chunk
        np.testing.assert_array_equal(obs, episode.frames[lo : lo + chunk])
        assert reward == pytest.approx(float(episode.rewards[lo : lo + chunk].sum()))
        assert not (terminated or truncated)
    assert episode.rewards.any(), "the episode should contain a point, so rewards are compared too"
    real.close()


def test_real_env_pads_the_last_chunk_and_rejects_bad_actions():
    env = RealGameEnv(size=(32, 32), chunk=2)
    obs, _ = env.reset(seed=1)
    with pytest.raises(ValueError):
        env.step(6)
    act, score, terminated, steps = random_actor(env.action_space, seed=1), 0.0, False, 0
    while not terminated:  # a random agent loses 21-0 or close in ~400 steps
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        score, steps = score + reward, steps + 1
        assert obs.shape == (2, 32, 32, 3) and not truncated and steps < 2000
    assert -21 <= score <= -15
    env.close()


def test_evaluate_runs_capped_episodes_and_returns_scores():
    env = make_real_env(max_episode_steps=30)
    scores = evaluate(random_actor(env.action_space, seed=0), env, episodes=2, seed=3)
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and np.all(scores <= 1)
    env.close()


# -- PPO ------------------------------------------------------------------------------------------


def test_gae_closed_form(ppo):
    # one env, gamma = lambda = 1: an advantage is the rewards to the episode's end (plus the bootstrap
    # if truncated) minus the value; step 1 terminates (no bootstrap), step 3 truncates (bootstrap 10).
    r = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    v = torch.tensor([[0.5], [0.25], [1.0], [2.0]])
    next_v = torch.tensor([[0.25], [99.0], [2.0], [10.0]])
    terminated = torch.tensor([[0.0], [1.0], [0.0], [0.0]])
    done = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    adv = ppo.gae(r, v, next_v, terminated, done, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv[:, 0], torch.tensor([3.0 - 0.5, 2.0 - 0.25, 22.0 - 1.0, 18.0 - 2.0]))
    # lambda = 0: one-step TD errors
    adv0 = ppo.gae(r, v, next_v, terminated, done, gamma=0.5, lam=0.0)
    torch.testing.assert_close(adv0[:, 0], torch.tensor([1 + 0.125 - 0.5, 2 - 0.25, 4 + 1 - 1.0, 8 + 5 - 2.0]))


def _tiny_vec_env(world, num_envs=4, max_episode_steps=20):
    return gym.make_vec("worldsdk/World-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        world=world, max_episode_steps=max_episode_steps)


def _new_policy(ppo, env, seed=0, mode="pixels"):
    torch.manual_seed(seed)
    chunk, h, w, _ = env.single_observation_space.shape
    return ppo.ActorCritic(ppo.PolicyConfig(chunk, h, w, int(env.single_action_space.n), ObservationConfig(mode),
                                            channels=(8, 16, 16), hidden=32, mlp=(16, 16)))


def test_ppo_trains_on_the_tiny_world_and_the_saved_policy_acts_identically(ppo, tiny, tmp_path):
    env = _tiny_vec_env(tiny)
    policy = _new_policy(ppo, env)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    summary = ppo.train(env, policy, frames=2 * 4 * 32 * 2, cfg=ppo.PPOConfig(rollout_steps=32), seed=0, progress=False)
    assert summary["env_steps"] == 256 and summary["frames"] == 512
    assert summary["episodes"] == 4 * 3  # 20-step episodes and a reset step after each: 3 in 64 steps
    assert summary["env_frames_per_s"] > 0 and summary["reward_predicted"] is False
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items()), "the update changed nothing"

    real = make_real_env(env)
    path = ppo.save_policy(policy, tmp_path / "policy.safetensors", real.unwrapped.settings(), {"frames": summary["frames"]})
    loaded, meta = ppo.load_policy(path)
    assert meta["real_env"]["size"] == [32, 32] and meta["info"]["frames"] == 512
    frames, _ = env.reset(seed=5)
    policy.eval()
    with torch.no_grad():
        x = policy.observe(frames)
        assert torch.equal(x, torch.from_numpy(pixel_observation(frames)))  # (4, 2, 32, 32)
        for a, b in zip(policy(x), loaded(loaded.observe(frames))):
            assert torch.equal(a, b)
    np.testing.assert_array_equal(policy.act(frames, greedy=True), loaded.act(frames, greedy=True))
    np.testing.assert_array_equal(policy.act(frames, generator=torch.Generator().manual_seed(1)),
                                  loaded.act(frames, generator=torch.Generator().manual_seed(1)))
    obs, _ = real.reset(seed=0)
    assert loaded.act(obs[None]).shape == (1,)  # the real game's frames fit the world-trained policy
    env.close()
    real.close()


def test_ppo_trains_in_objects_mode_and_the_saved_policy_keeps_its_view(ppo, tiny, tmp_path):
    env = _tiny_vec_env(tiny, num_envs=2)
    policy = _new_policy(ppo, env, mode="objects")
    assert policy.config.input_shape == (2 * len(OBJECT_FEATURES),)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    summary = ppo.train(env, policy, frames=3 * 2 * 64 * 2, cfg=ppo.PPOConfig(rollout_steps=64), seed=0, progress=False)
    assert summary["env_steps"] == 384 and summary["env_frames_per_s"] > 0
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items()), "the update changed nothing"

    real = make_real_env(env)
    path = ppo.save_policy(policy, tmp_path / "policy.safetensors", real.unwrapped.settings(), {})
    loaded, meta = ppo.load_policy(path)
    assert meta["policy_config"]["observation"] == {"mode": "objects", "game": "pong", "style": "classic"}
    assert loaded.config == policy.config and loaded.config.observation == ObservationConfig("objects")
    frames, _ = env.reset(seed=5)
    policy.eval()
    with torch.no_grad():
        x = policy.observe(frames)
        torch.testing.assert_close(x, torch.from_numpy(object_observation(frames)))  # (2, 10)
        for a, b in zip(policy(x), loaded(loaded.observe(frames))):
            assert torch.equal(a, b)
    obs, _ = real.reset(seed=0)
    np.testing.assert_array_equal(policy.act(obs[None], greedy=True), loaded.act(obs[None], greedy=True))
    env.close()
    real.close()


def test_ppo_training_is_seeded(ppo, tiny):
    weights = []
    for _ in range(2):
        env = _tiny_vec_env(tiny, num_envs=2)
        policy = _new_policy(ppo, env)
        torch.manual_seed(0)
        ppo.train(env, policy, frames=2 * 16 * 2, cfg=ppo.PPOConfig(rollout_steps=16), seed=7, progress=False)
        weights.append(policy.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_ppo_example_command_line_trains_and_evaluates(ppo, tmp_path):
    world_out, real_out = tmp_path / "world", tmp_path / "real"
    common = ["--world", "tiny", "--num-envs", "4", "--frames", "512", "--rollout-steps", "32", "--quiet"]
    summary = ppo.main(["train", *common, "--max-episode-steps", "20", "--out", str(world_out)])  # objects, the default
    assert summary["frames"] == 512
    assert json.loads((world_out / "train.json").read_text())["trained_in"] == "world:tiny"
    ppo.main(["train", "--real", "--obs", "pixels", *common, "--frames", "256", "--out", str(real_out)])
    rows = ppo.main(["evaluate", str(world_out / "policy.safetensors"), str(real_out / "policy.safetensors"),
                     "--episodes", "1", "--max-episode-steps", "25", "--json", str(tmp_path / "eval.json"), "--quiet"])
    assert len(rows) == 3 and all(len(row["scores"]) == 1 for row in rows.values())
    assert rows[str(real_out / "policy.safetensors")]["trained_in"] == "real:ALE/Pong-v5"
    assert rows[str(world_out / "policy.safetensors")]["obs"] == "objects"
    assert rows[str(real_out / "policy.safetensors")]["obs"] == "pixels"
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["real_env"]["size"] == [32, 32] and "random" in report["agents"]
