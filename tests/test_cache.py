"""The rolling KV window: constant memory, bounded positions, sink frames kept, batching."""

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
