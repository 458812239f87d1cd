"""`worldsdk bench`: speed and memory of the streaming world on this machine.

Measures (1) frames/s of `World.step` for the tiny and small presets, (2) the time of one cached
streaming step against recomputing the whole block-causal context at every denoising pass, at 8,
32 and 128 chunks of history, and (3) resident memory over a long episode with the rolling window.
Results are printed as a table and written as JSON. These are measurements, not tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def write_results(path: str | Path, results) -> Path:
    """Write a benchmark's results as indented JSON, making its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def open_world(name: str):
    """A preset (random weights, seeded) or anything `World.load` opens: a shipped world, a world file or folder."""
    from worldsdk.config import MODEL_PRESETS
    from worldsdk.world import World

    return World.from_preset(name) if name in MODEL_PRESETS else World.load(name)


def step_fps(preset: str, steps: int, batch_size: int = 1) -> dict:
    """Frames/s of World.step (batch_size sessions in one forward); `preset` may name any world."""
    world = open_world(preset)
    _, state = world.init_state(batch_size, seeds=list(range(batch_size)))
    actions = [world.spec.action.noop_action()] * batch_size
    for _ in range(3):  # warm-up, fills part of the window
        state = world.step_state(state, actions).state
    start = time.perf_counter()
    for _ in range(steps):
        state = world.step_state(state, actions).state
    elapsed = time.perf_counter() - start
    frames = steps * batch_size * world.chunk_frames
    return {"preset": preset, "batch_size": batch_size, "frames_per_s": frames / elapsed,
            "step_ms": 1000 * elapsed / steps, "chunk_frames": world.chunk_frames}


def cached_vs_recompute(preset: str, history_chunks: list[int], repeats: int = 3) -> list[dict]:
    """Seconds per step with the KV cache vs a block-causal forward over the whole history per pass."""
    from worldsdk.config import MODEL_PRESETS
    from worldsdk.model import CausalDiT, KVCache

    base = MODEL_PRESETS[preset]
    longest = max(history_chunks) + 1
    config = replace(base, latent_frames_max=(longest + 1) * base.frames_per_chunk)  # no eviction: pure history cost
    model = CausalDiT(config).eval()
    c, f = config.latent_channels, config.frames_per_chunk
    shape = (1, c, f, config.latent_height, config.latent_width)
    actions = torch.zeros(1, f, config.action_dim + 1)
    text = torch.zeros(1, config.text_len, config.text_dim)
    passes = 4
    rows = []
    with torch.inference_mode():
        for n in history_chunks:
            cache = KVCache.empty(config, 1, sink_frames=0)
            model.set_prompt(cache, 0, text)
            for _ in range(n):
                model.commit_chunk(torch.randn(shape), torch.zeros(1, f), actions, cache)
            history = torch.randn(1, c, n * f, config.latent_height, config.latent_width)

            def cached_step():
                x = torch.randn(shape)
                for _ in range(passes):
                    model.denoise_chunk(x, torch.full((1, f), 500.0), actions, cache)
                before = list(cache.lengths), list(cache.total)
                model.commit_chunk(x, torch.zeros(1, f), actions, cache)
                cache.lengths, cache.total = before  # keep the history length fixed across repeats

            def recompute_step():
                x = torch.cat([history, torch.randn(shape)], dim=2)
                t = torch.zeros(1, x.shape[2])
                t[:, -f:] = 500.0
                acts = actions[:, :1].expand(1, x.shape[2], -1)
                for _ in range(passes):
                    model.forward_causal(x, t, text, acts)

            timings = {}
            for label, fn in (("cached", cached_step), ("recompute", recompute_step)):
                fn()
                start = time.perf_counter()
                for _ in range(repeats):
                    fn()
                timings[label] = (time.perf_counter() - start) / repeats
            rows.append({"preset": preset, "history_chunks": n, "cached_s": timings["cached"],
                         "recompute_s": timings["recompute"], "speedup": timings["recompute"] / timings["cached"]})
            log.info("history %d chunks: cached %.4f s, recompute %.4f s", n, timings["cached"], timings["recompute"])
    return rows


def long_episode_memory(preset: str, chunks: int, sample_every: int = 100) -> dict:
    """RSS over a long episode under the rolling window: flat memory means constant-size state."""
    world = open_world(preset)
    world.reset(seed=0)
    noop = world.spec.action.noop_action()
    samples = []
    for i in range(chunks):
        world.step(noop)
        if i % sample_every == 0 or i == chunks - 1:
            samples.append((i, rss_mib()))
    after_warmup = [m for i, m in samples if i >= min(200, chunks // 4)]
    return {"preset": preset, "chunks": chunks, "rss_mib_start": samples[0][1], "rss_mib_peak": max(m for _, m in samples),
            "rss_mib_growth_after_warmup": max(after_warmup) - min(after_warmup),
            "cache_mib": world.state.cache.nbytes() / 2**20, "samples": samples}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke check, not a measurement)")
    parser.add_argument("--world", default=None, help="bench this world (a shipped name, a world file or folder, a preset) "
                        "instead of the tiny and small presets")
    parser.add_argument("--out", default=None, help="JSON file for the results (default benchmarks/results/world.json, "
                        "or runs/bench/<world>.json with --world)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small models run best on one)")


def main(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    quick = args.quick
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
    }
    if args.world is None:
        results["step"] = [step_fps("tiny", 5 if quick else 200), step_fps("small", 2 if quick else 30),
                           step_fps("small", 2 if quick else 10, batch_size=4)]
        results["cache"] = (cached_vs_recompute("tiny", [2, 4] if quick else [8, 32, 128], repeats=1 if quick else 3)
                            + ([] if quick else cached_vs_recompute("small", [8, 32], repeats=2)))
        results["memory"] = long_episode_memory("tiny", 50 if quick else 2000, sample_every=10 if quick else 100)
    else:  # the cache comparison rebuilds preset models with longer contexts, so it is for presets only
        results["step"] = [step_fps(args.world, 2 if quick else 30), step_fps(args.world, 2 if quick else 10, batch_size=4)]
        results["cache"] = []
        results["memory"] = long_episode_memory(args.world, 20 if quick else 500, sample_every=5 if quick else 50)
    default = "benchmarks/results/world.json" if args.world is None else f"runs/bench/{Path(args.world).stem}.json"
    out = write_results(args.out or default, results)
    print("World.step:")
    for r in results["step"]:
        print(f"  {r['preset']:6s} batch {r['batch_size']}: {r['frames_per_s']:8.1f} frames/s  ({r['step_ms']:.1f} ms/step)")
    print("cached streaming vs recomputing the context (4 passes + commit per step):")
    for r in results["cache"]:
        print(f"  {r['preset']:6s} history {r['history_chunks']:4d} chunks: cached {1000 * r['cached_s']:8.2f} ms, "
              f"recompute {1000 * r['recompute_s']:9.2f} ms, ratio {r['speedup']:6.1f}x")
    m = results["memory"]
    print(f"memory over {m['chunks']} chunks ({m['preset']}): RSS {m['rss_mib_start']:.0f} -> peak {m['rss_mib_peak']:.0f} MiB, "
          f"growth after warm-up {m['rss_mib_growth_after_warmup']:.1f} MiB, cache {m['cache_mib']:.2f} MiB")
    print(f"results: {out}")
    return 0
