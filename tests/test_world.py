"""World runtime: determinism, batching, prompts, context, checkpoints."""

import numpy as np
import pytest
import torch

from tests.conftest import perturb_
from worldsdk import World
from worldsdk.checkpoint import CheckpointError


def rollout(world, seed, actions, prompt=None):
    frames = [world.reset(prompt=prompt, seed=seed)]
    frames += [world.step(a) for a in actions]
    return np.stack(frames)


def test_same_seed_and_actions_give_the_same_frames(tiny_world):
    actions = [0, 2, 2, 3, 1, 5, 4, 3]
    a = rollout(tiny_world, 3, actions)
    b = rollout(tiny_world, 3, actions)
    assert a.dtype == np.uint8 and a.shape == (9, 2, 32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, rollout(tiny_world, 4, actions))  # another seed, other noise
    other = rollout(tiny_world, 3, [0, 3, 3, 2, 1, 5, 4, 3])
    assert np.array_equal(a[:2], other[:2]) and not np.array_equal(a[2:], other[2:])  # actions matter from their step on


def test_batched_sessions_match_single_sessions(tiny_world):
    world = tiny_world
    seeds, actions = [11, 12, 13], [[2, 3, 1], [0, 0, 5], [4, 2, 2]]
    singles = [rollout(world, s, a) for s, a in zip(seeds, actions)]
    frames, state = world.init_state(3, seeds=seeds)
    batched = [frames]
    for step in range(3):
        result = world.step_state(state, [actions[b][step] for b in range(3)])
        state = result.state
        batched.append(result.frames)
    batched = np.stack(batched, axis=1)  # (B, steps, chunk, H, W, 3)
    for b in range(3):
        assert np.abs(batched[b].astype(int) - singles[b].astype(int)).max() <= 1
        assert (batched[b] != singles[b]).mean() < 1e-3


def test_stacking_sessions_of_different_ages(tiny_world):
    world = tiny_world
    _, old = world.init_state(1, seeds=[1])
    for _ in range(5):
        old = world.step_state(old, [2]).state
    _, young = world.init_state(1, seeds=[2])
    ref_old = world.step_state(_clone(old), [3]).frames
    ref_young = world.step_state(_clone(young), [1]).frames
    result = world.step_state(type(old).stack([old, young]), [3, 1])
    frames, state = result.frames, result.state
    assert np.abs(frames[0].astype(int) - ref_old[0]).max() <= 1
    assert np.abs(frames[1].astype(int) - ref_young[0]).max() <= 1
    assert state.cache.lengths == [6, 4]


def _clone(state):
    import copy

    clone = type(state).stack([state])  # stack copies the cache buffers
    clone.generators = [copy.deepcopy(g) for g in state.generators]
    return clone


def test_set_prompt_changes_what_the_world_shows(tiny_world):
    world = tiny_world
    base = rollout(world, 5, [2, 2, 2], prompt="pong, classic style")
    world.reset(prompt="pong, classic style", seed=5)
    world.step(2)
    world.set_prompt("pong, neon style")
    assert world.prompt == "pong, neon style"
    switched = [world.step(2), world.step(2)]
    assert not np.array_equal(np.stack(switched), base[2:])


def test_reset_from_context_returns_its_last_chunk_and_conditions_the_world(tiny_world):
    world = tiny_world
    rng = np.random.default_rng(0)
    context = rng.integers(0, 255, size=(5, 32, 32, 3), dtype=np.uint8)
    first = world.reset(seed=1, context=context)
    assert np.array_equal(first, context[-2:])
    assert world.state.cache.lengths == [4]  # two whole chunks, oldest frame dropped
    a = world.step(2)
    world.reset(seed=1, context=context[::-1].copy())
    assert not np.array_equal(a, world.step(2))
    with pytest.raises(ValueError, match="at least 2 frames"):
        world.reset(context=context[:1])
    with pytest.raises(ValueError, match="context must be uint8"):
        world.reset(context=context.astype(np.float32))


def test_context_actions_are_the_history_actions_of_the_kept_frames(tiny_world):
    world = tiny_world
    context = np.random.default_rng(0).integers(0, 255, size=(5, 32, 32, 3), dtype=np.uint8)

    def next_chunk(actions):
        _, state = world.init_state(1, seeds=[1], contexts=[context], context_actions=None if actions is None else [actions])
        return world.step_state(state, [0]).frames[0]

    base = next_chunk([2, 2, 2, 2, 2])
    assert not np.array_equal(base, next_chunk(None))  # committed under its actions, not under "no action"
    assert not np.array_equal(base, next_chunk([2, 2, 2, 2, 3]))  # the last frame's action is history
    assert np.array_equal(base, next_chunk([5, 2, 2, 2, 2]))  # frame 0 is dropped (whole chunks only), so is its action
    with pytest.raises(ValueError, match="one action per context frame"):
        next_chunk([2, 2])
    with pytest.raises(ValueError, match="need context frames"):
        world.init_state(1, context_actions=[[2, 2]])
    with pytest.raises(ValueError, match=r"Discrete\(6\)"):
        next_chunk([2, 2, 2, 2, 9])


def test_bad_actions_name_the_space_and_value(tiny_world):
    tiny_world.reset(seed=0)
    for bad in (6, -1, 1.5, "left", [1]):
        with pytest.raises(ValueError, match=r"Discrete\(6\)"):
            tiny_world.step(bad)


def test_save_and_load_round_trip(tiny_world, tmp_path):
    path = tiny_world.save(tmp_path / "w.safetensors", info={"note": "test"})
    loaded = World.load(path)
    assert loaded.spec == tiny_world.spec and loaded.model.config == tiny_world.model.config
    assert loaded.info["note"] == "test"
    assert np.array_equal(rollout(loaded, 2, [1, 2, 3]), rollout(tiny_world, 2, [1, 2, 3]))


def test_truncated_corrupt_and_mismatched_checkpoints_are_named(tiny_world, tmp_path):
    path = tiny_world.save(tmp_path / "w.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        World.load(truncated)
    corrupt = tmp_path / "corrupt.safetensors"
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupt.safetensors.*checksum"):
        World.load(corrupt)
    with pytest.raises(FileNotFoundError, match="no world 'nope'"):
        World.load("nope")
    # weights that do not fit the config: the error lists the keys
    from worldsdk import checkpoint

    tensors, meta = checkpoint.read(path)
    del tensors["model.head.head.weight"]
    tensors["model.extra"] = torch.zeros(1)
    checkpoint.atomic_save(tensors, meta, tmp_path / "mismatch.safetensors")
    with pytest.raises(CheckpointError, match=r"mismatch.safetensors.*missing keys \['head.head.weight'\].*unexpected keys \['extra'\]"):
        World.load(tmp_path / "mismatch.safetensors")


def test_random_preset_world_has_untrained_info():
    world = World.from_preset("tiny")
    assert world.info["trained"] is False and world.observation_shape == (2, 32, 32, 3)
    perturb_(world.model)


def test_the_reaction_check_fails_the_bare_preset_and_passes_the_perturbed_one():
    # The bare preset's zero head (adaLN-zero) makes its frames a function of the noise seed alone: the
    # check the contract tests run first must refuse it, or their equalities would prove nothing.
    import pytest

    from tests.conftest import assert_world_reacts, reactive_world

    with pytest.raises(AssertionError, match="action does not change"):
        assert_world_reacts(World.from_preset("tiny", seed=0))
    assert_world_reacts(reactive_world())
