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

A world is sampled the way its training meant it to be (`Sampler`): students with their few-step
sampler (the world's own `step`), teachers (a world file written by stage=teacher) with the PF-ODE
sampler their ODE pairs came from: 48 Euler steps with classifier-free guidance, the unconditional
branch (empty text features, no action) keeping its own KV cache (`causal_ode_pairs`' blockwise-KV
CFG). Loaded as a plain World, a teacher would run the students' 4-step re-noising sampler, which it
was never trained for. Replay starts and noise seeds are drawn per episode, so a run with fewer
replays per episode evaluates a prefix of a longer run's replays (the ablation's teacher rows).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

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
# Samplers and rollouts
# ----------------------------------------------------------------------------------------------

SAMPLER_KINDS = ("auto", "few_step", "euler")


@dataclass(frozen=True)
class Sampler:
    """How each chunk is generated: `few_step` is the world's own sampler (its spec's denoising steps,
    no guidance); `euler` integrates the PF-ODE in `steps` Euler steps with CFG scale `guidance` (the
    teachers' sampler; `auto` picks it for a world written by stage=teacher)."""

    kind: str = "auto"
    steps: int = 48
    guidance: float = 6.0

    def __post_init__(self):
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"sampler kind must be one of {SAMPLER_KINDS}, got {self.kind!r}")
        if self.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")

    def resolve(self, world) -> "Sampler":
        """`auto` -> `euler` for a teacher world, `few_step` for any other."""
        if self.kind != "auto":
            return self
        return Sampler("euler" if world.info.get("stage") == "teacher" else "few_step", self.steps, self.guidance)

    def calls_per_chunk(self, world) -> int:
        """Model forward passes per chunk (denoising passes plus the commit of the clean chunk)."""
        if self.resolve(world).kind == "few_step":
            return len(world.sigmas) + 1
        branches = 1 if self.guidance == 1.0 else 2
        return branches * (self.steps + 1)

    def describe(self, world) -> str:
        s = self.resolve(world)
        if s.kind == "few_step":
            return f"{len(world.sigmas)}-step few-step sampler"
        return f"{s.steps}-step Euler PF-ODE, CFG {s.guidance:g}"

    def start(self, world, prompt: str, seed: int, context: np.ndarray) -> "Rollout":
        """A session of `world` continuing from real context frames (N, H, W, 3), N >= one chunk."""
        if self.resolve(world).kind == "few_step":
            return Rollout(world, prompt, seed, context)
        return GuidedEulerRollout(world, prompt, seed, context, self.steps, self.guidance)


class Rollout:
    """One session sampled by the world's own few-step sampler; `step` takes one action per frame."""

    def __init__(self, world, prompt: str, seed: int, context: np.ndarray):
        self.world = world
        _, self.state = world.init_state(1, [prompt], [seed], [context])

    def step(self, frame_actions: Sequence) -> np.ndarray:
        """Frames (chunk, H, W, 3) of the next chunk under one action per latent frame."""
        frames, self.state = self.world.step_frames_state(self.state, [list(frame_actions)])
        return frames[0]


class GuidedEulerRollout(Rollout):
    """One session sampled like the teachers' ODE pairs (`trainers.objectives.causal_ode_pairs`): Euler
    steps of v_uncond + g (v_cond - v_uncond), the unconditional branch (zero text features, zero
    action features) attending to its own cache of the same clean history."""

    def __init__(self, world, prompt: str, seed: int, context: np.ndarray, steps: int, guidance: float):
        from worldsdk.diffusion import euler_sigmas
        from worldsdk.model import KVCache

        super().__init__(world, prompt, seed, context)  # the conditional cache, with the context committed
        self.guidance = guidance
        self.sigmas = euler_sigmas(steps, world.spec.timestep_shift).to(world.device)
        model, cfg = world.model, world.model.config
        self.null_cache = None
        if guidance != 1.0:
            with torch.inference_mode():
                param = next(model.parameters())
                self.null_cache = KVCache.empty(cfg, 1, world.spec.sink_frames, device=world.device, dtype=param.dtype)
                model.set_prompt(self.null_cache, 0, torch.zeros_like(world.text_encoder.encode([prompt])))
                chunk = world.chunk_frames
                context = np.asarray(context)[len(context) % chunk :]  # the whole chunks World.init_state commits
                world.commit_history(world.codec.encode_video(torch.from_numpy(context).to(world.device)), self.null_cache)

    @torch.inference_mode()
    def step(self, frame_actions: Sequence) -> np.ndarray:
        from worldsdk.diffusion import cfg as guide, sample_euler

        world, model, state = self.world, self.world.model, self.state
        mc = model.config
        features, null = world.frame_action_features([list(frame_actions)]), world.no_action_features()
        shape = (1, mc.latent_channels, mc.frames_per_chunk, mc.latent_height, mc.latent_width)
        x = torch.randn(shape[1:], generator=state.generators[0])[None].to(world.device)
        t_chunk = lambda sigma: torch.full((1, mc.frames_per_chunk), float(sigma) * 1000.0, device=world.device)  # noqa: E731

        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            v = model.denoise_chunk(x, t_chunk(sigma), features, state.cache).float()
            if self.null_cache is None:
                return v
            return guide(v, model.denoise_chunk(x, t_chunk(sigma), null, self.null_cache).float(), self.guidance)

        x0 = sample_euler(velocity, x, self.sigmas)
        model.commit_chunk(x0, t_chunk(0.0), features, state.cache)
        if self.null_cache is not None:
            model.commit_chunk(x0, t_chunk(0.0), null, self.null_cache)
        state.steps[0] += 1
        return world.codec.decode_chunk(x0, state.decoders).cpu().numpy()[0]


