"""The rollout engine: samplers from the schedule, `stream_chunk`, and the step's result."""

import numpy as np
import pytest
import torch

from tests.conftest import perturb_
from worldsdk import World
from worldsdk import diffusion as D
from worldsdk.model import KVCache
from worldsdk.reward import RewardConfig, RewardModel
from worldsdk.rollout import EulerSampler, FewStepSampler, calls_per_chunk, stream_chunk


def _world(seed: int = 0) -> World:
    world = World.from_preset("tiny", seed=seed)
    perturb_(world.model, seed=seed)
    return world


def test_samplers_read_the_world_schedule():
    world = _world()
    schedule = world.spec.schedule
    assert torch.equal(torch.tensor(world.sampler.sigmas), schedule.student_sigmas())
    assert torch.equal(world.sigmas.cpu(), schedule.student_sigmas())
    euler = EulerSampler.from_schedule(schedule, 6, 2.0)
    assert torch.equal(torch.tensor(euler.sigmas), schedule.euler_sigmas(6)) and euler.sigmas[-1] == 0.0
    assert calls_per_chunk(world.sampler) == len(schedule.steps) + 1
    assert calls_per_chunk(euler) == 2 * (6 + 1)  # both guidance branches, each with its commit
    assert world.sampler.truncated(1).sigmas == world.sampler.sigmas[:2]
    with pytest.raises(ValueError):
        world.sampler.truncated(len(schedule.steps))


def test_the_world_step_is_one_stream_chunk_call():
    """A step of the World = stream_chunk with its sampler, its per-session noise and its cache."""
    world = _world()
    _, state = world.init_state(2, seeds=[3, 4])
    cache = KVCache.stack([state.cache])  # a copy of the same history
    generators = [torch.Generator().manual_seed(int(g.initial_seed())) for g in state.generators]
    for g, ref in zip(generators, state.generators):
        g.set_state(ref.get_state())
    features = world.frame_action_features([[2, 2], [5, 5]])
    result = world.step_features(state, features)
    mc = world.model.config
    shape = (mc.latent_channels, mc.frames_per_chunk, mc.latent_height, mc.latent_width)
    noise = lambda: torch.stack([torch.randn(shape, generator=g) for g in generators])  # noqa: E731
    with torch.inference_mode():
        x0 = stream_chunk(world.model, cache, features, world.sampler, noise)
    assert torch.equal(x0, result.latents)
    assert cache.lengths == state.cache.lengths == [2 * mc.frames_per_chunk] * 2
    assert torch.equal(cache.keys[0], state.cache.keys[0])


def test_stream_chunk_commits_only_when_asked_and_guidance_needs_its_branch():
    world = _world()
    mc = world.model.config
    _, state = world.init_state(1, seeds=[0])
    x = torch.randn(1, mc.latent_channels, mc.frames_per_chunk, mc.latent_height, mc.latent_width)
    features = world.frame_action_features([[1, 1]])
    before = list(state.cache.lengths)
    x0 = world.denoise_state(state, x, 0.5, features)
    assert state.cache.lengths == before  # a probe's prediction leaves the history alone
    with torch.inference_mode():
        v = world.model.denoise_chunk(x, D.sigma_to_t(torch.full((1, mc.frames_per_chunk), 0.5)), features, state.cache)
    assert torch.allclose(x0, x - 0.5 * v, atol=1e-6)
    with pytest.raises(ValueError, match="unconditional"):
        stream_chunk(world.model, state.cache, features, EulerSampler.from_schedule(world.spec.schedule, 3, 2.0),
                     lambda: torch.zeros_like(x))


def test_grad_last_only_keeps_the_values_and_back_propagates_one_pass():
    world = _world()
    model = world.model.train()
    mc = model.config
    cache = KVCache.empty(mc, 1, 1)
    with torch.no_grad():
        model.set_prompt(cache, 0, world.text_encoder.encode(["pong"]))
    x = torch.randn(1, mc.latent_channels, mc.frames_per_chunk, mc.latent_height, mc.latent_width)
    features = world.frame_action_features([[3, 3]])
    outs, calls = [], []
    hook = model.head.register_forward_hook(lambda m, i, o: calls.append(o.requires_grad))
    for grad_last_only in (False, True):
        torch.manual_seed(0)
        outs.append(stream_chunk(model, cache, features, world.sampler, lambda: torch.randn_like(x), x=x,
                                 commit=False, grad_last_only=grad_last_only))
    hook.remove()
    passes = len(world.sampler.sigmas)
    assert torch.allclose(outs[0], outs[1]) and outs[1].requires_grad
    assert calls == [True] * passes + [False] * (passes - 1) + [True]


