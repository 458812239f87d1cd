"""GPU-path options checked on the CPU: bf16 weights, the attention backend switch, torch.compile wiring."""

import numpy as np
import pytest
import torch

from tests.conftest import perturb_
from worldsdk import World
from worldsdk.model.attention import _flash_kernel, attention_backend, sdpa_attention


def rollout(world, steps=3):
    frames = [world.reset(seed=0)]
    return np.stack(frames + [world.step(a) for a in [2, 3, 1][:steps]])


def test_bf16_world_keeps_timestep_mlps_in_fp32_and_tracks_fp32():
    reference = perturb_(World.from_preset("tiny").model)  # same seed: same weights before the cast
    world = World.from_preset("tiny", dtype=torch.bfloat16)
    world.model.load_state_dict(reference.state_dict())
    model = world.model
    assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16 and model.patch_embedding.weight.dtype == torch.bfloat16
    assert model.time_embedding[0].weight.dtype == torch.float32 and model.action_embedding[0].weight.dtype == torch.float32
    assert model.rope.spatial.dtype == model.rope.inv_t.dtype == torch.float32  # RoPE angles never in bf16
    frames = rollout(world)
    assert world.state.cache.keys[0].dtype == torch.bfloat16 and frames.dtype == np.uint8
    fp32 = World.from_preset("tiny")
    fp32.model.load_state_dict(reference.state_dict())
    assert np.abs(frames.astype(int) - rollout(fp32)).mean() < 2  # bf16 rounding (~0.2), not another world (~35)


def test_attention_backends_on_cpu():
    assert attention_backend("sdpa") is sdpa_attention
    assert attention_backend("auto", "cpu") is sdpa_attention  # flash only on CUDA
    with pytest.raises(ValueError, match="unknown attention backend 'xformers'"):
        attention_backend("xformers")
    if _flash_kernel() is None:
        with pytest.raises(ImportError, match="flash-attn"):
            attention_backend("flash")
    else:  # installed: on CPU (or with a mask, or in fp32) it falls back to SDPA
        q, k, v = torch.randn(1, 5, 2, 8), torch.randn(1, 7, 2, 8), torch.randn(1, 7, 2, 8)
        torch.testing.assert_close(attention_backend("flash")(q, k, v, None), sdpa_attention(q, k, v, None))


def test_auto_attention_world_equals_default_on_cpu():
    a = World.from_preset("tiny", attention="auto")
    b = World.from_preset("tiny")
    assert a.model.blocks[1].cross_attn.attend is sdpa_attention
    assert np.array_equal(rollout(a, 1), rollout(b, 1))


def test_compile_wraps_every_block(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    world = World.from_preset("tiny", compile="max-autotune-no-cudagraphs")
    assert calls == [("Block", {"mode": "max-autotune-no-cudagraphs", "dynamic": True})] * world.model.config.num_layers