# ----------------------------------------------------------------------------------------------
# Replays
# ----------------------------------------------------------------------------------------------


def replay(world, frames: np.ndarray, actions: np.ndarray, prompt: str, start: int, length: int, seed: int,
           sampler: Sampler = Sampler()):
    """Generate `length` frames from real context frames[:start] and the real per-frame actions."""
    chunk = world.chunk_frames
    context = frames[max(0, start - world.model.config.latent_frames_max + chunk) : start]
    rollout = sampler.start(world, prompt, seed, context)
    out = [rollout.step([int(a) for a in actions[s : s + chunk]]) for s in range(start, start + length, chunk)]
    return np.concatenate(out)[:length]


def reconstruct(world, frames: np.ndarray) -> np.ndarray | None:
    """Real frames through the world's autoencoder (encode, decode); None for a video codec whose
    latent frames span several pixel frames."""
    if world.autoencoder.config.temporal_stride != 1:
        return None
    with torch.inference_mode():
        latents = world.codec.encode_video(torch.from_numpy(frames).to(world.device))
        return world.codec.decode_chunk(latents, [world.codec.decoder_state()]).cpu().numpy()[0]


def evaluate(world, dataset_dir: str, episodes: int = 8, starts_per_episode: int = 2, horizon: int = 64,
             long_steps: int = 1000, seed: int = 0, sampler: Sampler = Sampler()) -> dict:
    """All metrics of `world` on the test split of a recorded dataset, sampled by `sampler` (default:
    the teacher's Euler sampler for a teacher world, the world's own otherwise)."""
    from worldsdk.data.objects import find_balls, paddle_motion
    from worldsdk.data.splits import split_of
    from worldsdk.data.store import EpisodeStore

    sampler = sampler.resolve(world)
    store = EpisodeStore(dataset_dir)
    meta = store.meta()
    game = meta.game
    test = [r for r in store.records() if split_of(r.id) == "test"][:episodes]
    if not test:
        raise ValueError(f"{dataset_dir} has no test episodes")
    chunk = world.chunk_frames
    per_h = {h: {"psnr": [], "ssim": []} for h in HORIZONS if h <= horizon}
    follow = {"generated": [], "real": []}
    ball = {"recall": [], "false_positive": [], "error": [], "autoencoder_recall": []}
    motions = {"generated": [], "real": []}
    real_frames_all = []
    seeds = []
    cost_frames, cost_time = 0, 0.0
    for index, record in enumerate(test):
        episode = store.read(record)
        frames, actions = episode.frames, np.asarray(episode.actions)
        real_frames_all.append(frames)
        first = world.model.config.latent_frames_max
        if len(frames) < first + horizon + 1:
            continue
        rng = np.random.default_rng([seed, index])  # per episode: fewer starts = a prefix of the same starts
        for _ in range(starts_per_episode):
            start = int(rng.integers(first, len(frames) - horizon)) // chunk * chunk
            noise_seed = int(rng.integers(2**31))
            seeds.append(noise_seed)
            started = time.perf_counter()
            gen = replay(world, frames, actions, episode.frame_prompts(start, start + 1)[0], start, horizon, noise_seed, sampler)
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
            recon = reconstruct(world, real)
            if recon is not None:  # the autoencoder's recall of the same balls: the ceiling of the world's
                ball["autoencoder_recall"] += list(~np.isnan(find_balls(recon, game)[real_seen, 0]))
    drift = long_rollout_drift(world, np.concatenate(real_frames_all), long_steps, seed, sampler=sampler)
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
    return {
        "world": world.info.get("source"), "dataset": str(dataset_dir), "game": game, "test_episodes": len(test),
        "replays": len(motions["real"]), "horizon": horizon, "seed": seed, "noise_seeds": seeds,
        "sampler": {**asdict(sampler), "description": sampler.describe(world)},
        "fidelity": {str(h): {"psnr": mean(v["psnr"]), "ssim": mean(v["ssim"])} for h, v in per_h.items()},
        "action_following": {"generated": mean(follow["generated"]), "real": mean(follow["real"]),
                             "samples": len(follow["generated"])},
        "ball": {"recall": mean(ball["recall"]), "false_positive_rate": mean(ball["false_positive"]),
                 "position_error_px": mean(ball["error"]), "autoencoder_recall": mean(ball["autoencoder_recall"]),
                 "real_ball_frames": len(ball["recall"])},
        "motion": {"generated": mean(motions["generated"]), "real": mean(motions["real"])},
        "drift": drift, "long_steps": long_steps,
        "cost": {"model_calls_per_frame": sampler.calls_per_chunk(world) / chunk,
                 "seconds_per_frame": cost_time / max(cost_frames, 1)},
    }