def test_guided_sessions_keep_an_unconditional_cache_of_the_same_history():
    world = _world()
    context = world.reset(seed=1)
    sampler = EulerSampler.from_schedule(world.spec.schedule, 3, 3.0)
    _, state = world.init_state(1, seeds=[2], contexts=[context], sampler=sampler)
    assert state.uncond is not None and state.uncond.lengths == state.cache.lengths
    result = world.step_state(state, [2])
    assert result.state.sampler == sampler and state.uncond.lengths == state.cache.lengths == [2 * world.model.config.frames_per_chunk]
    assert not torch.equal(state.uncond.text_keys[0], state.cache.text_keys[0])  # the empty prompt's K/V
    _, plain = world.init_state(1, seeds=[2], contexts=[context])
    with pytest.raises(ValueError, match="sampled differently"):
        type(state).stack([state, plain])


def test_a_step_returns_its_rewards_and_the_old_pair_still_unpacks_with_a_warning():
    world = _world()
    mc = world.model.config
    torch.manual_seed(0)
    world.set_reward_model(perturb_(RewardModel(RewardConfig(
        latent_channels=mc.latent_channels, latent_height=mc.latent_height, latent_width=mc.latent_width,
        action_dim=mc.action_dim, channels=8, hidden=16)), 0.3))
    _, state = world.init_state(2, seeds=[1, 2])
    result = world.step_state(state, [1, 4])
    rewards, ends = world.predicted_rewards(result.state)
    assert result.rewards.shape == (2, mc.frames_per_chunk) and result.rewards.dtype == np.float32
    assert np.array_equal(result.rewards, rewards) and np.array_equal(result.terminated, ends)
    assert result.frames.shape == (2, *world.observation_shape)
    with pytest.warns(DeprecationWarning, match="result.frames"):
        frames, same = result
    assert frames is result.frames and same is result.state


def test_a_session_resets_in_its_slot_without_copying_the_batch(monkeypatch):
    """reset_sessions clears and refills one slot in place: the same frames and next steps as a fresh
    init_state session, the other slots' history untouched, no KVCache.stack on the way."""
    world = _world()
    _, state = world.init_state(3, seeds=[1, 2, 3])
    for _ in range(4):
        state = world.step_state(state, [2, 3, 4]).state
    buffers = state.cache.keys[0]
    kept = state.cache.keys[0][[0, 2]].clone()
    lengths = list(state.cache.lengths)
    stacked = []
    monkeypatch.setattr(KVCache, "stack", staticmethod(lambda caches: stacked.append(caches) or None))
    first = world.reset_sessions(state, [1], ["pong, classic colours"], [9])
    monkeypatch.undo()
    assert not stacked and state.cache.keys[0] is buffers
    assert torch.equal(state.cache.keys[0][[0, 2]], kept)
    fc = world.model.config.frames_per_chunk
    assert state.cache.lengths == [lengths[0], fc, lengths[2]] and state.steps[1] == 1 and state.seeds[1] == 9
    ref_first, ref = world.init_state(1, ["pong, classic colours"], [9])
    assert np.array_equal(first, ref_first)
    batched = world.step_state(state, [2, 5, 4]).frames[1]
    single = world.step_state(ref, [5]).frames[0]
    assert np.abs(batched.astype(int) - single.astype(int)).max() <= 1


def test_slots_reset_together_in_one_forward_per_run_of_neighbours(monkeypatch):
    """reset_sessions of several slots of an `empty_state` batch returns their first frames in the order
    asked, generated in one forward per run of neighbouring slots: bit for bit init_state's batch."""
    world = _world()
    want, ref = world.init_state(3, seeds=[4, 5, 6])
    state = world.empty_state(3)
    assert state.cache.lengths == [0, 0, 0] and state.prompts == [world.spec.default_prompt] * 3
    batches = []
    step = world.step_state
    monkeypatch.setattr(world, "step_state", lambda s, actions: batches.append(s.batch_size) or step(s, actions))
    got = world.reset_sessions(state, [2, 0, 1], seeds=[6, 4, 5])
    assert batches == [3]
    np.testing.assert_array_equal(got, want[[2, 0, 1]])
    assert state.seeds == [4, 5, 6] and state.cache.lengths == ref.cache.lengths and state.steps == [1, 1, 1]
    batches.clear()
    world.reset_sessions(state, [2, 0], seeds=[1, 2])
    assert batches == [1, 1]
    with pytest.raises(ValueError, match="distinct"):
        world.reset_sessions(state, [1, 1])


