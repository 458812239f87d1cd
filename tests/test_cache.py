"""The rolling KV window: constant memory, bounded positions, sink frames kept, batching."""

import pytest
import torch

from tests.conftest import perturb_
from worldsdk.config import MODEL_PRESETS
from worldsdk.model import CausalDiT, KVCache


def test_window_keeps_sink_frames_and_the_most_recent_ones():
    cfg = MODEL_PRESETS["tiny"]  # window = 8 - 2 = 6 frames
    cache = KVCache.empty(cfg, 1, sink_frames=1)
    t = cfg.tokens_per_frame

    def chunk(i):  # frames tagged with their absolute index
        k = torch.zeros(1, 2 * t, cfg.num_heads, cfg.head_dim)
        k[:, :t] = 2 * i
        k[:, t:] = 2 * i + 1
        return [k.clone() for _ in range(cfg.num_layers)]

    for i in range(10):
        cache.commit(chunk(i), chunk(i))
    assert cache.lengths == [6] and cache.total == [20]
    frames = cache.keys[0][0, : 6 * t : t, 0, 0].tolist()
    assert frames == [0, 15, 16, 17, 18, 19]  # sink frame 0, then the five most recent
    query, keys = cache.positions(2)
    assert query.tolist() == [[6, 7]] and keys.max() < cfg.latent_frames_max


@torch.no_grad()
def test_long_episode_runs_in_constant_memory_and_stays_finite(tiny_world):
    world = tiny_world
    world.reset(seed=0)
    cache = world.state.cache
    buffers = [x.data_ptr() for x in cache.keys + cache.values]
    nbytes = cache.nbytes()
    action = 0
    for i in range(2000):
        frames = world.step(action)
        action = (action + (i % 7 == 0)) % 6
    assert world.state.cache.total[0] == 2001 * 2
    assert world.state.cache.lengths[0] == world.state.cache.capacity_frames
    assert world.state.cache.nbytes() == nbytes
    assert [x.data_ptr() for x in world.state.cache.keys + world.state.cache.values] == buffers  # never reallocated
    assert all(bool(torch.isfinite(k).all()) for k in world.state.cache.keys)
    assert frames.shape == world.observation_shape and 0 < frames.std()


def test_stack_and_split_round_trip():
    cfg = MODEL_PRESETS["tiny"]
    model = perturb_(CausalDiT(cfg).eval())
    caches = []
    for n in (1, 2):
        cache = KVCache.empty(cfg, 1)
        for _ in range(n):
            model.commit_chunk(torch.randn(1, 4, 2, 8, 8), torch.zeros(1, 2), torch.zeros(1, 2, 7), cache)
        caches.append(cache)
    stacked = KVCache.stack(caches)
    assert stacked.lengths == [2, 4] and stacked.batch_size == 2
    for original, part in zip(caches, stacked.split()):
        assert part.lengths == original.lengths
        assert all(torch.equal(a, b) for a, b in zip(part.keys, original.keys))


def test_a_predictors_clean_history_is_kept_batched_viewed_and_cleared_with_the_rest():
    from dataclasses import replace

    cfg = replace(MODEL_PRESETS["tiny"], context_frames=2, context_skip=0.3, predictor_channels=8, predictor_blocks=1)
    model = perturb_(CausalDiT(cfg).eval())
    plain = KVCache.empty(replace(cfg, predictor_channels=0), 1)
    assert plain.recent_clean is None  # only a model with a history predictor keeps it
    caches = []
    for n in (1, 2):
        cache = KVCache.empty(cfg, 1)
        for i in range(n):
            clean = torch.full((1, 4, 2, 8, 8), float(10 * n + i))
            model.commit_chunk(clean + 0.5, torch.full((1, 2), 250.0), torch.zeros(1, 2, 7), cache, clean=clean)
        assert torch.equal(cache.recent, cache.recent_clean + 0.5)  # the noised frames beside the clean ones
        caches.append(cache)
    assert caches[0].nbytes() == plain.nbytes() + caches[0].recent_clean.numel() * 4
    stacked = KVCache.stack(caches)
    assert stacked.recent_clean[:, 0, :, 0, 0].tolist() == [[10.0, 10.0], [21.0, 21.0]]
    second = stacked.item(1)
    model.commit_chunk(torch.zeros(1, 4, 2, 8, 8), torch.zeros(1, 2), torch.zeros(1, 2, 7), second)
    assert stacked.recent_clean[1, 0, :, 0, 0].tolist() == [0.0, 0.0]  # written through the view, in place
    stacked.clear(0)
    assert not stacked.recent_clean[0].any() and stacked.recent_clean[1].shape == (4, 2, 8, 8)


# -- the rolled window against a reference that recomputes it --------------------------------------------


