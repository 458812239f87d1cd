"""Recording: policies, determinism, styles in the data, custom envs, and the CLI end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from worldsdk.config import ActionSpec
from worldsdk.data import EpisodeStore, apply_style, game_name, make_policy, record
from worldsdk.data.policies import PongPolicy
from worldsdk.data.recorder import make_env

REPO = Path(__file__).resolve().parents[1]


def _play(game: str, policy: str, steps: int, seed: int = 0):
    env, _ = make_env(f"ALE/{game.capitalize()}-v5")
    player = make_policy(policy, game)
    obs, _ = env.reset(seed=seed)
    player.reset(env, np.random.default_rng(seed))
    rewards, actions = [], []
    for _ in range(steps):
        action = player.act(obs, env)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        actions.append(action)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.asarray(rewards), np.asarray(actions)


def test_scripted_pong_keeps_rallies_longer_than_random():
    steps = 1500
    scripted, actions = _play("pong", "scripted", steps)
    random, _ = _play("pong", "random", steps)
    steps_per_point = lambda r: steps / max(np.count_nonzero(r), 1)  # noqa: E731
    assert steps_per_point(scripted) > 2 * steps_per_point(random)
    assert (scripted > 0).sum() >= 1  # it wins points too
    assert set(actions.tolist()) == set(range(6))  # epsilon exploration: every action appears


def test_scripted_breakout_serves_scores_and_uses_every_action():
    rewards, actions = _play("breakout", "scripted", 800)
    assert rewards.sum() >= 10
    assert set(actions.tolist()) == set(range(4))


def test_pong_policy_steers_towards_the_ball():
    class FakeEnv:
        class unwrapped:
            @staticmethod
            def get_action_meanings():
                return ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]

    policy = PongPolicy(epsilon=0.0)
    policy.reset(FakeEnv, np.random.default_rng(0))
    ram = np.zeros(128, np.uint8)
    ram[49], ram[54], ram[51] = 49 + 80, 14 + 150, 13 + 60  # ball low in the middle, paddle high
    assert policy.decide(ram)[0] in (3, 5)  # LEFT moves the paddle down
    ram[54], ram[51] = 14 + 40, 13 + 170  # ball high, paddle low
    policy.reset_game()
    assert policy.decide(ram)[0] in (2, 4)  # RIGHT moves it up


def test_recording_is_deterministic_and_styles_match_apply_style(tmp_path):
    kwargs = dict(policy="scripted", max_steps=60, seed=7)
    (a,) = record("ALE/Pong-v5", tmp_path / "a", 1, styles=["classic"], **kwargs)
    (b,) = record("ALE/Pong-v5", tmp_path / "b", 1, styles=["neon"], **kwargs)
    ea, eb = EpisodeStore(tmp_path / "a").read(a), EpisodeStore(tmp_path / "b").read(b)
    np.testing.assert_array_equal(ea.actions, eb.actions)
    np.testing.assert_array_equal(apply_style(ea.frames, "neon"), eb.frames)
    assert ea.frames.shape == (61, 64, 64, 3) and ea.actions[0] == 0 and ea.truncated[-1]
    assert (a.seed, a.prompt, b.prompt) == (b.seed, "pong, classic style", "pong, neon style")
    meta = EpisodeStore(tmp_path / "a").meta()
    assert (meta.frameskip, meta.fps, meta.action_meanings[:2]) == (4, 15.0, ("NOOP", "FIRE"))
    assert meta.action_spec == ActionSpec.discrete(6) and meta.env_kwargs["full_action_space"] is False


def test_styles_cycle_and_switch_mid_episode(tmp_path):
    records = record("ALE/Breakout-v5", tmp_path, 4, max_steps=40, style_switch_fraction=1.0, styles=["classic", "sepia"])
    assert [r.style for r in records] == ["classic", "sepia", "classic", "sepia"]
    store = EpisodeStore(tmp_path)
    for r in records:
        (switch,) = r.switch_frames
        assert 10 <= switch <= 31 and r.styles == (r.style, {"classic": "sepia", "sepia": "classic"}[r.style])
        prompts = store.read(r, with_frames=False).frame_prompts()
        assert prompts[switch - 1] == f"breakout, {r.styles[0]} style" and prompts[switch] == f"breakout, {r.styles[1]} style"


class TinyPixelEnv(gym.Env):
    """A square moved by a 2-d Box action, observed as 24x32 RGB pixels."""

    metadata = {"render_fps": 20}

    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 255, (24, 32, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self):
        frame = np.zeros((24, 32, 3), np.uint8)
        y, x = (int(v) for v in self.position)
        frame[y : y + 3, x : x + 3] = (255, 200, 0)
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(0, 20, 2)
        return self._obs(), {}

    def step(self, action):
        self.position = np.clip(self.position + 2 * np.asarray(action), 0, 20)
        return self._obs(), 0.0, False, False, {}


def test_custom_env_with_box_actions(tmp_path):
    env = gym.wrappers.TimeLimit(TinyPixelEnv(), 15)
    records = record(env, tmp_path, 2, size=(16, 16), game="squares", styles=["classic", "inverted"], frameskip=2)
    store = EpisodeStore(tmp_path)
    meta = store.meta()
    assert meta.action_spec == ActionSpec.box((2,)) and meta.fps == 10.0 and meta.game == "squares"
    episode = store.read(records[0])
    assert episode.frames.shape == (9, 16, 16, 3) and episode.actions.shape == (9, 2)  # 15 env steps, 2 per frame
    assert episode.terminated.sum() == 0 and episode.truncated[-1]
    assert records[1].prompt == "squares, inverted style"


def test_game_names():
    assert [game_name(e) for e in ("ALE/Pong-v5", "CarRacing-v3", "me/Blocks-v0")] == ["pong", "carracing", "blocks"]


def test_cli_records_and_appends(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "worldsdk.cli", "record", "--env", "ALE/Pong-v5", "--episodes", "1", "--out", str(out),
           "--max-steps", "12", "--policy", "scripted", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for expected in (1, 2):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
        assert result.returncode == 0, result.stderr
        assert f"the dataset holds {expected} episodes" in result.stdout
    records = EpisodeStore(out).verified_records()
    assert [(r.id, r.length) for r in records] == [(0, 13), (1, 13)]
    assert records[0].seed != records[1].seed


def test_cli_rejects_a_bad_size(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "worldsdk.cli", "record", "--env", "ALE/Pong-v5", "--episodes", "1", "--out", str(tmp_path), "--size", "big"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert result.returncode != 0 and "size" in result.stderr


def test_switch_fraction_is_met_over_any_run_of_episodes():
    from worldsdk.data.recorder import _switches

    for fraction in (0.1, 0.25, 0.5):
        for start in (0, 37):
            count = sum(_switches(e, fraction) for e in range(start, start + 40))
            assert abs(count - 40 * fraction) <= 2
    assert not any(_switches(e, 0.0) for e in range(50)) and all(_switches(e, 1.0) for e in range(50))
