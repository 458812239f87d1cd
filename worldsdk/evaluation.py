"""`worldsdk eval`: replay held-out real episodes in a world and compare what it generates with the game.

For each test episode and start point, the world gets the real frames before the start as context
and then the very actions the real game received (one per frame), and its frames are compared with
the real ones:
  fidelity   PSNR and SSIM at horizons 1, 4, 16, 64 frames;
  actions    how often the player's paddle moves the way the action commands (generated vs real);
  ball       recall and false positives of the ball, and its position error;
  motion     mean frame-to-frame change (the analogue of Dynamic Degree: a frozen world scores ~0);
  drift      long rollouts under random actions: colour-histogram distance to real frames over time;
  cost       model calls and wall time per generated frame.
Results go to JSON, a Markdown table and plots in `--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HORIZONS = (1, 4, 16, 64)


# ----------------------------------------------------------------------------------------------
# Frame metrics (pure functions of uint8 frames)
# ----------------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of uint8 images; inf for identical images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004) of two uint8 RGB images (H, W, 3), uniform window, valid region."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(a).double().permute(2, 0, 1)[None]  # (1, 3, H, W)
    y = torch.from_numpy(b).double().permute(2, 0, 1)[None]
    mean = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = mean(x), mean(y)
    vx, vy, cov = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def colour_histogram(frames: np.ndarray, bins: int = 8) -> np.ndarray:
    """Normalised joint RGB histogram (bins^3,) of uint8 frames (N, H, W, 3)."""
    q = (frames.reshape(-1, 3).astype(np.int64) * bins) // 256
    hist = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins**3).astype(np.float64)
    return hist / hist.sum()


def histogram_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance between two histograms, in [0, 1]."""
    return float(0.5 * np.abs(p - q).sum())


def motion(frames: np.ndarray) -> float:
    """Mean absolute frame-to-frame change (0-255 scale) of uint8 frames (N, H, W, 3)."""
    if len(frames) < 2:
        return 0.0
    return float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean())


def commanded_direction(meaning: str, game: str) -> int:
    """Paddle direction an ALE action commands along the paddle's axis (+1 down / right, -1 up / left)."""
    if "RIGHT" in meaning:
        return -1 if game == "pong" else 1  # Pong's RIGHT moves the paddle up
    if "LEFT" in meaning:
        return 1 if game == "pong" else -1
    return 0


# ----------------------------------------------------------------------------------------------
# Replays
# ----------------------------------------------------------------------------------------------


def replay(world, frames: np.ndarray, actions: np.ndarray, prompt: str, start: int, length: int, seed: int):
    """Generate `length` frames from real context frames[:start] and the real per-frame actions."""
    chunk = world.chunk_frames
    context = frames[max(0, start - world.model.config.latent_frames_max + chunk) : start]
    _, state = world.init_state(1, [prompt], [seed], [context])
    out = []
    for s in range(start, start + length, chunk):
        generated, state = world.step_frames_state(state, [[int(a) for a in actions[s : s + chunk]]])
        out.append(generated[0])
    return np.concatenate(out)[:length]


def evaluate(world, dataset_dir: str, episodes: int = 8, starts_per_episode: int = 2, horizon: int = 64,
             long_steps: int = 1000, seed: int = 0) -> dict:
    """All metrics of `world` on the test split of a recorded dataset."""
    from worldsdk.data.objects import find_balls, paddle_motion
    from worldsdk.data.splits import split_of
    from worldsdk.data.store import EpisodeStore

    store = EpisodeStore(dataset_dir)
    meta = store.meta()
    game = meta.game
    test = [r for r in store.records() if split_of(r.id) == "test"][:episodes]
    if not test:
        raise ValueError(f"{dataset_dir} has no test episodes")
    rng = np.random.default_rng(seed)
    chunk = world.chunk_frames
    per_h = {h: {"psnr": [], "ssim": []} for h in HORIZONS if h <= horizon}
    follow = {"generated": [], "real": []}
    ball = {"recall": [], "false_positive": [], "error": []}
    motions = {"generated": [], "real": []}
    real_frames_all = []
    cost_frames, cost_time = 0, 0.0
    for record in test:
        episode = store.read(record)
        frames, actions = episode.frames, np.asarray(episode.actions)
        real_frames_all.append(frames)
        first = world.model.config.latent_frames_max
        if len(frames) < first + horizon + 1:
            continue
        for _ in range(starts_per_episode):
            start = int(rng.integers(first, len(frames) - horizon)) // chunk * chunk
            started = time.perf_counter()
            gen = replay(world, frames, actions, episode.frame_prompts(start, start + 1)[0], start, horizon, int(rng.integers(2**31)))
            cost_time += time.perf_counter() - started
            cost_frames += len(gen)
            real = frames[start : start + horizon]
            for h in per_h:
                per_h[h]["psnr"].append(psnr(gen[h - 1], real[h - 1]))
                per_h[h]["ssim"].append(ssim(gen[h - 1], real[h - 1]))
            commanded = np.array([commanded_direction(meta.action_meanings[a], game) if meta.action_meanings else 0
                                  for a in actions[start + 1 : start + horizon]])
            for key, clip in (("generated", gen), ("real", real)):
                moved = paddle_motion(clip, game)
                valid = (commanded != 0) & ~np.isnan(moved)
                follow[key] += list(moved[valid] == commanded[valid])
                motions[key].append(motion(clip))
            rb, gb = find_balls(real, game), find_balls(gen, game)
            real_seen, gen_seen = ~np.isnan(rb[:, 0]), ~np.isnan(gb[:, 0])
            both = real_seen & gen_seen
            ball["recall"] += list(both[real_seen])
            ball["false_positive"] += list(gen_seen[~real_seen])
            ball["error"] += list(np.linalg.norm(rb[both] - gb[both], axis=1))
    drift = long_rollout_drift(world, np.concatenate(real_frames_all), long_steps, seed)
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
    calls_per_chunk = len(world.sigmas) + 1
    return {
        "world": world.info.get("source"), "dataset": str(dataset_dir), "game": game, "test_episodes": len(test),
        "replays": len(motions["real"]), "horizon": horizon,
        "fidelity": {str(h): {"psnr": mean(v["psnr"]), "ssim": mean(v["ssim"])} for h, v in per_h.items()},
        "action_following": {"generated": mean(follow["generated"]), "real": mean(follow["real"]),
                             "samples": len(follow["generated"])},
        "ball": {"recall": mean(ball["recall"]), "false_positive_rate": mean(ball["false_positive"]),
                 "position_error_px": mean(ball["error"])},
        "motion": {"generated": mean(motions["generated"]), "real": mean(motions["real"])},
        "drift": drift,
        "cost": {"model_calls_per_frame": calls_per_chunk / chunk,
                 "seconds_per_frame": cost_time / max(cost_frames, 1)},
    }