def rolling_model(chunk: int, sink: int, layers: int, context: int = 0) -> CausalDiT:
    """A perturbed tiny model whose window (at least sink + 2 chunks) rolls every chunk once full."""
    from dataclasses import replace

    config = replace(MODEL_PRESETS["tiny"], frames_per_chunk=chunk, latent_frames_max=chunk * (-(-sink // chunk) + 3),
                     num_layers=layers, context_frames=context)
    torch.manual_seed(0)
    return perturb_(CausalDiT(config).eval())


def record_commits(cache: KVCache) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Every frame's K/V as the model hands them to `cache.commit`, per frame: [(keys per layer, values per layer)]."""
    frames = []
    commit = cache.commit

    def recording(new_keys, new_values):
        t = cache.tokens_per_frame
        for f in range(new_keys[0].shape[1] // t):
            part = slice(f * t, (f + 1) * t)
            frames.append(([k[:, part].clone() for k in new_keys], [v[:, part].clone() for v in new_values]))
        commit(new_keys, new_values)

    cache.commit = recording
    return frames


def assert_window_is_sinks_and_latest(cache: KVCache, frames: list) -> None:
    """The cache holds the sink frames' K/V and then the latest ones', keys and values alike, in order."""
    total, t = len(frames), cache.tokens_per_frame
    held = min(total, cache.capacity_frames)
    window = frames[: min(cache.sink_frames, held)] + frames[total - (held - min(cache.sink_frames, held)) :]
    assert cache.lengths == [held] * cache.batch_size and cache.total == [total] * cache.batch_size
    for layer in range(cache.num_layers):
        for store, which in ((cache.keys, 0), (cache.values, 1)):
            want = torch.cat([f[which][layer] for f in window], dim=1)
            assert torch.equal(store[layer][:, : held * t], want), (layer, "keys" if which == 0 else "values")


@pytest.mark.parametrize("chunk,sink,context", [(1, 1, 0), (2, 1, 0), (2, 2, 2), (3, 2, 0), (2, 0, 1)])
@torch.no_grad()
def test_rolled_window_holds_the_sink_and_latest_keys_and_values(chunk, sink, context):
    model = rolling_model(chunk, sink, layers=2, context=context)
    cfg = model.config
    cache = KVCache.empty(cfg, 2, sink_frames=sink)
    frames = record_commits(cache)
    g = torch.Generator().manual_seed(1)
    for i in range(2):
        model.set_prompt(cache, i, torch.randn(1, cfg.text_len, cfg.text_dim, generator=g))
    for step in range(12):  # the window holds sink + 2 chunks: it rolls on every chunk from the third on
        x = torch.randn(2, cfg.latent_channels, chunk, cfg.latent_height, cfg.latent_width, generator=g)
        model.commit_chunk(x, torch.zeros(2, chunk), torch.randn(2, chunk, cfg.action_dim + 1, generator=g), cache)
        assert_window_is_sinks_and_latest(cache, frames)
    assert cache.total[0] == 12 * chunk > 3 * cache.capacity_frames


@pytest.mark.parametrize("chunk,sink", [(1, 1), (2, 1), (2, 2), (3, 2), (2, 0)])
@torch.no_grad()
def test_streaming_on_a_rolled_window_equals_recomputing_that_window(chunk, sink):
    # One layer: a frame's K/V depend on that frame alone, so the window can be recomputed from its clean
    # frames. The chunk's output must equal full attention over [sink frames, latest frames, chunk] at
    # window positions 0 .. L + chunk - 1, however many frames the episode has seen.
    model = rolling_model(chunk, sink, layers=1)
    cfg = model.config
    g = torch.Generator().manual_seed(2)
    steps = 12
    clean = torch.randn(2, cfg.latent_channels, steps * chunk, cfg.latent_height, cfg.latent_width, generator=g)
    noisy = torch.randn_like(clean)
    t = torch.rand(2, steps * chunk, generator=g) * 1000
    actions = torch.randn(2, steps * chunk, cfg.action_dim + 1, generator=g)
    text = torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)
    cache = KVCache.empty(cfg, 2, sink_frames=sink)
    for i in range(2):
        model.set_prompt(cache, i, text[i : i + 1])
    for step in range(steps):
        now = list(range(step * chunk, (step + 1) * chunk))
        held = min(step * chunk, cache.capacity_frames)
        kept = min(sink, held)
        window = list(range(kept)) + list(range(step * chunk - (held - kept), step * chunk)) + now
        streamed = model.denoise_chunk(noisy[:, :, now], t[:, now], actions[:, now], cache)
        x = torch.cat([clean[:, :, window[:-chunk]], noisy[:, :, now]], dim=2)
        times = torch.cat([torch.zeros(2, len(window) - chunk), t[:, now]], dim=1)
        reference = model.forward_bidirectional(x, times, text, actions[:, window])[:, :, -chunk:]
        assert (streamed - reference).abs().max() < 1e-4, step
        model.commit_chunk(clean[:, :, now], torch.zeros(2, chunk), actions[:, now], cache)
    assert cache.total[0] > 3 * cache.capacity_frames and reference.abs().mean() > 0.1


@torch.no_grad()
def test_the_shipped_world_steps_on_the_rolled_window(monkeypatch):
    # What the tests above verify is what a shipped world's episode runs on: its cache rolls (sink
    # frames from its spec) within a few steps and then holds the sink and latest frames' K/V.
    from worldsdk import World, shipped_worlds

    if "pong" not in shipped_worlds():
        pytest.skip("no shipped pong world in this checkout")
    world = World.load("pong")
    commits = []
    commit = KVCache.commit
    monkeypatch.setattr(KVCache, "commit", lambda self, k, v: commits.append(self) or commit(self, k, v))
    world.reset(seed=0)
    cache = world.state.cache
    frames = record_commits(cache)
    assert cache.sink_frames == world.spec.sink_frames
    steps = 2 * cache.capacity_frames // world.model.config.frames_per_chunk + 2
    for i in range(steps):
        world.step(i % 6)
        assert world.state.cache is cache and commits[-1] is cache  # one cache, appended to in place
    # the reset's first chunk was committed before recording: drop it from the reference's start
    first = world.model.config.frames_per_chunk
    assert cache.total[0] == first + len(frames) and cache.lengths[0] == cache.capacity_frames
    t, held = cache.tokens_per_frame, cache.capacity_frames
    latest = frames[len(frames) - (held - cache.sink_frames) :]
    for layer in range(cache.num_layers):
        for store, which in ((cache.keys, 0), (cache.values, 1)):
            want = torch.cat([f[which][layer] for f in latest], dim=1)
            assert torch.equal(store[layer][:, cache.sink_frames * t : held * t], want)


# -- attention over the window in place ---------------------------------------------------------------


def test_a_pass_attends_over_the_buffer_in_place_and_leaves_the_window_as_it_was():
    """Without gradients a chunk's K/V go into the buffer's free slots and attention reads a view of it (no
    copy of the history); with gradients into a copy of the window, which gives the same v bit for bit and
    keeps the buffer out of the autograd graph. Neither moves the lengths or touches the window."""
    model = rolling_model(2, 1, layers=2)
    cfg = model.config
    g = torch.Generator().manual_seed(3)
    latents = lambda b=2: torch.randn(b, cfg.latent_channels, 2, cfg.latent_height, cfg.latent_width, generator=g)  # noqa: E731
    actions = torch.randn(2, 2, cfg.action_dim + 1, generator=g)
    cache = KVCache.empty(cfg, 2, sink_frames=1)
    with torch.no_grad():
        for i in range(2):
            model.set_prompt(cache, i, torch.randn(1, cfg.text_len, cfg.text_dim, generator=g))
        for _ in range(5):  # the window rolls
            model.commit_chunk(latents(), torch.zeros(2, 2), actions, cache)
        cache.clear(1)
        model.commit_chunk(latents(), torch.zeros(2, 2), actions, cache)  # items of different lengths
    assert cache.lengths == [cache.capacity_frames, 2]
    t = cache.tokens_per_frame
    window = [k[b, : n * t].clone() for k in cache.keys + cache.values for b, n in enumerate(cache.lengths)]
    x, times = latents(), torch.rand(2, 2, generator=g) * 1000
    extended = []
    extend = cache.extend
    cache.extend = lambda layer, k, v: extended.append(extend(layer, k, v)) or extended[-1]
    with torch.no_grad():
        in_place = model.denoise_chunk(x, times, actions, cache)
    assert [k.data_ptr() for k, _ in extended] == [k.data_ptr() for k in cache.keys]  # views of the buffers
    extended.clear()
    copied = model.denoise_chunk(x, times, actions, cache)  # gradients on: a copy of the window
    assert all(k.data_ptr() != buffer.data_ptr() for (k, _), buffer in zip(extended, cache.keys))
    assert torch.equal(in_place, copied) and in_place.abs().mean() > 0.1
    assert cache.lengths == [cache.capacity_frames, 2]
    after = [k[b, : n * t] for k in cache.keys + cache.values for b, n in enumerate(cache.lengths)]
    assert all(torch.equal(a, b) for a, b in zip(window, after))
    x.requires_grad_(True)
    loss = model.denoise_chunk(x, times, actions, cache).square().mean()
    with torch.no_grad():  # the buffer is written again before the backward pass: no autograd error
        model.commit_chunk(x, torch.zeros(2, 2), actions, cache)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    del cache.extend
