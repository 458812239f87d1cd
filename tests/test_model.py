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


def stream(model, x, t, text, actions, commit_x=None, commit_t=None, commit_clean=None):
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
        model.commit_chunk(cx[:, :, sl], ct[:, sl], actions[:, sl], cache,
                           clean=None if commit_clean is None else commit_clean[:, :, sl])
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("chunk,frames,context,skip,action_map,local,predictor", [
    (1, 6, 0, 0, False, 0, 0), (2, 8, 0, 0, False, 0, 0), (3, 9, 0, 0, False, 0, 0), (4, 8, 0, 0, False, 0, 0),
    (1, 6, 2, 0, False, 0, 0), (2, 8, 2, 0.3, False, 0, 0), (3, 9, 1, 0.5, False, 0, 0), (2, 8, 0, 0, True, 0, 0),
    (2, 8, 2, 0.3, True, 0, 0), (3, 9, 0, 0, False, 8, 0), (2, 8, 2, 0.3, True, 8, 0), (2, 8, 2, 0.3, False, 0, 8),
    (3, 9, 1, 0, False, 0, 8)])
@torch.no_grad()
def test_streaming_equals_block_causal_forward(chunk, frames, context, skip, action_map, local, predictor):
    # the window holds all `frames` of history
    model = make(chunk, frames + chunk, context_frames=context, context_skip=skip, action_map=action_map,
                 local_channels=local, predictor_channels=predictor, predictor_blocks=1)
    x, t, text, actions = inputs(model, frames=frames)
    full = model.forward_causal(x, t, text, actions)
    streamed = stream(model, x, t, text, actions)
    assert full.abs().mean() > 0.1  # a non-trivial output
    assert (full - streamed).abs().max() < 1e-4


@pytest.mark.parametrize("chunk,frames,context,skip,action_map,local,predictor", [
    (1, 5, 0, 0, False, 0, 0), (2, 8, 0, 0, False, 0, 0), (3, 9, 0, 0, False, 0, 0), (2, 8, 2, 0.3, False, 0, 0),
    (1, 5, 3, 0, False, 0, 0), (2, 8, 2, 0.3, True, 0, 0), (2, 8, 2, 0.3, True, 8, 0), (2, 8, 2, 0.3, True, 0, 8),
    (3, 9, 2, 0.3, False, 0, 8)])
@torch.no_grad()
def test_streaming_with_clean_commits_equals_teacher_forcing(chunk, frames, context, skip, action_map, local, predictor):
    model = make(chunk, frames + chunk, context_frames=context, context_skip=skip, action_map=action_map,
                 local_channels=local, predictor_channels=predictor, predictor_blocks=1)
    noisy, t, text, actions = inputs(model, frames=frames)
    clean = inputs(model, frames=frames, seed=7)[0]
    tf = model.forward_teacher_forcing(clean, noisy, t, text, actions)
    streamed = stream(model, noisy, t, text, actions, commit_x=clean, commit_t=torch.zeros_like(t))
    assert (tf - streamed).abs().max() < 1e-4


@torch.no_grad()
def test_context_frames_are_the_clean_frames_before_the_chunk():
    # A model with context frames must read exactly the last K clean frames before each chunk: changing
    # a frame inside that span changes the chunk's output, changing one before it (history reaches it
    # only through attention, which we cut by comparing the context pathway alone) does not.
    from worldsdk.model.dit import clip_context, recent_context

    x = torch.randn(1, 3, 6, 2, 2)
    ctx = clip_context(x, frames_per_chunk=2, context_frames=3)  # (1, 3 * 4, 6, 2, 2)
    assert ctx.shape == (1, 12, 6, 2, 2)
    # chunk 0 (frames 0, 1): nothing before it; chunk 1 (frames 2, 3): frames 0, 1 (and one missing);
    # chunk 2 (frames 4, 5): frames 1, 2, 3, oldest first.
    assert torch.equal(ctx[:, 9:, 0], torch.zeros(1, 3, 2, 2)) and torch.equal(ctx[:, :9, 1], torch.zeros(1, 9, 2, 2))
    assert torch.equal(ctx[0, 9:, 2, 0, 0], torch.tensor([0.0, 1.0, 1.0]))
    assert torch.equal(ctx[:, 3:6, 3], x[:, :, 0]) and torch.equal(ctx[:, 6:9, 3], x[:, :, 1])
    assert torch.equal(ctx[:, 0:3, 4], x[:, :, 1]) and torch.equal(ctx[:, 6:9, 5], x[:, :, 3])
    assert torch.equal(ctx[0, 9:, 5, 1, 1], torch.ones(3))
    # the streaming twin gives the same stack from the last three frames and their presence
    streamed = recent_context(x[:, :, 1:4], torch.ones(1, 3), chunk_frames=2)
    assert torch.equal(streamed, ctx[:, :, 4:6])