def long_rollout_drift(world, real_frames: np.ndarray, steps: int, seed: int, checkpoints=(10, 100, 500, 1000)) -> dict:
    """Histogram distance of generated frames to real frames along a long random-action rollout."""
    if steps <= 0:
        return {}
    reference = colour_histogram(real_frames)
    space = world.spec.action.to_space()
    space.seed(seed)
    chunk = world.chunk_frames
    start = len(real_frames) // 2 // chunk * chunk
    world.reset(seed=seed, context=real_frames[start - world.model.config.latent_frames_max + chunk : start])
    curve = {}
    for step in range(1, steps + 1):
        frames = world.step(space.sample())
        if step in checkpoints or step == steps:
            curve[str(step)] = histogram_distance(colour_histogram(frames), reference)
    return curve


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    f, a, b, m = results["fidelity"], results["action_following"], results["ball"], results["motion"]
    lines = [f"# Evaluation of {results['world']} on {results['game']}",
             "", f"{results['replays']} replays of {results['horizon']} frames from {results['test_episodes']} test episodes.", "",
             "| horizon | PSNR (dB) | SSIM |", "|---|---|---|"]
    lines += [f"| {h} | {v['psnr']:.2f} | {v['ssim']:.3f} |" for h, v in f.items()]
    lines += ["", "| metric | generated | real game |", "|---|---|---|",
              f"| paddle follows the action | {a['generated']:.1%} | {a['real']:.1%} |",
              f"| motion (mean abs frame change) | {m['generated']:.2f} | {m['real']:.2f} |",
              f"| ball recall | {b['recall']:.1%} | 100% |",
              f"| ball false positives | {b['false_positive_rate']:.1%} | 0% |",
              f"| ball position error (px) | {b['position_error_px']:.2f} | 0 |"]
    if results["drift"]:
        lines += ["", "| rollout step | histogram distance to real frames |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in results["drift"].items()]
    c = results["cost"]
    lines += ["", f"Cost: {c['model_calls_per_frame']:.2f} model calls and {1000 * c['seconds_per_frame']:.1f} ms per frame."]
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    hs = [int(h) for h in results["fidelity"]]
    axes[0].plot(hs, [results["fidelity"][str(h)]["psnr"] for h in hs], marker="o")
    axes[0].set(xscale="log", xlabel="horizon (frames)", ylabel="PSNR (dB)", title="fidelity")
    if results["drift"]:
        steps = [int(s) for s in results["drift"]]
        axes[1].plot(steps, list(results["drift"].values()), marker="o")
        axes[1].set(xscale="log", xlabel="rollout step", ylabel="histogram distance", title="drift")
    fig.tight_layout()
    fig.savefig(out / "eval.png", dpi=100)
    plt.close(fig)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", required=True, help="world to evaluate (name or path)")
    parser.add_argument("--data", required=True, help="recorded dataset of the same game (its test split is used)")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--starts", type=int, default=2, help="replays per episode")
    parser.add_argument("--horizon", type=int, default=64)
    parser.add_argument("--long-steps", type=int, default=1000, help="length of the drift rollout (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/eval", help="folder for eval.json, eval.md and eval.png")


def main(args: argparse.Namespace) -> int:
    from worldsdk.world import World

    world = World.load(args.world)
    results = evaluate(world, args.data, args.episodes, args.starts, args.horizon, args.long_steps, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "eval.md").write_text(markdown(results))
    plot(results, out)
    print(markdown(results))
    return 0
