"""`worldsdk/RemoteWorld-v0` passes Gymnasium's checker, plays like `worldsdk/World-v0` and shapes `frames=` as it does."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldsdk  # noqa: F401  (registers the Gymnasium IDs)
from envs.remote_env import RemoteWorldEnv
from envs.world_env import NO_REWARD_NOTE, WorldEnv
from tests.conftest import assert_world_reacts, reactive_world
from tests.test_bridge_server import rewarded_world
from worldsdk.bridge import Server


@pytest.fixture(scope="module")
def server():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with Server(reactive_world(), "tcp://127.0.0.1:*").start() as server:
        yield server
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rewarded_server():
    """A world with a reward model and a bank of real starts (tests.test_bridge_server.rewarded_world)."""
    with Server(rewarded_world(), "tcp://127.0.0.1:*").start() as server:
        yield server


def test_remote_env_passes_check_env(server):
    env = gym.make("worldsdk/RemoteWorld-v0", address=server.address, render_mode="rgb_array", timeout_ms=10_000)
    check_env(env.unwrapped, skip_render_check=False)
    env.close()
    env.close()
    assert len(server.sessions) == 0


def test_remote_env_plays_like_the_local_env(server):
    reference = reactive_world()
    assert_world_reacts(reference)  # so equal observations show that actions and the prompt arrived
    remote = gym.make("worldsdk/RemoteWorld-v0", address=server.address, render_mode="rgb_array")
    local = gym.make("worldsdk/World-v0", world=reference, render_mode="rgb_array")
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


def test_remote_env_with_rewards_and_starts_passes_check_env(rewarded_server):
    env = gym.make("worldsdk/RemoteWorld-v0", address=rewarded_server.address, render_mode="rgb_array", timeout_ms=10_000)
    assert env.unwrapped.start == "real"
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


def test_remote_env_predicts_the_rewards_the_local_env_predicts(rewarded_server):
    remote = RemoteWorldEnv(rewarded_server.address, timeout_ms=10_000)
    local = WorldEnv(rewarded_world())
    events = set()
    for seed, options in ((3, None), (4, {"start": "prompt"}), (5, {"prompt": "pong, neon"}), (6, {"start": "real"})):
        (got, got_info), (want, want_info) = remote.reset(seed=seed, options=options), local.reset(seed=seed, options=options)
        np.testing.assert_array_equal(got, want)
        assert got_info.pop("session") == remote.client.session and got_info == want_info
        for action in (0, 1, 2, 3, 4, 5, 2, 3):
            got, reward, terminated, truncated, got_info = remote.step(action)
            want, want_reward, want_terminated, _, want_info = local.step(action)
            np.testing.assert_array_equal(got, want)
            assert isinstance(reward, float) and isinstance(terminated, bool) and truncated is False
            assert (reward, terminated) == (want_reward, want_terminated)
            assert got_info.keys() == want_info.keys() and got_info["reward_predicted"] is True
            np.testing.assert_array_equal(got_info["frame_rewards"], want_info["frame_rewards"])
            events.add((reward, terminated))
    assert len(events) > 2  # several rewards, and terminations too
    remote.close()


def test_remote_env_forwards_the_start_option(rewarded_server, server):
    bank = rewarded_world().start_frames
    env = RemoteWorldEnv(rewarded_server.address, timeout_ms=10_000, start="prompt")
    obs, info = env.reset(seed=0)
    assert info["start"] == "prompt" and "start_index" not in info
    obs, info = env.reset(seed=0, options={"start": "real"})
    assert info["start"] == "real" and info["prompt"] == f"p{info['start_index']}"
    np.testing.assert_array_equal(obs, bank[info["start_index"]][-2:])
    again, info2 = env.reset(seed=0, options={"start": "real"})
    assert info2["start_index"] == info["start_index"] and np.array_equal(again, obs)
    env.close()
    plain = RemoteWorldEnv(server.address, timeout_ms=10_000)
    _, info = plain.reset(seed=0)
    assert info["start"] == "prompt" and info["reward_predicted"] is False and info["reward_note"] == NO_REWARD_NOTE
    _, reward, terminated, _, info = plain.step(1)
    assert (reward, terminated, info["reward_predicted"]) == (0.0, False, False) and "frame_rewards" not in info
    with pytest.raises(ValueError, match="start='real' needs a world with a bank"):
        plain.reset(options={"start": "real"})
    plain.close()
    with pytest.raises(ValueError, match="start='real' needs a world with a bank"):
        RemoteWorldEnv(server.address, timeout_ms=10_000, start="real")


# -- frames= : RemoteWorld-v0 shapes observations exactly as World-v0 does ----------------------------

@pytest.mark.parametrize("frames", ["chunk", "last", "stack"])
def test_remote_env_frames_match_the_local_env(server, frames):
    reference = reactive_world()
    assert_world_reacts(reference)  # equal observations then show the actions arrived
    remote = gym.make("worldsdk/RemoteWorld-v0", address=server.address, frames=frames, timeout_ms=10_000)
    local = gym.make("worldsdk/World-v0", world=reference, frames=frames)
    chunk, height, width, channels = reference.observation_shape
    want_shape = {"chunk": (chunk, height, width, channels), "last": (height, width, channels),
                  "stack": (height, width, channels * chunk)}[frames]
    assert remote.observation_space == local.observation_space
    assert remote.observation_space.shape == want_shape
    got, _ = remote.reset(seed=7, options={"start": "prompt"})
    want, _ = local.reset(seed=7, options={"start": "prompt"})
    pairs = [(got, want)]
    for action in (2, 3, 3, 1):
        pairs.append((remote.step(action)[0], local.step(action)[0]))
    for got, want in pairs:
        assert got.shape == want_shape and got.dtype == np.uint8 and remote.observation_space.contains(got)
        np.testing.assert_array_equal(got, want)
    assert len({p[0].tobytes() for p in pairs}) > 1  # the steps changed the picture
    remote.close()
    local.close()


def test_remote_env_stack_is_the_chunk_on_channels(server):
    """"stack" holds every frame of the chunk, oldest first: unstacking it gives the "chunk" observation back."""
    stacked = gym.make("worldsdk/RemoteWorld-v0", address=server.address, frames="stack", timeout_ms=10_000)
    chunked = gym.make("worldsdk/RemoteWorld-v0", address=server.address, frames="chunk", timeout_ms=10_000)
    s, _ = stacked.reset(seed=2, options={"start": "prompt"})
    c, _ = chunked.reset(seed=2, options={"start": "prompt"})
    height, width = c.shape[1:3]
    np.testing.assert_array_equal(np.moveaxis(s.reshape(height, width, len(c), 3), 2, 0), c)
    np.testing.assert_array_equal(stacked.step(4)[0][..., -3:], chunked.step(4)[0][-1])
    stacked.close()
    chunked.close()


def test_remote_env_rejects_an_unknown_frames_mode_before_connecting():
    with pytest.raises(ValueError, match="frames must be one of"):
        gym.make("worldsdk/RemoteWorld-v0", address="tcp://127.0.0.1:9", frames="video")