def test_skip_velocity_is_the_gaussian_posterior_mean():
    # x0 ~ N(m, s^2), x_t = (1 - sigma) x0 + sigma eps: the skip must be E[v | x_t], the least-squares
    # predictor of v = eps - x0, at every sigma (checked against a regression over samples), and
    # reduce to eps - m at sigma 1 and -x0 at sigma 0.
    from worldsdk.model.dit import skip_velocity

    g = torch.Generator().manual_seed(0)
    m, s = 0.7, 0.3
    for sigma in (0.1, 0.5, 0.9):
        x0 = m + s * torch.randn(2_000_000, generator=g, dtype=torch.float64)
        eps = torch.randn(2_000_000, generator=g, dtype=torch.float64)
        x_t = (1 - sigma) * x0 + sigma * eps
        v = eps - x0
        design = torch.stack([x_t, torch.ones_like(x_t)], 1)
        coef = torch.linalg.lstsq(design, v[:, None]).solution[:, 0]  # the best affine predictor
        probe = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
        shape = lambda z: z.view(1, 1, 3, 1, 1)  # noqa: E731  (B, C, F, H, W) with three "frames"
        got = skip_velocity(shape(probe), torch.full((1, 3), sigma), shape(torch.full((3,), m)), torch.ones(1, 3), s)
        assert torch.allclose(got.flatten().double(), coef[0] * probe + coef[1], atol=0.015), sigma  # sampling error ~0.003
    x = torch.randn(2, 3, 2, 4, 4, generator=g)
    ref = torch.randn(2, 3, 2, 4, 4, generator=g)
    ones = torch.ones(2, 2)
    assert torch.allclose(skip_velocity(x, ones, ref, ones, 0.3), x - ref, atol=1e-6)  # sigma 1: eps - m
    assert torch.allclose(skip_velocity(x, 0 * ones, ref, ones, 0.3), -x, atol=1e-6)  # sigma 0: -x0
    # no reference frame: the unit-variance prior around 0, whatever the reference tensor holds
    assert torch.allclose(skip_velocity(x, 0.5 * ones, ref, 0 * ones, 0.3), skip_velocity(x, 0.5 * ones, 0 * ref, 0 * ones, 1.0))


@torch.no_grad()
def test_an_untrained_model_with_a_skip_predicts_that_nothing_moved():
    # Zero head (the fresh model's init): from pure noise, x0 is the last context frame exactly.
    config = replace(MODEL_PRESETS["tiny"], latent_frames_max=8, context_frames=2, context_skip=0.3)
    torch.manual_seed(0)
    model = CausalDiT(config).eval()
    x, t, text, actions = inputs(model, frames=8)
    clean = inputs(model, frames=8, seed=3)[0]
    v = model.forward_teacher_forcing(clean, x, torch.full_like(t, 1000.0), text, actions)
    x0 = x - v
    for start in (2, 4, 6):  # every chunk after the first: the frame before its chunk
        for j in range(2):
            assert torch.allclose(x0[:, :, start + j], clean[:, :, start - 1], atol=1e-5)


