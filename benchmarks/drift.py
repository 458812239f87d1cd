"""How fast a world drifts away from the game when it is played: per-frame PSNR of replays and the
objects of long random-key rollouts, from recorded starts it never saw.

    python benchmarks/drift.py --world runs/pong4/pong-export.safetensors --data data/pong-fresh
    python benchmarks/drift.py --world runs/pong4/teacher-causal/world.safetensors --data data/pong-fresh \
        --sampler euler --euler-steps 8 --guidance 3

Replays: from `--replays` starts, one per episode, where the recording keeps one style (the real
frames before each as context, the recorded keys), the PSNR of every generated frame against the
recording, averaged over starts, and the gap between their mean pixels (a world that drifts in colour
widens it steadily). Long rollouts: from the middle of `--rollouts` episodes, random keys for `--steps`
chunks; at each checkpoint the last 10 chunks' colour histogram distance to their episode's frames and
their objects (`worldsdk.evaluation.object_rates`: no doubled objects, the player's paddle drawn, a
ball drawn), beside the same of the recording's own frames at those offsets. Prints Markdown and
writes JSON with `--out`. PSNR rises as a sampler blurs (fewer steps, less guidance): read it beside
the objects.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from worldsdk import World
from worldsdk.bench import write_results
from worldsdk.data.store import EpisodeStore
from worldsdk.evaluation import (SAMPLER_KINDS, Sampler, colour_histogram, evaluation_episodes, histogram_distance,
                                 object_rates, psnr, replay)

CHECKPOINTS = (10, 50, 100, 200, 500, 1000)


def steady_start(episode, first: int, horizon: int, chunk: int, context: int) -> int | None:
    """The first chunk-aligned start from `first` whose context and horizon keep one prompt (a recording
    whose style switches mid-replay would score the world for not knowing it); None if there is none."""
    ids = np.asarray(episode.prompt_ids)
    for start in range(first // chunk * chunk, len(ids) - horizon, chunk):
        if start >= context and len(set(ids[start - context : start + horizon].tolist())) == 1:
            return start
    return None


def replays(world, store, episodes, sampler: Sampler, count: int, horizon: int) -> dict:
    """Per-frame PSNR (mean over starts) and |mean pixel| gap between generated and real frames."""
    scores, means = [], []
    context = world.model.config.latent_frames_max - world.chunk_frames
    for i, record in enumerate(episodes):
        if len(scores) == count:
            break
        episode = store.read(record)
        frames, actions = episode.frames, np.asarray(episode.actions)
        start = steady_start(episode, min(200 + 37 * i, (len(frames) - horizon) // 2), horizon, world.chunk_frames, context)
        if start is None:
            continue
        generated = replay(world, frames, actions, episode.frame_prompts(start, start + 1)[0], start, horizon, i, sampler)
        real = frames[start : start + horizon]
        scores.append([psnr(g, r) for g, r in zip(generated, real)])
        means.append([float(np.abs(g.mean() - r.mean())) for g, r in zip(generated, real)])
    if not scores:
        raise ValueError(f"no episode has {context + horizon} frames in one style for a replay; record longer episodes")
    return {"psnr": np.mean(scores, axis=0).tolist(), "mean_pixel_gap": np.mean(means, axis=0).tolist()}


def segment_scores(frames: np.ndarray, reference: np.ndarray, game: str) -> list[float]:
    objects = object_rates(frames, game, None)
    return [histogram_distance(colour_histogram(frames), reference), objects["no_doubled_objects"],
            objects["player_paddle_present"], objects["ball_shown"]]


def rollouts(world, store, episodes, sampler: Sampler, count: int, steps: int, seed: int) -> dict:
    """Histogram distance and object rates of the last 10 chunks at each checkpoint, mean over episodes;
    beside them (`real`) the same of the recording's own frames at the same offsets, where it is that long."""
    space = world.spec.action.to_space()
    space.seed(seed)
    chunk = world.chunk_frames
    game = store.meta().game
    rows: dict[int, list] = {}
    real: dict[int, list] = {}
    for i, record in enumerate(episodes[:count]):
        episode = store.read(record)
        frames = episode.frames
        reference = colour_histogram(frames)
        start = len(frames) // 2 // chunk * chunk
        context = frames[start - world.model.config.latent_frames_max + chunk : start]
        session = sampler.start(world, episode.frame_prompts(start, start + 1)[0], seed + i, context)
        recent = []
        for step in range(1, steps + 1):
            recent = (recent + [session.step([space.sample()] * chunk)])[-10:]
            if step in CHECKPOINTS or step == steps:
                rows.setdefault(step, []).append(segment_scores(np.concatenate(recent), reference, game))
                first, last = start + (step - len(recent)) * chunk, start + step * chunk
                if last <= len(frames):
                    real.setdefault(step, []).append(segment_scores(frames[first:last], reference, game))
    keys = ("histogram_distance", "no_doubled_objects", "player_paddle_present", "ball_shown")
    mean = lambda table: {str(k): dict(zip(keys, np.mean(v, axis=0).tolist())) for k, v in sorted(table.items())}  # noqa: E731
    return {"world": mean(rows), "real": mean(real)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, help="world name or file")
    parser.add_argument("--data", required=True, help="recordings the world never saw")
    parser.add_argument("--sampler", default="auto", choices=SAMPLER_KINDS,
                        help="auto: the teachers' Euler + CFG sampler for a stage=teacher world, the world's own otherwise")
    parser.add_argument("--euler-steps", type=int, default=48)
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument("--replays", type=int, default=4, help="replay starts (one per episode)")
    parser.add_argument("--horizon", type=int, default=64, help="frames per replay")
    parser.add_argument("--rollouts", type=int, default=2, help="long rollouts (one per episode, 0: none)")
    parser.add_argument("--steps", type=int, default=200, help="chunks per long rollout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="", help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = World.load(args.world)
    sampler = Sampler(args.sampler, args.euler_steps, args.guidance).resolve(world)
    store = EpisodeStore(args.data)
    episodes, _ = evaluation_episodes(store)
    results = {"world": args.world, "sampler": sampler.describe(world),
               "replays": replays(world, store, episodes, sampler, args.replays, args.horizon),
               "rollouts": rollouts(world, store, episodes, sampler, args.rollouts, args.steps, args.seed)}
    print(f"{args.world}, {results['sampler']}\n")
    marks = [f for f in (1, 8, 16, 32, 48, 64) if f <= args.horizon]
    print("| replay frame | " + " | ".join(str(f) for f in marks) + " |\n|---|" + "---|" * len(marks))
    print("| PSNR (dB) | " + " | ".join(f"{results['replays']['psnr'][f - 1]:.1f}" for f in marks) + " |")
    print("| mean pixel gap | " + " | ".join(f"{results['replays']['mean_pixel_gap'][f - 1]:.1f}" for f in marks) + " |\n")
    print("| rollout chunk | histogram distance | no doubled objects | player's paddle | ball shown |\n|---|---|---|---|---|")
    for step, r in results["rollouts"]["world"].items():
        c = results["rollouts"]["real"].get(step)
        real = (lambda k, f: f" ({format(c[k], f)})" if c else "")  # noqa: E731
        print(f"| {step} | {r['histogram_distance']:.3f}{real('histogram_distance', '.3f')} | "
              f"{r['no_doubled_objects']:.0%}{real('no_doubled_objects', '.0%')} | "
              f"{r['player_paddle_present']:.0%}{real('player_paddle_present', '.0%')} | {r['ball_shown']:.0%}{real('ball_shown', '.0%')} |")
    print("\n(in brackets: the recording's own frames at the same offsets)")
    if args.out:
        write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
