"""Viewer speed: display frames/s and input-to-frame latency of `worldsdk play`, headless, on this machine.

Plays each world in real time (the world's fps) with the SDL dummy driver while a scripted player
presses and releases the world's keys at random moments; reports what the HUD measures (hud.py):

    python benchmarks/bench_viewer.py                       # tiny and small presets, 20 s each
    python benchmarks/bench_viewer.py --world pong --seconds 30 --threads 1 --json out.json
    python benchmarks/bench_viewer.py --world fake:0 fake:100   # no model: a session answering in 0 / 100 ms

Input-to-frame latency runs from a key press to the first shown frame of the first chunk generated
with an action sampled after it. Its floor is one step latency (the action is sampled just in time,
see game.py); when generation is slower than the display it grows by the wait for the step in flight.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


def bench(world: str, seconds: float, seed: int = 0) -> dict:
    import pygame

    from worldsdk.viewer.game import Game, GameConfig
    from worldsdk.viewer.keymap import key_label
    from worldsdk.viewer.session import open_session

    if world.startswith("fake:"):  # the viewer alone: frames of the small preset's size after a fixed delay
        from worldsdk.config import WORLD_PRESETS
        from worldsdk.viewer.testing import FakeSession

        session = FakeSession(WORLD_PRESETS["small"], delay=float(world.split(":")[1]) / 1000)
    else:
        session = open_session(world, seed=seed)
    game = Game(session, GameConfig())
    keys = sorted(game.keymap.keys)
    rng = random.Random(seed)
    game.start()
    try:
        while game.frame is None:  # the first chunk (reset) is not part of the measurement
            game.tick()
        game.stats = type(game.stats)()
        start = time.perf_counter()
        next_press, held = start + rng.uniform(0.3, 0.9), None
        while time.perf_counter() - start < seconds:
            now = time.perf_counter()
            if keys and now >= next_press:
                if held is not None:
                    pygame.event.post(pygame.event.Event(pygame.KEYUP, key=held, mod=0, unicode="", scancode=0))
                held = rng.choice(keys)
                pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=held, mod=0, unicode="", scancode=0))
                next_press = now + rng.uniform(0.4, 1.2)
            game.tick()
    finally:
        game.close()
        session.close()
    summary = game.stats.summary()
    summary.update(world=world, fps=session.spec.fps, chunk_frames=game.chunk_frames, seconds=seconds,
                   keys=[key_label(k) for k in keys])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", nargs="+", default=["tiny", "small"], help="presets, shipped worlds or paths")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: as `worldsdk play`, all cores but one)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from worldsdk.viewer.cli import generation_threads

    torch.set_num_threads(generation_threads(args.threads))
    results = []
    for world in args.world:
        r = bench(world, args.seconds)
        r["torch_threads"] = torch.get_num_threads()
        results.append(r)
        print(
            f"{world:>8}: display {r['display_fps']:5.1f}/{r['fps']:g} fps, generation {r['generation_fps']:6.1f} fps "
            f"(step {r['step_latency_ms_mean']:5.0f} ms, {r['chunk_frames']} frames), input->frame "
            f"mean {r['input_latency_ms_mean']:5.0f} p50 {r['input_latency_ms_p50']:5.0f} p95 {r['input_latency_ms_p95']:5.0f} ms "
            f"over {r['input_events_measured']} presses, {r['stalls']} stalls, torch threads {r['torch_threads']}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
