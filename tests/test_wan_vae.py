"""The Wan VAE codec: chunk-by-chunk streaming decode equals decoding whole, per-session state, padding, encoding."""

import pytest
import torch

from tests.wan_parts import WAN_LIKE_VAE, tiny_vae
from worldsdk.wan import WanVAE

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def codec():
    return WanVAE(tiny_vae(config=WAN_LIKE_VAE))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8, as decode_chunk rounds."""
    return ((images + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)


def test_strides_and_statistics_come_from_the_vae_config(codec):
    assert (codec.config.latent_channels, codec.config.stride, codec.config.temporal_stride) == (4, 8, 4)
    z = torch.randn(1, 4, 2, 2, 2)
    torch.testing.assert_close(codec.normalize(codec.denormalize(z)), z)
    assert torch.allclose(codec.denormalize(torch.zeros(1, 4, 1, 1, 1)).flatten(), torch.tensor(WAN_LIKE_VAE["latents_mean"]))


@torch.no_grad()
def test_streaming_decode_equals_whole_decode(codec):
    z = torch.randn(2, 4, 6, 2, 4, generator=torch.Generator().manual_seed(0))  # two sessions, 6 latent frames
    whole = codec.vae.decode(codec.denormalize(z)).sample  # diffusers' own decode: (B, 3, 1 + 4 * 5, 16, 32)
    states = [codec.decoder_state() for _ in range(2)]
    chunks = [torch.stack(codec.decode_frames(z[:, :, s : s + 3], states)) for s in (0, 3)]
    assert [c.shape[2] for c in chunks] == [9, 12]  # 1 + 4 + 4, then 4 per latent frame
    assert torch.equal(torch.cat(chunks, dim=2), whole)
    assert [s.frames for s in states] == [6, 6]


@torch.no_grad()
def test_decode_chunk_pads_the_first_chunk_with_its_first_frame(codec):
    z = torch.randn(1, 4, 6, 2, 4, generator=torch.Generator().manual_seed(1))
    whole = codec.vae.decode(codec.denormalize(z)).sample[0]
    state = codec.decoder_state()
    first, second = codec.decode_chunk(z[:, :, :3], [state]), codec.decode_chunk(z[:, :, 3:], [state])
    assert first.shape == second.shape == (1, 12, 16, 32, 3) and first.dtype == torch.uint8
    assert torch.equal(first[0, :3], to_uint8(whole[:, :1]).expand(3, -1, -1, -1))  # the hold
    assert torch.equal(first[0, 3:], to_uint8(whole[:, :9]))
    assert torch.equal(second[0], to_uint8(whole[:, 9:]))


@torch.no_grad()
def test_sessions_of_different_ages_decode_in_one_call(codec):
    z = torch.randn(2, 4, 6, 2, 4, generator=torch.Generator().manual_seed(2))
    old, young = codec.decoder_state(), codec.decoder_state()
    codec.decode_chunk(z[:1, :, :3], [old])
    reference_old = codec.decode_chunk(z[:1, :, 3:], [old.copy()])  # copy(): the state is not consumed
    reference_young = codec.decode_chunk(z[1:, :, :3], [young.copy()])
    both = codec.decode_chunk(torch.cat([z[:1, :, 3:], z[1:, :, :3]]), [old, young])
    assert torch.equal(both[0], reference_old[0]) and torch.equal(both[1], reference_young[0])
    assert (old.frames, young.frames) == (6, 3)


@torch.no_grad()
def test_encode_video_inverts_the_padding(codec):
    frames = torch.randint(0, 255, (12, 16, 32, 3), dtype=torch.uint8)
    latents = codec.encode_video(frames)
    assert latents.shape == (1, 4, 3, 2, 4)
    video = frames[3:].permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0  # the first 3 frames are the hold
    expected = codec.normalize(codec.vae.encode(video).latent_dist.mean)
    torch.testing.assert_close(latents, expected)
    with pytest.raises(ValueError, match="multiple of 4 frames"):
        codec.encode_video(frames[:10])
