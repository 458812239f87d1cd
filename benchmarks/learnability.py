"""The learnability benchmark: does a world predict the ball and the paddle from real history?

    python benchmarks/learnability.py --worlds pong,runs/lever/ctx/world.safetensors --data data/pong-fresh

For each world, `worldsdk.probe` noises every chunk of real clips (episodes the world never saw) to
each sigma and decodes the world's x0 given the real clean history: sigma 1 is "ball from history"
(dynamics alone), lower sigmas what the sampler's last steps can refine. Prints one Markdown table
and writes JSON; the autoencoder and repeat-the-last-frame rows are the same run's ceiling and floor.
Used to rank the levers of docs/worlds.md with short training runs (<= 20 minutes each).
"""

from __future__ import annotations

import argparse
import time

import torch

from worldsdk import World
from worldsdk.data.store import EpisodeStore
from worldsdk.evaluation import opposite_actions
from worldsdk.probe import PROBE_SIGMAS, load_clips, probe
from worldsdk.bench import write_results


def row(name: str, key: str, r: dict) -> str:
    return (f"| {name} | {key} | {r['ball_recall']:.0%} | {r['ball_false_positive']:.0%} | "
            f"{r['paddle_error_px']:.2f} | {r['paddle_within_2px']:.0%} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", required=True, help="comma-separated world names or files")
    parser.add_argument("--data", required=True, help="recordings the worlds never saw")
    parser.add_argument("--clips-per-episode", type=int, default=4)
    parser.add_argument("--sigmas", default=",".join(f"{s:g}" for s in PROBE_SIGMAS))
    parser.add_argument("--radius", type=float, default=4.0, help="ball hit radius, px")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="", help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    lines = ["| world | sigma | ball within 4 px | ball false pos. | paddle error (px) | paddle within 2 px |",
             "|---|---|---|---|---|---|"]
    meta = EpisodeStore(args.data).meta()
    keys = opposite_actions(meta.action_meanings, meta.game) if meta.action_meanings else None
    results = {}
    key_lines = ["", "| world | keys from history: paddle ends on the commanded side | separation (px) |", "|---|---|---|"]
    for name in args.worlds.split(","):
        world = World.load(name)
        clips = load_clips(args.data, world.model.config.latent_frames_max * world.autoencoder.config.temporal_stride,
                           args.clips_per_episode)
        started = time.perf_counter()
        r = probe(world, clips, sigmas, radius=args.radius, actions=keys)
        r["seconds"] = time.perf_counter() - started
        r["clips"] = len(clips.frames)
        results[name] = r
        for key, scores in r.items():
            if isinstance(scores, dict) and key != "keys":
                lines.append(row(name, key, scores))
        if "keys" in r:
            key_lines.append(f"| {name} | {r['keys']['pass_rate']:.0%} | {r['keys']['separation_px']:.2f} |")
    print("\n".join(lines + key_lines))
    if args.out:
        write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
