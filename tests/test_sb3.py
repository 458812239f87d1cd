"""worldsdk.sb3: Stable-Baselines3's VecEnv contract over the batched world env, and PPO learning in it."""

import numpy as np
import pytest

pytest.importorskip("stable_baselines3", reason="the sb3 extra is not installed")

from stable_baselines3 import PPO  # noqa: E402

from tests.conftest import assert_world_reacts, reactive_world  # noqa: E402
from worldsdk.sb3 import make_vec_env  # noqa: E402


@pytest.fixture
def world():
    return reactive_world()


def test_each_env_plays_its_own_action(world):
    # env b's frames follow env b's actions and no other env's: the batched step routes every action
    assert_world_reacts(world)

    def play(actions):
        venv = make_vec_env(world, num_envs=2, frames="chunk", monitor=False)
        venv.seed(3)
        venv.reset()
        return np.stack([venv.step(np.array(actions))[0] for _ in range(3)], axis=1)  # (2, steps, ...)

    base, other_second, other_first = play([0, 2]), play([0, 4]), play([5, 2])
    np.testing.assert_array_equal(base[0], other_second[0])
    np.testing.assert_array_equal(base[1], other_first[1])
    assert not np.array_equal(base[1], other_second[1]) and not np.array_equal(base[0], other_first[0])


def test_all_envs_step_in_one_batched_forward(world, monkeypatch):
    calls = []
    step_state = world.step_state
    monkeypatch.setattr(world, "step_state", lambda state, actions: calls.append(len(actions)) or step_state(state, actions))
    venv = make_vec_env(world, num_envs=4, frames="stack", monitor=False)
    obs = venv.reset()
    assert obs.shape == (4, 32, 32, 6) and obs.dtype == np.uint8
    calls.clear()  # reset generates the first chunks through the same batched call
    obs, rewards, dones, infos = venv.step(np.array([0, 1, 2, 3]))
    assert calls == [4] and obs.shape == (4, 32, 32, 6) and rewards.dtype == np.float32
    assert len(infos) == 4 and all(info["reward_predicted"] is False for info in infos)


def test_episode_end_carries_terminal_observation_and_time_limit_flag(world):
    venv = make_vec_env(world, num_envs=2, frames="last", max_episode_steps=2)
    venv.seed(3)
    venv.reset()
    _, _, dones, infos = venv.step(np.array([0, 0]))
    assert not dones.any() and "terminal_observation" not in infos[0]
    obs, _, dones, infos = venv.step(np.array([1, 1]))
    assert dones.all()
    for b, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is True and info["terminal_observation"].shape == (32, 32, 3)
        assert not np.array_equal(info["terminal_observation"], obs[b])  # obs is the next episode's first
        assert info["episode"]["l"] == 2  # VecMonitor saw the episode


def test_seeded_resets_are_deterministic(world):
    def first(seed):
        venv = make_vec_env(world, num_envs=2, frames="last")
        venv.seed(seed)
        return venv.reset()

    assert np.array_equal(first(1), first(1)) and not np.array_equal(first(1), first(2))


def test_ppo_trains_in_a_world(world):
    venv = make_vec_env(world, num_envs=2, frames="last", max_episode_steps=4)
    model = PPO("MlpPolicy", venv, n_steps=4, batch_size=4, n_epochs=1, seed=0, device="cpu")
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=8)
    assert model.num_timesteps == 8
    assert any(not np.allclose(a.numpy(), b.detach().numpy()) for a, b in zip(before, model.policy.parameters()))
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (2,)