@torch.no_grad()
def test_context_frames_stay_the_latest_frames_after_the_window_rolls():
    # Eviction shifts the KV window; the context frames must still be the last committed chunk, and the
    # next chunk must read them: streaming 9 chunks through a 3-chunk window, then changing only the
    # remembered frames changes the output, and restoring them restores it exactly.
    model = make(2, 8, context_frames=2)
    x, t, text, actions = inputs(model, batch=2, frames=20)
    cache = KVCache.empty(model.config, 2, sink_frames=2)
    for i in range(2):
        model.set_prompt(cache, i, text[i : i + 1])
    for s in range(0, 18, 2):
        model.commit_chunk(x[:, :, s : s + 2], torch.zeros(2, 2), actions[:, s : s + 2], cache)
    assert cache.total == [18, 18] and cache.lengths == [6, 6]
    assert torch.equal(cache.recent, x[:, :, 16:18]) and torch.equal(cache.recent_valid, torch.ones(2, 2))
    out = model.denoise_chunk(x[:, :, 18:20], t[:, 18:20], actions[:, 18:20], cache)
    kept = cache.recent.clone()
    cache.recent.add_(1.0)
    changed = model.denoise_chunk(x[:, :, 18:20], t[:, 18:20], actions[:, 18:20], cache)
    cache.recent.copy_(kept)
    assert (changed - out).abs().max() > 1e-3
    assert torch.equal(model.denoise_chunk(x[:, :, 18:20], t[:, 18:20], actions[:, 18:20], cache), out)
    # split views share the buffers; clear() forgets one item's frames only
    first, second = cache.split()
    second.push_recent(torch.zeros(1, model.config.latent_channels, 2, 8, 8))
    assert torch.equal(cache.recent[1], torch.zeros_like(cache.recent[1])) and torch.equal(cache.recent[0], kept[0])
    cache.clear(0)
    assert torch.equal(cache.recent_valid, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


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


@torch.no_grad()
def test_action_map_gives_each_place_its_own_response_to_the_action():
    model = make(2, 8, action_map=True)
    x, t, text, actions = inputs(model, frames=4)
    model.action_embedding[-1].weight.zero_()  # no adaLN path for the action: only the map carries it
    model.action_embedding[-1].bias.zero_()
    other = actions.clone()
    other[:, -1] += 1.0  # the last frame's action changes
    v, w = model.forward_causal(x, t, text, actions), model.forward_causal(x, t, text, other)
    assert (v[:, :, :2] - w[:, :, :2]).abs().max() == 0  # the earlier chunk cannot see it (causal)
    assert (v[:, :, 3] - w[:, :, 3]).abs().mean() > 1e-3  # the frame itself does
    model.action_map.zero_()  # and without the map nothing carries it
    assert torch.equal(model.forward_causal(x, t, text, actions), model.forward_causal(x, t, text, other))
    fresh = CausalDiT(replace(model.config)).eval()
    assert fresh.action_map is not None and not fresh.action_map.any()  # a new map starts as a no-op
    with pytest.raises(ValueError, match="action_map needs an action-conditioned model"):
        replace(model.config, action_dim=0)


@torch.no_grad()
def test_the_local_path_is_local_per_frame_and_starts_as_a_no_op():
    model = make(2, 8, context_frames=2, context_skip=0.3, local_channels=8, local_blocks=1)
    x, t, text, actions = inputs(model, frames=4)
    v = model.forward_causal(x, t, text, actions)
    path = lambda z, a=actions: model.local(z, v, model._clip_context(z), a, t / 1000)  # noqa: E731
    # one latent pixel of the last frame's noisy input changes the path's output near it: 4 convolutions of
    # 3x3 reach 4 px either side, and beyond them only the GroupNorm statistics carry it, far more weakly
    y = x.clone()
    y[:, :, 3, 0, 0] += 1.0
    change = (path(y) - path(x)).abs().amax(dim=(0, 1))  # (F, H, W)
    assert change[3, :2, :2].max() > 10 * max(change[3, 5:, :].max(), change[3, :, 5:].max())
    assert change[:3].max() == 0  # frames are independent of each other
    # each frame reads its own action and its own sigma
    other = actions.clone()
    other[:, 1] += 1.0
    assert (path(x, other) - path(x)).abs().amax(dim=(0, 1, 3, 4)).tolist()[0::2] == [0, 0]
    assert (path(x, other) - path(x))[:, :, 1].abs().max() > 1e-3
    # the model's v is the head's plus the path's; a new path's output is zero: a grown model computes what it did
    model.local.out.weight.zero_()
    model.local.out.bias.zero_()
    assert (model.forward_causal(x, t, text, actions) - v).abs().mean() > 1e-3
    fresh = CausalDiT(model.config).eval()
    assert not fresh.local.out.weight.any() and not fresh.local.out.bias.any()
    with pytest.raises(ValueError, match="local_channels"):
        replace(model.config, local_channels=12)


@torch.no_grad()
def test_the_history_predictor_reads_history_and_the_chunks_actions_and_is_the_skips_reference():
    model = make(2, 8, context_frames=2, context_skip=0.3, predictor_channels=8, predictor_blocks=1)
    x, t, text, actions = inputs(model, frames=8)
    clean = inputs(model, frames=8, seed=5)[0]
    context = model._clip_context(clean)
    predicted = model.predictor(context, actions)  # (B, C, F, H, W)
    # the frames of a chunk from the two clean frames before it and the chunk's own actions, nothing else
    later = clean.clone()
    later[:, :, 4:] += 1.0  # frames 4.. are history only for the chunk at 6
    moved = model.predictor(model._clip_context(later), actions) - predicted
    assert moved[:, :, :6].abs().max() == 0 and moved[:, :, 6:].abs().min() > 0
    other = actions.clone()
    other[:, 3] += 1.0  # the second frame of the chunk at 2: both of its frames read it, no other chunk does
    changed = (model.predictor(context, other) - predicted).abs().amax(dim=(0, 1, 3, 4))
    assert changed[2] > 1e-4 and changed[3] > 1e-4 and changed[[0, 1, 4, 5, 6, 7]].max() == 0
    # it is the skip's reference: with the trunk's head at zero, x0 at sigma 1 is the prediction
    model.head.head.weight.zero_()
    model.head.head.bias.zero_()
    v, prediction = model.forward_teacher_forcing(clean, x, torch.full_like(t, 1000.0), text, actions,
                                                  with_prediction=True)
    assert torch.allclose(prediction, predicted) and torch.allclose((x - v)[:, :, 2:], predicted[:, :, 2:], atol=1e-5)
    # a new predictor says "nothing moved" and a new embedding adds nothing: a grown model computes what it did
    plain = make(2, 8, context_frames=2, context_skip=0.3)
    grown = CausalDiT(replace(plain.config, predictor_channels=8, predictor_blocks=1)).eval()
    grown.load_state_dict(plain.state_dict(), strict=False)
    assert torch.equal(grown.predictor(context, actions)[:, :, 2:], clean[:, :, [1, 1, 3, 3, 5, 5]])
    assert torch.allclose(grown.forward_causal(x, t, text, actions), plain.forward_causal(x, t, text, actions), atol=1e-5)
    with pytest.raises(ValueError, match="predictor_channels"):
        replace(plain.config, context_frames=0, context_skip=0.0, predictor_channels=8)


@torch.no_grad()
def test_the_history_predictor_reads_the_history_before_its_noise_when_streaming_as_in_teacher_forcing():
    # GameNGen's noised history for the trunk, the clean frames for the predictor: a cache committed noised
    # with the clean chunk beside it equals teacher forcing with the noised history and predictor_history
    model = make(2, 10, context_frames=2, context_skip=0.3, predictor_channels=8, predictor_blocks=1)
    noisy, t, text, actions = inputs(model, frames=8)
    clean = inputs(model, frames=8, seed=7)[0]
    level = torch.full_like(t, 250.0)
    history = clean + 0.3 * inputs(model, frames=8, seed=9)[0]
    tf = model.forward_teacher_forcing(history, noisy, t, text, actions, clean_t=level, predictor_history=clean)
    streamed = stream(model, noisy, t, text, actions, commit_x=history, commit_t=level, commit_clean=clean)
    assert (tf - streamed).abs().max() < 1e-4
    noised_only = model.forward_teacher_forcing(history, noisy, t, text, actions, clean_t=level)
    assert (tf - noised_only).abs().max() > 1e-3  # the predictor's history is its own input
    # a sampler computes the chunk's prediction once (predict_chunk) and hands it to every step: the same v
    cache = KVCache.empty(model.config, 2, sink_frames=0)
    for i in range(2):
        model.set_prompt(cache, i, text[i : i + 1])
    model.commit_chunk(history[:, :, :2], level[:, :2], actions[:, :2], cache, clean=clean[:, :, :2])
    predicted = model.predict_chunk(actions[:, 2:4], cache)
    given = model.denoise_chunk(noisy[:, :, 2:4], t[:, 2:4], actions[:, 2:4], cache, prediction=predicted)
    assert torch.equal(given, model.denoise_chunk(noisy[:, :, 2:4], t[:, 2:4], actions[:, 2:4], cache))
    assert torch.allclose(predicted, model.predictor(model._clip_context(clean), actions)[:, :, 2:4], atol=1e-6)
    assert make(2, 8, context_frames=2).predict_chunk(actions[:, :2], cache) is None  # no predictor, nothing to do
