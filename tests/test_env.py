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


def test_context_actions_through_reset_options():
    env = make_env()
    context = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)

    def first_step(**options):
        env.reset(seed=0, options={"context": context, **options})
        return env.step(0)[0]

    up, down = first_step(context_actions=[2, 2, 2, 2]), first_step(context_actions=[3, 3, 3, 3])
    assert not np.array_equal(up, down)  # the history's actions reached the world
    assert np.array_equal(up, first_step(context_actions=np.array([2, 2, 2, 2])))
    with pytest.raises(ValueError, match='needs "context" frames'):
        env.reset(seed=0, options={"context_actions": [2, 2]})


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


@pytest.mark.parametrize("frames, shape", [("chunk", (2, 32, 32, 3)), ("last", (32, 32, 3)), ("stack", (32, 32, 6))])
def test_frames_argument_shapes_the_observation(frames, shape):
    env = make_env(frames=frames)
    check_env(env.unwrapped)
    assert env.observation_space.shape == shape
    context = np.stack([np.full((32, 32, 3), v, dtype=np.uint8) for v in (10, 20, 30, 40)])
    obs, _ = env.reset(seed=0, options={"context": context})
    expected = {"chunk": context[-2:], "last": context[-1],
                "stack": np.concatenate([context[-2], context[-1]], axis=-1)}[frames]  # oldest frame first
    assert obs.shape == shape and np.array_equal(obs, expected)
    obs, *_ = env.step(1)
    assert obs.shape == shape and obs.dtype == np.uint8


def test_frames_argument_rejects_unknown_modes():
    with pytest.raises(ValueError, match="frames must be one of"):
        make_env(frames="rgb")


def test_vector_info_has_the_single_env_keys_with_masks():
    world = World.from_preset("tiny")
    perturb_(world.model)
    single = gymnasium.make("worldsdk/World-v0", world=world)
    _, reset_info = single.reset(seed=0)
    _, _, _, _, step_info = single.step(0)
    envs = gymnasium.make_vec("worldsdk/World-v0", num_envs=3, vectorization_mode="vector_entry_point", world=world,
                              max_episode_steps=2, frames="last")
    obs, info = envs.reset(seed=0)
    assert obs.shape == (3, 32, 32, 3)
    assert set(info) == set(reset_info) | {f"_{k}" for k in reset_info}
    assert list(info["prompt"]) == [reset_info["prompt"]] * 3 and info["_prompt"].all()
    _, _, _, _, info = envs.step(np.zeros(3, dtype=np.int64))
    assert set(info) == set(step_info) | {f"_{k}" for k in step_info}
    assert info["step"].tolist() == [step_info["step"]] * 3 and info["reward_predicted"].tolist() == [False] * 3
    envs.step(np.zeros(3, dtype=np.int64))  # truncates every env
    _, _, _, _, info = envs.step(np.zeros(3, dtype=np.int64))  # next-step autoreset: the reset info
    assert info["_prompt"].all() and info["start"].tolist() == ["prompt"] * 3
    assert "step" not in info or not info["_step"].any()


def test_vector_same_step_autoreset_reports_the_final_observation():
    world = World.from_preset("tiny")
    perturb_(world.model)
    envs = gymnasium.make_vec("worldsdk/World-v0", num_envs=2, vectorization_mode="vector_entry_point", world=world,
                              max_episode_steps=2, autoreset_mode="same_step")
    envs.reset(seed=0)
    _, _, _, truncated, info = envs.step(np.zeros(2, dtype=np.int64))
    first_step = info["step"].tolist()
    assert not truncated.any() and "final_obs" not in info
    obs, _, _, truncated, info = envs.step(np.ones(2, dtype=np.int64))
    assert truncated.all() and info["_final_obs"].all() and info["_prompt"].all()
    assert info["final_obs"][0].shape == (2, 32, 32, 3) and not np.array_equal(info["final_obs"][0], obs[0])
    assert info["final_info"]["step"].tolist() == [s + 1 for s in first_step]
    _, _, _, truncated, info = envs.step(np.zeros(2, dtype=np.int64))
    assert not truncated.any() and info["step"].tolist() == first_step  # the new episode's first step
