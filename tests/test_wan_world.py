"""A Wan world folder (Causal Forcing .pt, diffusers Wan VAE, UMT5 + tokenizer, world.json) through World and Gymnasium."""

import json

import numpy as np
import pytest
import torch

from tests.wan_parts import TINY_SPEC, make_world_folder
from worldsdk import World
from worldsdk.checkpoint import CheckpointError

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_world_folder(tmp_path_factory.mktemp("wan") / "world")


@pytest.fixture(scope="module")
def world(folder):
    return World.load(folder)


def test_folder_world_is_prompt_only_with_12_frame_chunks(world):
    assert world.spec == TINY_SPEC and str(world.action_space) == "Discrete(1)"
    assert world.chunk_frames == 12 and world.observation_shape == (12, 16, 32, 3)
    assert world.model.config.frames_per_chunk == 3 and world.info["trained"] is True
    first = world.reset(seed=0)
    assert first.shape == (12, 16, 32, 3) and first.dtype == np.uint8
    assert (first[:3] == first[3]).all()  # the first chunk's 9 frames are preceded by a hold of the first
    assert world.step(0).shape == (12, 16, 32, 3)
    with pytest.raises(ValueError, match=r"Discrete\(1\)"):
        world.step(1)


def test_same_seed_same_frames_and_prompts_matter(world):
    def rollout(seed, prompt=None, switch=None):
        frames = [world.reset(seed=seed, prompt=prompt), world.step(0)]
        if switch:
            world.set_prompt(switch)
        return np.stack(frames + [world.step(0)])

    a = rollout(3)
    assert np.array_equal(a, rollout(3)) and not np.array_equal(a, rollout(4))
    switched = rollout(3, switch="a dog jumps over the lake")
    assert world.prompt == "a dog jumps over the lake"
    assert np.array_equal(switched[:2], a[:2]) and not np.array_equal(switched[2], a[2])


def test_steps_decode_only_their_chunk_and_equal_decoding_the_whole_clip(world):
    """Streaming: the frames of consecutive steps are the whole latent clip decoded at once."""
    latents = []
    decode = world.codec.decode_chunk
    world.codec.decode_chunk = lambda z, states: (latents.append(z.clone()), decode(z, states))[1]
    try:
        frames = [world.reset(seed=5), world.step(0), world.step(0)]
    finally:
        del world.codec.decode_chunk
    assert [z.shape[2] for z in latents] == [3, 3, 3]
    codec = world.codec
    whole = codec.vae.decode(codec.denormalize(torch.cat(latents, dim=2))).sample[0]  # (3, 1 + 4 * 8, H, W)
    expected = ((whole + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    streamed = np.concatenate([frames[0][3:], frames[1], frames[2]])
    assert np.array_equal(streamed, expected)


def test_batched_sessions_match_single_sessions(world):
    seeds = [7, 8]
    singles = [np.stack([world.reset(seed=s), world.step(0)]) for s in seeds]
    frames, state = world.init_state(2, seeds=seeds)
    result = world.step_state(state, [0, 0])
    more, state = result.frames, result.state
    batched = np.stack([frames, more], axis=1)
    assert [d.frames for d in state.decoders] == [6, 6]
    for b in range(2):
        assert np.abs(batched[b].astype(int) - singles[b].astype(int)).max() <= 1


def test_context_primes_the_cache_and_the_decoder(world):
    context = np.random.default_rng(0).integers(0, 255, size=(27, 16, 32, 3), dtype=np.uint8)
    first = world.reset(seed=1, context=context)
    assert np.array_equal(first, context[-12:])
    assert world.state.cache.lengths == [6] and world.state.decoders[0].frames == 6  # 24 frames -> 6 latents
    assert world.step(0).shape == (12, 16, 32, 3)


def test_umt5_encoder_zeroes_padding_and_caches(world):
    text = world.text_encoder
    assert (text.text_len, text.text_dim) == (12, 16)
    features = text.encode(["a cat runs", "the  dog\njumps over the lake at dawn"])
    assert features.shape == (2, 12, 16)
    assert features[0, :4].abs().sum(-1).gt(0).all() and features[0, 4:].abs().sum() == 0  # 3 words + </s>
    assert features[1, :9].abs().sum(-1).gt(0).all() and features[1, 9:].abs().sum() == 0
    torch.testing.assert_close(text(["a cat runs"])[0], features[0])  # uncached and batched alone: same features
    encoder, text.encoder = text.encoder, None  # a cached prompt never reaches the encoder again
    try:
        assert torch.equal(text.encode(["a cat runs"])[0], features[0])
    finally:
        text.encoder = encoder


def test_gymnasium_env_over_a_folder_world(folder):
    import gymnasium

    env = gymnasium.make("worldsdk/World-v0", world=str(folder))
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (12, 16, 32, 3) and obs.shape == (12, 16, 32, 3)
    obs, reward, terminated, truncated, _ = env.step(0)
    assert env.observation_space.contains(obs) and not terminated
    env.close()


def test_wan_worlds_are_saved_as_folders_not_files(world, tmp_path):
    with pytest.raises(TypeError, match="a Wan world is a folder"):
        world.save(tmp_path / "w.safetensors")


def test_bad_world_folders_are_named(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder with a world.json"):
        World.load(tmp_path)
    from worldsdk.wan import open_world_parts

    with pytest.raises(FileNotFoundError, match="no world.json"):
        open_world_parts(tmp_path)
    manifest = json.loads((folder / "world.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("vae", "text_encoder", "tokenizer", "causal_forcing.pt"):
        (bad / name).symlink_to(folder / name)
    for change, pattern in (
        ({"format": "other"}, "expected format 'worldsdk-wan-world'"),
        ({"colour": "red"}, r"unknown entries \['colour'\]"),
        ({"world_spec": {**manifest["world_spec"], "action": {"kind": "discrete", "n": 4}}}, "prompt-only"),
        ({"transformer": "missing.pt"}, "missing.pt"),
    ):
        (bad / "world.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises((CheckpointError, FileNotFoundError), match=pattern):
            World.load(bad)
