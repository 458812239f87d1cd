"""Invariants of the causal DiT: cached streaming equals the block-causal forward, mask semantics."""

from dataclasses import replace

import pytest
import torch

from tests.conftest import perturb_
from worldsdk.config import MODEL_PRESETS
from worldsdk.model import CausalDiT, KVCache, block_causal_mask, teacher_forcing_mask


def make(frames_per_chunk=2, frames=8, **kw):
    config = replace(MODEL_PRESETS["tiny"], frames_per_chunk=frames_per_chunk, latent_frames_max=frames, **kw)
    torch.manual_seed(0)
    return perturb_(CausalDiT(config).eval())


def inputs(model, batch=2, frames=None, seed=1):
    cfg = model.config
    f = frames or cfg.latent_frames_max
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.latent_channels, f, cfg.latent_height, cfg.latent_width, generator=g)
    t = torch.rand(batch, f, generator=g) * 1000
    text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
    actions = torch.randn(batch, f, cfg.action_dim + 1, generator=g)
    return x, t, text, actions


def stream(model, x, t, text, actions, commit_x=None, commit_t=None):
    """Run chunk by chunk against a cache; commit either the same inputs or the given clean ones."""
    cfg = model.config
    b, f, c = x.shape[0], x.shape[2], cfg.frames_per_chunk
    cache = KVCache.empty(cfg, b, sink_frames=0)
    for i in range(b):
        model.set_prompt(cache, i, text[i : i + 1])
    outs = []
    for s in range(0, f, c):
        sl = slice(s, s + c)
        outs.append(model.denoise_chunk(x[:, :, sl], t[:, sl], actions[:, sl], cache))
        cx = x if commit_x is None else commit_x
        ct = t if commit_t is None else commit_t
        model.commit_chunk(cx[:, :, sl], ct[:, sl], actions[:, sl], cache)
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("chunk,frames", [(1, 6), (2, 8), (3, 9), (4, 8)])
@torch.no_grad()
def test_streaming_equals_block_causal_forward(chunk, frames):
    model = make(chunk, frames + chunk)  # the window holds all `frames` of history
    x, t, text, actions = inputs(model, frames=frames)
    full = model.forward_causal(x, t, text, actions)
    streamed = stream(model, x, t, text, actions)
    assert full.abs().mean() > 0.1  # a non-trivial output
    assert (full - streamed).abs().max() < 1e-4


@pytest.mark.parametrize("chunk,frames", [(1, 5), (2, 8), (3, 9)])
@torch.no_grad()
def test_streaming_with_clean_commits_equals_teacher_forcing(chunk, frames):
    model = make(chunk, frames + chunk)
    noisy, t, text, actions = inputs(model, frames=frames)
    clean = inputs(model, frames=frames, seed=7)[0]
    tf = model.forward_teacher_forcing(clean, noisy, t, text, actions)
    streamed = stream(model, noisy, t, text, actions, commit_x=clean, commit_t=torch.zeros_like(t))
    assert (tf - streamed).abs().max() < 1e-4


@torch.no_grad()
def test_teacher_forcing_noisy_chunk_ignores_later_chunks_and_its_own_clean_copy():
    model = make(2, 8)
    noisy, t, text, actions = inputs(model)
    clean = inputs(model, seed=7)[0]
    base = model.forward_teacher_forcing(clean, noisy, t, text, actions)
    # change chunk 1 (frames 2-3) of the clean copy: chunk 1's noisy output must not move, chunk 2's must
    clean2 = clean.clone()
    clean2[:, :, 2:4] += 1.0
    out = model.forward_teacher_forcing(clean2, noisy, t, text, actions)
    assert torch.allclose(out[:, :, :4], base[:, :, :4], atol=1e-5)
    assert (out[:, :, 4:] - base[:, :, 4:]).abs().max() > 1e-3
    # change the noisy copy of chunk 2: earlier chunks unchanged, chunk 2 changes, chunk 3 unchanged
    noisy2 = noisy.clone()
    noisy2[:, :, 4:6] += 1.0
    out = model.forward_teacher_forcing(clean, noisy2, t, text, actions)
    assert torch.allclose(out[:, :, :4], base[:, :, :4], atol=1e-5)
    assert torch.allclose(out[:, :, 6:], base[:, :, 6:], atol=1e-5)
    assert (out[:, :, 4:6] - base[:, :, 4:6]).abs().max() > 1e-3


