"""`worldsdk/RemoteWorld-v0` shapes observations with `frames=` exactly as `worldsdk/World-v0` does."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import worldsdk  # noqa: F401  (registers the Gymnasium IDs)
from tests.conftest import assert_world_reacts, reactive_world
from worldsdk.bridge import Server


@pytest.fixture(scope="module")
def server():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with Server(reactive_world(), "tcp://127.0.0.1:*").start() as server:
        yield server
    torch.set_num_threads(threads)


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
