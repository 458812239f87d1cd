"""`worldsdk/RemoteWorld-v0` passes Gymnasium's checker and plays like `worldsdk/World-v0`."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldsdk  # noqa: F401  (registers the Gymnasium IDs)
from worldsdk import World
from worldsdk.bridge import Server


@pytest.fixture(scope="module")
def server():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with Server(World.from_preset("tiny", seed=0), "tcp://127.0.0.1:*").start() as server:
        yield server
    torch.set_num_threads(threads)


def test_remote_env_passes_check_env(server):
    env = gym.make("worldsdk/RemoteWorld-v0", address=server.address, render_mode="rgb_array", timeout_ms=10_000)
    check_env(env.unwrapped, skip_render_check=False)
    env.close()
    env.close()
    assert len(server.sessions) == 0


def test_remote_env_plays_like_the_local_env(server):
    remote = gym.make("worldsdk/RemoteWorld-v0", address=server.address, render_mode="rgb_array")
    local = gym.make("worldsdk/World-v0", world=World.from_preset("tiny", seed=0), render_mode="rgb_array")
    assert remote.observation_space == local.observation_space and remote.action_space == local.action_space
    assert remote.metadata["render_fps"] == local.metadata["render_fps"]
    for env in (remote, local):
        env.action_space.seed(5)
    pairs = [(remote.reset(seed=3, options={"prompt": "pong, neon"})[0], local.reset(seed=3, options={"prompt": "pong, neon"})[0])]
    for t in range(4):
        if t == 2:
            remote.unwrapped.set_prompt("breakout")
            local.unwrapped.set_prompt("breakout")
        pairs.append((remote.step(remote.action_space.sample())[0], local.step(local.action_space.sample())[0]))
    for got, want in pairs:
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(remote.render(), local.render())
    remote.close()
    local.close()