def test_a_view_of_neighbouring_slots_steps_them_in_place():
    """WorldState.view(start, stop) steps slots start..stop-1 through views of the batch's buffers, as the
    whole batch would step them; absorb takes their lengths back; the other slots are untouched."""
    world = _world()
    _, state = world.init_state(4, seeds=[1, 2, 3, 4])
    _, whole = world.init_state(4, seeds=[1, 2, 3, 4])
    keys, outside = state.cache.keys[0], state.cache.keys[0][[0, 3]].clone()
    part = state.view(1, 3)
    result = world.step_state(part, [2, 5])
    state.absorb(1, result.state)
    want = world.step_state(whole, [0, 2, 5, 1])
    assert state.cache.keys[0] is keys and torch.equal(state.cache.keys[0][[0, 3]], outside)
    fc = world.model.config.frames_per_chunk
    assert state.cache.lengths == [fc, 2 * fc, 2 * fc, fc] and state.steps == [1, 2, 2, 1]
    assert np.abs(result.frames.astype(int) - want.frames[1:3]).max() <= 1
    n = state.cache.lengths[1] * world.model.config.tokens_per_frame
    torch.testing.assert_close(state.cache.keys[0][1:3, :n], whole.cache.keys[0][1:3, :n], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="view"):
        state.cache.absorb(0, part.cache)


def test_a_world_with_context_noise_commits_its_history_noised_to_that_level(tmp_path):
    """WorldSpec.context_noise: every committed chunk (generated or real context) is noised with the
    session's own noise draws and committed under that timestep; 0 keeps the clean history."""
    from dataclasses import replace

    world = _world()
    world.spec = replace(world.spec, context_noise=0.25)
    mc = world.model.config
    context = np.random.default_rng(0).integers(0, 255, (mc.frames_per_chunk, 32, 32, 3), dtype=np.uint8)
    _, state = world.init_state(1, seeds=[3], contexts=[context])
    # the reference: the same history committed by hand, noised with the generator's draws
    g = torch.Generator().manual_seed(3)
    cache = KVCache.empty(mc, 1, world.spec.sink_frames)
    with torch.inference_mode():
        world.model.set_prompt(cache, 0, world.text_encoder.encode([world.spec.default_prompt]))
        latents = world.codec.encode_video(torch.from_numpy(context))
        noisy = D.add_noise(latents, torch.randn(latents.shape[1:], generator=g)[None], 0.25)
        t = torch.full((1, mc.frames_per_chunk), 250.0)
        world.model.commit_chunk(noisy, t, world.no_action_features(1), cache)
    assert torch.allclose(cache.keys[0][:, : cache.lengths[0] * mc.tokens_per_frame],
                          state.cache.keys[0][:, : state.cache.lengths[0] * mc.tokens_per_frame], atol=1e-5)
    # a generated chunk: stream_chunk's commit draws one more chunk of noise after the sampler's
    features = world.frame_action_features([[2, 2]])
    noise = lambda: torch.randn(1, *latents.shape[1:], generator=g)  # noqa: E731
    with torch.inference_mode():
        x0 = stream_chunk(world.model, cache, features, world.sampler, noise, commit_noise=0.25)
    result = world.step_features(state, features)
    assert torch.allclose(x0, result.latents, atol=1e-5)
    assert torch.allclose(cache.keys[0], state.cache.keys[0], atol=1e-5) and cache.lengths == state.cache.lengths
    # the level is part of the world: saved and loaded, and it changes what the world makes
    world.save(tmp_path / "noisy.safetensors")
    assert World.load(tmp_path / "noisy.safetensors").spec.context_noise == 0.25
    clean = replace(world.spec, context_noise=0.0)
    frames = []
    for spec in (world.spec, clean):
        world.spec = spec
        _, s = world.init_state(1, seeds=[3], contexts=[context])
        frames.append(world.step_features(s, features).latents)
    assert (frames[0] - frames[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"context_noise must be in \[0, 1\)"):
        replace(world.spec, context_noise=1.0)
