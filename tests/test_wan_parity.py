"""Our CausalDiT and diffusers' WanTransformer3DModel compute the same function with the same weights.

One documented difference: diffusers builds the timestep sinusoid in fp32, Wan2.1 (and we) in fp64.
At t ~ 1000 that moves the angles by ~1e-4 rad, so the tight comparison swaps in an fp64 sinusoid
for diffusers; without the swap the outputs still agree to 1e-4 of their scale.
"""

import math

import pytest
import torch

from worldsdk.checkpoint import load_state
from worldsdk.config import ModelConfig
from worldsdk.model import CausalDiT
from worldsdk.wan import diffusers_to_wan, infer_model_config

diffusers = pytest.importorskip("diffusers")


def fp64_timestep_embedding(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1, max_period=10000):
    """diffusers' get_timestep_embedding computed in fp64, as Wan2.1's sinusoidal_embedding_1d is."""
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float64, device=timesteps.device) / (half - downscale_freq_shift)
    angles = scale * timesteps[:, None].double() * torch.exp(exponent)[None]
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return torch.cat([emb[:, half:], emb[:, :half]], dim=-1) if flip_sin_to_cos else emb


@pytest.fixture(scope="module")
def pair():
    """diffusers' model with every parameter random, and ours loaded from its state dict."""
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=24, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, eps=1e-6,
    ).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    state = diffusers_to_wan(ref.state_dict())
    base = ModelConfig(latent_frames_max=6, latent_height=6, latent_width=8, text_len=7, frames_per_chunk=3)
    ours = CausalDiT(infer_model_config(state, base, num_heads=2)).eval()
    load_state(ours, state, "diffusers", "transformer")
    return ours, ref


def inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 3, 6, 8, generator=g)  # (B, C, F, H, W): 3 frames of 3x4 tokens
    text = torch.randn(2, 7, 24, generator=g)
    return x, text


@torch.no_grad()
def test_bidirectional_output_matches_diffusers(pair, monkeypatch):
    ours, ref = pair
    monkeypatch.setattr(diffusers.models.embeddings, "get_timestep_embedding", fp64_timestep_embedding)
    x, text = inputs()
    t = torch.tensor([937.5, 250.0])
    expected = ref(x, t, text).sample
    got = ours.forward_bidirectional(x, t[:, None].expand(-1, 3), text)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_per_frame_timesteps_match_diffusers_per_token_timesteps(pair, monkeypatch):
    """Our per-frame modulation equals diffusers' per-token one (its Wan2.2 TI2V path) with t repeated over tokens."""
    ours, ref = pair
    monkeypatch.setattr(diffusers.models.embeddings, "get_timestep_embedding", fp64_timestep_embedding)
    x, text = inputs()
    t = torch.tensor([[1000.0, 833.3, 0.0], [625.0, 3.0, 999.0]])  # (B, F)
    expected = ref(x, t.repeat_interleave(ours.config.tokens_per_frame, dim=1), text).sample
    torch.testing.assert_close(ours.forward_bidirectional(x, t, text), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_diffusers_own_fp32_sinusoid_differs_only_slightly(pair):
    ours, ref = pair
    x, text = inputs()
    t = torch.tensor([937.5, 250.0])
    expected = ref(x, t, text).sample
    got = ours.forward_bidirectional(x, t[:, None].expand(-1, 3), text)
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()
