"""The Gymnasium contract of worldsdk/World-v0 (single and vectorised)."""

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import worldsdk  # noqa: F401  (registers the IDs)
from tests.conftest import perturb_
from worldsdk import World


def make_env(**kw):
    world = World.from_preset("tiny")
    perturb_(world.model)
    return gymnasium.make("worldsdk/World-v0", world=world, **kw)


def test_check_env_passes():
    env = make_env()
    check_env(env.unwrapped, skip_render_check=False)
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (2, 32, 32, 3), np.uint8)
    assert env.metadata["render_fps"] == 15 and isinstance(env.metadata["render_fps"], int)


def test_make_by_name_and_time_limit():
    env = gymnasium.make("worldsdk/World-v0", world="tiny", max_episode_steps=3)
    env.reset(seed=0)
    truncated = [env.step(0)[3] for _ in range(3)]
    assert truncated == [False, False, True]


def test_seeded_rollouts_are_deterministic():
    def run(seed):
        env = make_env()
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        out = [obs]
        for _ in range(4):
            out.append(env.step(env.action_space.sample())[0])
        return np.stack(out)

    assert np.array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_prompt_and_context_through_reset_options():
    env = make_env()
    context = np.full((4, 32, 32, 3), 77, dtype=np.uint8)
    obs, info = env.reset(seed=0, options={"prompt": "pong, neon style", "context": context})
    assert info["prompt"] == "pong, neon style" and np.array_equal(obs, context[-2:])
    _, reward, terminated, truncated, info = env.step(1)
    assert reward == 0.0 and info["reward_predicted"] is False and not terminated


def test_render_rgb_array_is_the_last_frame():
    env = make_env(render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert np.array_equal(env.render(), obs[-1])


def test_action_outside_the_space_is_named():
    env = make_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 9 is not in .*Discrete\(6\)"):
        env.step(9)


def test_vector_entry_point_steps_in_one_batch():
    envs = gymnasium.make_vec("worldsdk/World-v0", num_envs=4, vectorization_mode="vector_entry_point",
                              world="tiny", max_episode_steps=2)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (4, 2, 32, 32, 3) and obs.dtype == np.uint8
    truncs = []
    for _ in range(4):
        obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
        truncs.append(truncated.tolist())
    assert truncs[1] == [True] * 4 and truncs[2] == [False] * 4  # truncated, then autoreset on the next step
    assert obs.shape == (4, 2, 32, 32, 3)