def long_rollout_drift(world, real_frames: np.ndarray, steps: int, seed: int, checkpoints=(10, 100, 500, 1000),
                       sampler: Sampler = Sampler()) -> dict:
    """Histogram distance of generated frames to real frames along a long random-action rollout."""
    if steps <= 0:
        return {}
    reference = colour_histogram(real_frames)
    space = world.spec.action.to_space()
    space.seed(seed)
    chunk = world.chunk_frames
    start = len(real_frames) // 2 // chunk * chunk
    context = real_frames[start - world.model.config.latent_frames_max + chunk : start]
    rollout = sampler.start(world, world.spec.default_prompt, seed, context)
    fc = world.model.config.frames_per_chunk
    curve = {}
    for step in range(1, steps + 1):
        frames = rollout.step([space.sample()] * fc)
        if step in checkpoints or step == steps:
            curve[str(step)] = histogram_distance(colour_histogram(frames), reference)
    return curve


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    f, a, b, m = results["fidelity"], results["action_following"], results["ball"], results["motion"]
    sampled = f", sampled with the {results['sampler']['description']}" if "sampler" in results else ""
    lines = [f"# Evaluation of {results['world']} on {results['game']}",
             "", f"{results['replays']} replays of {results['horizon']} frames from {results['test_episodes']} test episodes{sampled}.", "",
             "| horizon | PSNR (dB) | SSIM |", "|---|---|---|"]
    lines += [f"| {h} | {v['psnr']:.2f} | {v['ssim']:.3f} |" for h, v in f.items()]
    lines += ["", "| metric | generated | real game |", "|---|---|---|",
              f"| paddle follows the action | {a['generated']:.1%} | {a['real']:.1%} |",
              f"| motion (mean abs frame change) | {m['generated']:.2f} | {m['real']:.2f} |",
              f"| ball recall | {b['recall']:.1%} | 100% (autoencoder: {b.get('autoencoder_recall', float('nan')):.1%}) |",
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
    parser.add_argument("--sampler", default="auto", choices=SAMPLER_KINDS,
                        help="auto: the teachers' Euler + CFG sampler for a stage=teacher world, the world's own otherwise")
    parser.add_argument("--euler-steps", type=int, default=48, help="Euler steps of the teachers' sampler")
    parser.add_argument("--guidance", type=float, default=6.0, help="CFG scale of the teachers' sampler")
    parser.add_argument("--out", default="docs/eval", help="folder for eval.json, eval.md and eval.png")


def main(args: argparse.Namespace) -> int:
    from worldsdk.world import World

    world = World.load(args.world)
    sampler = Sampler(args.sampler, args.euler_steps, args.guidance)
    results = evaluate(world, args.data, args.episodes, args.starts, args.horizon, args.long_steps, args.seed, sampler)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "eval.md").write_text(markdown(results))
    plot(results, out)
    print(markdown(results))
    return 0