@torch.no_grad()
def test_causal_forward_is_causal_and_bidirectional_is_not():
    model = make(2, 8)
    x, t, text, actions = inputs(model)
    x2 = x.clone()
    x2[:, :, 6:] += 1.0
    causal, causal2 = model.forward_causal(x, t, text, actions), model.forward_causal(x2, t, text, actions)
    assert torch.allclose(causal[:, :, :6], causal2[:, :, :6], atol=1e-5)
    bi, bi2 = model.forward_bidirectional(x, t, text, actions), model.forward_bidirectional(x2, t, text, actions)
    assert (bi[:, :, :6] - bi2[:, :, :6]).abs().max() > 1e-3


@torch.no_grad()
def test_per_frame_timesteps_and_actions_condition_their_own_frame():
    model = make(1, 4)
    x, t, text, actions = inputs(model, frames=4)
    base = model.forward_bidirectional(x, t, text, actions)
    a2 = actions.clone()
    a2[:, 2] += 1.0
    t2 = t.clone()
    t2[:, 2] += 100.0
    for out in (model.forward_bidirectional(x, t, text, a2), model.forward_bidirectional(x, t2, text, actions)):
        delta = (out - base).abs().amax(dim=(0, 1, 3, 4))  # per frame
        assert delta[2] > 1e-3


def test_masks_match_their_definition():
    m = block_causal_mask(4, 2, 1)
    assert m.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    tf = teacher_forcing_mask(4, 2, 1).int()
    # rows: clean 0-3, noisy 4-7; columns likewise
    assert tf[4].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]  # noisy chunk 0: only itself
    assert tf[6].tolist() == [1, 1, 0, 0, 0, 0, 1, 1]  # noisy chunk 1: clean chunk 0 + itself
    assert tf[:4, 4:].sum() == 0  # clean never sees noisy


@torch.no_grad()
def test_batched_items_with_different_history_lengths_match_single_items():
    model = make(2, 8)
    cfg = model.config
    x, t, text, actions = inputs(model, batch=2)
    singles = []
    caches = []
    for b, n_hist in enumerate([1, 3]):  # item 0 has 1 chunk of history, item 1 has 3
        cache = KVCache.empty(cfg, 1, sink_frames=0)
        model.set_prompt(cache, 0, text[b : b + 1])
        for s in range(n_hist):
            sl = slice(2 * s, 2 * s + 2)
            model.commit_chunk(x[b : b + 1, :, sl], t[b : b + 1, sl], actions[b : b + 1, sl], cache)
        caches.append(cache)
        singles.append(model.denoise_chunk(x[b : b + 1, :, 6:8], t[b : b + 1, 6:8], actions[b : b + 1, 6:8], cache))
    batched = KVCache.stack(caches)
    out = model.denoise_chunk(x[:, :, 6:8], t[:, 6:8], actions[:, 6:8], batched)
    assert (out - torch.cat(singles)).abs().max() < 1e-4


def test_bad_shapes_are_explained():
    model = make(2, 8)
    x, t, text, actions = inputs(model)
    with pytest.raises(ValueError, match="latents must be"):
        model.forward_causal(x[:, :2], t, text, actions)
    with pytest.raises(ValueError, match="timesteps must be"):
        model.forward_causal(x, t[:, :3], text, actions)
    with pytest.raises(ValueError, match="exceeds the trained length"):
        model.forward_causal(torch.cat([x, x], 2), torch.cat([t, t], 1), text, torch.cat([actions, actions], 1))


def test_wan_preset_has_the_paper_shapes():
    cfg = MODEL_PRESETS["wan-1.3b"]
    assert (cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.head_dim, cfg.num_layers) == (1536, 8960, 12, 128, 30)
    assert cfg.rope_split == (44, 42, 42) and cfg.tokens_per_frame == 1560 and cfg.tokens_per_chunk == 4680
    assert cfg.latent_frames_max * cfg.tokens_per_frame == 32760
    with torch.device("meta"):
        model = CausalDiT(cfg)
    assert 1.40e9 < model.num_parameters() < 1.44e9  # Wan2.1-T2V-1.3B has 1.419e9 parameters
