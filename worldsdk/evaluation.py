"""`worldsdk eval`: replay held-out real episodes in a world and compare what it generates with the game.

For each test episode and start point, the world gets the real frames before the start as context
and then the very actions the real game received (one per frame), and its frames are compared with
the real ones:
  fidelity   PSNR and SSIM at horizons 1, 4, 16, 64 frames;
  actions    how often the player's paddle moves the way the action commands (generated vs real);
  ball       recall and false positives of the ball, and the player's paddle error, over each whole replay
             and over its first 16 frames (the window of the goal in issue 14);
  motion     mean frame-to-frame change (the analogue of Dynamic Degree: a frozen world scores ~0);
  drift      long rollouts under random actions: colour-histogram distance to real frames over time;
  objects    what that rollout draws: one ball, one of each paddle, the player's paddle present;
  points     in Pong, whether its score changes when, and only when, the ball passes a paddle;
  cost       model calls and wall time per generated frame.
Results go to JSON, a Markdown table and plots in `--out`.

Controls. Every metric is reported beside the same metric on two controls of the same run, so that a
figure is read against what it separates: the real frames (the ceiling; for PSNR and SSIM, which real
frames reach trivially, the world's autoencoder reconstruction of them) and an action-blind stand-in
(the floor): for the replays, the real clip `horizon` frames away in the same episode (`shifted_clip`:
real-looking frames played under other actions); for the opposite-keys test, the world holding the
first key twice with two noise seeds; for the long rollout (drift, objects), uniform noise frames. A
world whose figure is at the floor has not shown what the metric asks (motion, for one, is matched by
the shifted real clip: it says how much moves, not whether the actions move it).

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
GOAL_HORIZON = 16  # frames: the replays' objects are also scored on this first window (the goal's replays)
BALL_RADIUS = 4.0  # px: a generated ball this close to the real one counts as the ball (docs/worlds.md)
WALL_CHANGE = 48  # colour levels: a wall pixel that changes by more (any channel) has lost or gained a brick


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

    def rollout_sampler(self, world):
        """The `worldsdk.rollout` sampler this choice gives for `world`."""
        from worldsdk.rollout import EulerSampler

        s = self.resolve(world)
        return world.sampler if s.kind == "few_step" else EulerSampler.from_schedule(world.spec.schedule, s.steps, s.guidance)

    def start(self, world, prompt: str, seed: int, context: np.ndarray, context_actions=None) -> "Rollout":
        """A session of `world` continuing from real context frames (N, H, W, 3), N >= one chunk, and the
        actions that produced them (one per frame; None: committed without action)."""
        return Rollout(world, prompt, seed, context, self.rollout_sampler(world), context_actions)


class Rollout:
    """One session of a world, through its public session API; `step` takes one action per frame.
    `sampler`: a `worldsdk.rollout` sampler (default the world's own few-step sampler)."""

    def __init__(self, world, prompt: str, seed: int, context: np.ndarray, sampler=None, context_actions=None):
        self.world = world
        actions = None if context_actions is None else [[int(a) for a in context_actions]]
        _, self.state = world.init_state(1, [prompt], [seed], [context], sampler=sampler, context_actions=actions)

    def step(self, frame_actions: Sequence) -> np.ndarray:
        """Frames (chunk, H, W, 3) of the next chunk under one action per latent frame."""
        result = self.world.step_frames_state(self.state, [list(frame_actions)])
        self.state = result.state
        return result.frames[0]


class GuidedEulerRollout(Rollout):
    """One session sampled like the teachers' ODE pairs (`trainers.objectives.causal_ode_pairs`): Euler
    steps of v_uncond + g (v_cond - v_uncond), the unconditional branch (zero text features, zero
    action features) attending to its own cache of the same clean history."""

    def __init__(self, world, prompt: str, seed: int, context: np.ndarray, steps: int, guidance: float):
        from worldsdk.rollout import EulerSampler

        super().__init__(world, prompt, seed, context, EulerSampler.from_schedule(world.spec.schedule, steps, guidance))


# ----------------------------------------------------------------------------------------------
# Replays
# ----------------------------------------------------------------------------------------------


def replay(world, frames: np.ndarray, actions: np.ndarray, prompt: str, start: int, length: int, seed: int,
           sampler: Sampler = Sampler()):
    """Generate `length` frames from real context frames[:start] and the real per-frame actions."""
    chunk = world.chunk_frames
    first = max(0, start - world.model.config.latent_frames_max + chunk)
    context = frames[first:start]
    # the context's own actions, as the world saw its history in training (per-frame codecs only)
    context_actions = actions[first:start] if world.autoencoder.config.temporal_stride == 1 else None
    rollout = sampler.start(world, prompt, seed, context, context_actions)
    out = [rollout.step([int(a) for a in actions[s : s + chunk]]) for s in range(start, start + length, chunk)]
    return np.concatenate(out)[:length]


def shifted_clip(frames: np.ndarray, start: int, length: int) -> np.ndarray:
    """The real frames `length` frames before `start` (after it, near an episode's start): a clip that looks
    like the game but was played under other actions, the action-blind control of the replay metrics."""
    other = start - length if start >= length else min(start + length, len(frames) - length)
    return frames[other : other + length]


def reconstruct(world, frames: np.ndarray) -> np.ndarray | None:
    """Real frames through the world's autoencoder (encode, decode); None for a video codec whose
    latent frames span several pixel frames."""
    if world.autoencoder.config.temporal_stride != 1:
        return None
    with torch.inference_mode():
        latents = world.codec.encode_video(torch.from_numpy(frames).to(world.device))
        return world.codec.decode_chunk(latents, [world.codec.decoder_state()]).cpu().numpy()[0]


def evaluation_episodes(store, split: str = "auto") -> tuple[list, str]:
    """The episodes to evaluate on: the hashed test split ("test"), every episode ("all"), or ("auto")
    the test split when the dataset has one, else every episode (a fresh recording the world never
    saw has too few episodes for the hashed split to hold one)."""
    from worldsdk.data.splits import split_of

    if split not in ("auto", "test", "all"):
        raise ValueError(f"split must be auto, test or all, got {split!r}")
    records = store.records()
    test = [r for r in records if split_of(r.id) == "test"]
    if split == "test" or (split == "auto" and test):
        if not test:
            raise ValueError(f"{store.root} has no test episodes (the hashed split needs about 25 episodes); "
                             "evaluate on every episode with --split all")
        return test, "test"
    return records, "all"


def evaluate(world, dataset_dir: str, episodes: int = 8, starts_per_episode: int = 2, horizon: int = 64,
             long_steps: int = 1000, seed: int = 0, sampler: Sampler = Sampler(), split: str = "auto",
             action_trials: int = 8) -> dict:
    """All metrics of `world` on a recorded dataset (its test split, or all of it: `evaluation_episodes`),
    sampled by `sampler` (default: the teacher's Euler sampler for a teacher world, the world's own)."""
    from worldsdk.data.objects import GAMES, paddle_motion, point_scores
    from worldsdk.data.store import EpisodeStore

    sampler = sampler.resolve(world)
    store = EpisodeStore(dataset_dir)
    meta = store.meta()
    game = meta.game
    test, used_split = evaluation_episodes(store, split)
    test = test[:episodes]
    if used_split == "all":
        log.info("evaluating on all %d episodes of %s (no test split: a recording the world never saw)", len(test), dataset_dir)
    chunk = world.chunk_frames
    per_h = {h: {f"{source}{m}": [] for source in ("", "autoencoder_", "blind_") for m in ("psnr", "ssim")}
             for h in HORIZONS if h <= horizon}
    follow = {"generated": [], "real": [], "blind": []}
    scored: dict[str, list] = {"real": [], "generated": [], "autoencoder": [], "blind": [], "styles": [], "before": []}
    motions = {"generated": [], "real": [], "blind": []}
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
            blind = shifted_clip(frames, start, horizon)
            recon = reconstruct(world, real)
            for h in per_h:
                for prefix, clip in (("", gen), ("autoencoder_", recon), ("blind_", blind)):
                    if clip is not None:
                        per_h[h][f"{prefix}psnr"].append(psnr(clip[h - 1], real[h - 1]))
                        per_h[h][f"{prefix}ssim"].append(ssim(clip[h - 1], real[h - 1]))
            commanded = np.array([commanded_direction(meta.action_meanings[a], game) if meta.action_meanings else 0
                                  for a in actions[start + 1 : start + horizon]])
            for key, clip in (("generated", gen), ("real", real), ("blind", blind)):
                moved = paddle_motion(clip, game)
                valid = (commanded != 0) & ~np.isnan(moved)
                follow[key] += list(moved[valid] == commanded[valid])
                motions[key].append(motion(clip))
            styles = [episode.styles[i] for i in episode.prompt_ids[start : start + horizon]]
            one_style = len({episode.styles[i] for i in episode.prompt_ids[start - 1 : start + horizon]}) == 1
            scored["before"].append(frames[start - 1] if one_style else None)  # a style switch changes every wall pixel
            scored["real"].append(real)
            scored["generated"].append(gen)
            scored["blind"].append(blind)
            scored["styles"] += styles
            if recon is not None:  # the autoencoder's view of the same frames: the ceiling of the world's
                scored["autoencoder"].append(recon)
    ball = {}
    if game in GAMES and scored["real"]:
        from worldsdk.probe import object_scores

        real_all = np.concatenate(scored["real"])
        ball = object_scores(real_all, np.concatenate(scored["generated"]), scored["styles"], game, BALL_RADIUS)
        if scored["autoencoder"]:
            ae = object_scores(real_all, np.concatenate(scored["autoencoder"]), scored["styles"], game, BALL_RADIUS)
            ball["autoencoder_ball_recall"] = ae["ball_recall"]
            ball["autoencoder_paddle_within_2px"] = ae["paddle_within_2px"]
        blind = object_scores(real_all, np.concatenate(scored["blind"]), scored["styles"], game, BALL_RADIUS)
        ball.update({f"blind_{k}": blind[k] for k in ("ball_recall", "ball_false_positive", "paddle_within_2px", "paddle_error_px")})
        if horizon > GOAL_HORIZON:  # the same scores on each replay's first frames: the window of the goal (issue 14)
            first = lambda clips: np.concatenate([c[:GOAL_HORIZON] for c in clips])  # noqa: E731
            styles = [s for i in range(len(scored["real"])) for s in scored["styles"][i * horizon : i * horizon + GOAL_HORIZON]]
            ball[f"first_{GOAL_HORIZON}"] = object_scores(first(scored["real"]), first(scored["generated"]), styles, game, BALL_RADIUS)
    wall = {}
    if GAMES.get(game) and GAMES[game].wall_rows and scored["real"]:  # are the bricks cleared where the game clears them?
        still = [np.broadcast_to(b, (horizon, *b.shape)) if b is not None else None for b in scored["before"]]  # a view
        for at in sorted({min(GOAL_HORIZON, horizon), horizon}):
            wall[str(at)] = {name: wall_scores(scored["before"], scored["real"], clips, game, at)
                             for name, clips in (("world", scored["generated"]), ("autoencoder", scored["autoencoder"]),
                                                 ("blind", scored["blind"]), ("still", still)) if len(clips) == len(scored["real"])}
    long_frames: list = []
    drift = long_rollout_drift(world, np.concatenate(real_frames_all), long_steps, seed, sampler=sampler, keep=long_frames)
    noise = np.random.default_rng(seed).integers(0, 256, (512, *real_frames_all[0].shape[1:]), dtype=np.uint8)  # a floor
    drift_controls = drift_floor_and_ceiling(np.concatenate(real_frames_all), noise, chunk, seed) if drift else {}
    objects = {}
    if game in GAMES and long_frames:  # what the long rollout draws, against the real episodes (the ceiling) and noise
        objects = {"world": object_rates(np.concatenate(long_frames), game, None),
                   "real": object_rates(np.concatenate(real_frames_all), game, None),
                   "noise": object_rates(noise, game, None)}
    points = {}
    if GAMES.get(game) and GAMES[game].goal_cols and long_frames:  # does the score change when the ball passes a paddle?
        points = {"world": point_scores([np.concatenate(long_frames)], game), "real": point_scores(real_frames_all, game)}
    actions = {}
    if action_trials > 0 and meta.env_id.startswith("ALE/") and game in GAMES:
        actions = action_test(world, meta.env_id, trials=action_trials, seed=seed, sampler=sampler)
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
    return {
        "world": world.info.get("source"), "dataset": str(dataset_dir), "game": game, "split": used_split,
        "test_episodes": len(test),
        "replays": len(motions["real"]), "horizon": horizon, "seed": seed, "noise_seeds": seeds,
        "sampler": {**asdict(sampler), "description": sampler.describe(world)},
        "fidelity": {str(h): {k: mean(xs) for k, xs in v.items()} for h, v in per_h.items()},
        "action_following": {"generated": mean(follow["generated"]), "real": mean(follow["real"]),
                             "blind": mean(follow["blind"]), "samples": len(follow["generated"])},
        "objects_in_replays": ball, "wall": wall,
        "motion": {"generated": mean(motions["generated"]), "real": mean(motions["real"]), "blind": mean(motions["blind"])},
        "drift": drift, "drift_controls": drift_controls, "long_steps": long_steps, "objects": objects, "points": points,
        "action_test": actions,
        "cost": {"model_calls_per_frame": sampler.calls_per_chunk(world) / chunk,
                 "seconds_per_frame": cost_time / max(cost_frames, 1)},
    }


def long_rollout_drift(world, real_frames: np.ndarray, steps: int, seed: int, checkpoints=(10, 100, 500, 1000),
                       sampler: Sampler = Sampler(), keep: list | None = None) -> dict:
    """Histogram distance of generated frames to real frames along a long random-action rollout
    (its frames are appended to `keep` when given)."""
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
        if keep is not None:
            keep.append(frames)
        if step in checkpoints or step == steps:
            curve[str(step)] = histogram_distance(colour_histogram(frames), reference)
    return curve


def drift_floor_and_ceiling(real_frames: np.ndarray, noise: np.ndarray, chunk: int, seed: int, samples: int = 32) -> dict:
    """The drift metric's controls: the mean histogram distance to all real frames of single real chunks
    (the ceiling: what an undrifted world scores) and of single chunks of uniform noise (the floor)."""
    reference = colour_histogram(real_frames)
    starts = np.random.default_rng(seed).integers(0, len(real_frames) - chunk + 1, samples)
    real = [histogram_distance(colour_histogram(real_frames[s : s + chunk]), reference) for s in starts]
    fake = [histogram_distance(colour_histogram(noise[s : s + chunk]), reference) for s in range(0, len(noise) - chunk + 1, chunk)]
    return {"real": float(np.mean(real)), "noise": float(np.mean(fake))}


# ----------------------------------------------------------------------------------------------
# Opposite keys from the same real moment, and what long rollouts draw
# ----------------------------------------------------------------------------------------------


def opposite_actions(meanings: Sequence[str], game: str) -> tuple[int, int]:
    """The plainest actions that move the paddle -1 (up / left) and +1 (down / right) along its axis."""
    picks = {}
    for direction in (-1, 1):
        candidates = [i for i, m in enumerate(meanings) if commanded_direction(m, game) == direction]
        if not candidates:
            raise ValueError(f"no action of {list(meanings)} moves the {game} paddle {direction:+d}")
        picks[direction] = min(candidates, key=lambda i: ("FIRE" in meanings[i], i))  # RIGHT before RIGHTFIRE
    return picks[-1], picks[1]


def action_test(world, env_id: str, trials: int = 8, chunks: int = 6, seed: int = 0, style: str = "classic",
                warmup_chunks: tuple[int, int] = (10, 150), min_separation: float = 1.0,
                sampler: Sampler = Sampler()) -> dict:
    """Hold one direction, then the opposite, for `chunks` steps from the same real moment, in the world
    and in the real game (restored to the same emulator state), and compare where the paddle ends.

    Each trial plays the real game under sticky random keys for a random number of chunks, takes the
    frames before that moment as the world's context, and rolls both out with the same noise seed.
    A trial passes when the paddle ends at least `min_separation` px further along the commanded
    direction under the second key than under the first. A world that ignores its keys draws the
    same frames for both (same context, same seed), so it passes no trial; the real game is the
    ceiling, and `distance_ratio` compares the separations (mean world / mean real game). The
    action-blind floor (`blind_*`) holds the first key in both arms, with another noise seed in the
    second: how far the paddle ends apart, and on the "commanded" side, by the noise alone.
    """
    from worldsdk.agents import make_real_env
    from worldsdk.data.objects import find_paddles, get_game
    from worldsdk.data.styles import prompt_for

    sampler = sampler.resolve(world)
    env = make_real_env(world, env_id=env_id, style=style).unwrapped
    game = getattr(env.game.unwrapped, "ale", None)
    if game is None:
        raise ValueError(f"the action test restores emulator states: {env_id} is not an ALE game")
    name = env_id.split("/")[-1].split("-")[0].lower()
    meanings = env.game.unwrapped.get_action_meanings()
    first, second = opposite_actions(meanings, name)
    axis = get_game(name).paddle_axis
    prompt = prompt_for(name, style)
    chunk, fc = world.chunk_frames, world.model.config.frames_per_chunk
    context_frames = world.model.config.latent_frames_max - fc
    rng = np.random.default_rng(seed)
    real_sep, gen_sep, passed, real_passed, blind_sep, blind_passed = [], [], [], [], [], []
    for _ in range(trials):
        while True:  # a moment of play with enough frames before it
            frames = [env.reset(seed=int(rng.integers(2**31)))[0]]
            played = [world.spec.action.noop_action()] * len(frames[0])  # the action behind each frame: reset's no-op
            action, ended = 0, False
            for _ in range(int(rng.integers(*warmup_chunks))):
                if rng.random() < 0.25:
                    action = int(rng.integers(env.action_space.n))
                obs, _, terminated, truncated, _ = env.step(action)
                frames.append(obs)
                played += [action] * len(obs)
                if terminated or truncated:
                    ended = True
                    break
            if not ended and len(frames) * chunk >= context_frames:
                break
        context = np.concatenate(frames)[-context_frames:]
        context_actions = played[-context_frames:] if world.autoencoder.config.temporal_stride == 1 else None
        moment = game.cloneState()
        noise_seed = int(rng.integers(2**31))
        ends = {}
        for key, action in (("first", first), ("second", second)):
            game.restoreState(moment)
            for _ in range(chunks):
                real_last = env.step(action)[0][-1]
            rollout = sampler.start(world, prompt, noise_seed, context, context_actions)
            for _ in range(chunks):
                gen_last = rollout.step([action] * fc)[-1]
            # held against a wall, Pong's paddle is partly hidden under it: locate its visible part
            ends[key] = find_paddles(np.stack([real_last, gen_last]), name, style, min_fraction=1 / 8)[:, axis]
        rollout = sampler.start(world, prompt, noise_seed + 1, context, context_actions)  # the floor: the same key, other noise
        for _ in range(chunks):
            blind_last = rollout.step([first] * fc)[-1]
        blind = float(find_paddles(blind_last[None], name, style, min_fraction=1 / 8)[0, axis] - ends["first"][1])
        blind_passed.append(bool(np.isfinite(blind) and blind >= min_separation))
        blind_sep.append(blind if np.isfinite(blind) else 0.0)
        real = float(ends["second"][0] - ends["first"][0])
        gen = float(ends["second"][1] - ends["first"][1])
        real_sep.append(real)
        real_passed.append(bool(real >= min_separation))
        passed.append(bool(np.isfinite(gen) and gen >= min_separation))
        gen_sep.append(gen if np.isfinite(gen) else 0.0)
    env.close()
    seen = [x for x in real_sep if np.isfinite(x)]
    mean_real = float(np.mean(seen)) if seen else float("nan")
    return {
        "trials": trials, "chunks": chunks, "keys": [meanings[first], meanings[second]],
        "world_pass_rate": float(np.mean(passed)), "real_pass_rate": float(np.mean(real_passed)),
        "world_separation_px": float(np.mean(gen_sep)), "real_separation_px": mean_real,
        "distance_ratio": float(np.mean(gen_sep)) / mean_real if mean_real > 0 else float("nan"),
        "blind_pass_rate": float(np.mean(blind_passed)), "blind_separation_px": float(np.mean(blind_sep)),
        "blind_distance_ratio": float(np.mean(blind_sep)) / mean_real if mean_real > 0 else float("nan"),
        "separations": {"world": gen_sep, "real": real_sep, "blind": blind_sep},
    }


def wall_scores(befores: Sequence[np.ndarray], reals: Sequence[np.ndarray], clips: Sequence[np.ndarray], game: str,
                at: int) -> dict:
    """Whether a world clears the bricks the game clears (Breakout), over replays: each replay's last context
    frame `befores[i]`, its real frames `reals[i]` and the world's `clips[i]`, compared at frame `at` (1-based).

    `cleared`: of the wall pixels (objects.wall_mask) the game changed by more than WALL_CHANGE since the
    context's last frame (a brick hit, or the ball passing through a gap), the share the world's frame shows
    within WALL_CHANGE of the game's new value; a wall that stands still scores 0. `kept`: of the wall pixels
    the game left alone, the share the world keeps within WALL_CHANGE; noise scores near 0 on both. Read them
    together: a world without a wall clears what the game cleared of whole bricks and keeps none. The real
    game: 1 and 1. Replays whose style changes on the way are skipped (pass None as their `befores`).
    """
    from worldsdk.data.objects import wall_mask

    changed = followed = still = kept = 0
    for before, real, clip in zip(befores, reals, clips):
        if before is None:
            continue
        mask = wall_mask(real.shape[1:3], game)
        old, new, drawn = (x[mask].astype(np.int16) for x in (before, real[at - 1], clip[at - 1]))
        moved = np.abs(new - old).max(-1) > WALL_CHANGE
        changed, still = changed + int(moved.sum()), still + int((~moved).sum())
        right = np.abs(drawn - new).max(-1) <= WALL_CHANGE
        followed, kept = followed + int(right[moved].sum()), kept + int(right[~moved].sum())
    return {"changed_pixels": changed, "cleared": followed / changed if changed else float("nan"),
            "kept": kept / still if still else float("nan")}


def object_rates(frames: np.ndarray, game: str, style: str | None = "classic") -> dict:
    """Shares of frames (N, H, W, 3) with at most one ball, at most one of each paddle, and the
    player's paddle present (the real game: about 100% each, docs/worlds.md). `style` None: detected
    per frame."""
    from worldsdk.data.objects import count_objects

    counts = count_objects(frames, game, style)
    others = [v for k, v in counts.items() if k.startswith("other_")]
    single = (counts["ball"] <= 1) & (counts["paddle"] <= 1)
    if game == "pong":  # the opponent's paddle is Pong's one "other" colour
        single &= others[0] <= 1
    return {
        "frames": int(len(frames)),
        "no_doubled_objects": float(np.mean(single)),
        "player_paddle_present": float(np.mean(counts["paddle"] >= 1)),
        "one_player_paddle": float(np.mean(counts["paddle"] == 1)),
        "ball_at_most_one": float(np.mean(counts["ball"] <= 1)),
        "ball_shown": float(np.mean(counts["ball"] >= 1)),
    }


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    f, a, b, m = results["fidelity"], results["action_following"], results.get("objects_in_replays", {}), results["motion"]
    sampled = f", sampled with the {results['sampler']['description']}" if "sampler" in results else ""
    lines = [f"# Evaluation of {results['world']} on {results['game']}",
             "", f"{results['replays']} replays of {results['horizon']} frames from {results['test_episodes']} test episodes{sampled}.", "",
             "Beside each figure, its controls from the same run: the real frames (ceiling; for PSNR and SSIM "
             "the autoencoder's reconstruction) and an action-blind stand-in (floor: the real clip one horizon "
             "away, other keys twice, or noise). A figure at the floor shows nothing the metric asks for.", "",
             "| horizon | PSNR (dB) | autoencoder | action-blind | SSIM | autoencoder | action-blind |", "|---|---|---|---|---|---|---|"]
    nan = float("nan")
    lines += [f"| {h} | {v['psnr']:.2f} | {v.get('autoencoder_psnr', nan):.2f} | {v.get('blind_psnr', nan):.2f} | "
              f"{v['ssim']:.3f} | {v.get('autoencoder_ssim', nan):.3f} | {v.get('blind_ssim', nan):.3f} |" for h, v in f.items()]
    lines += ["", "| metric | generated | real game | action-blind |", "|---|---|---|---|",
              f"| paddle follows the action | {a['generated']:.1%} | {a['real']:.1%} | {a.get('blind', nan):.1%} |",
              f"| motion (mean abs frame change) | {m['generated']:.2f} | {m['real']:.2f} | {m.get('blind', nan):.2f} |",
              ]
    if b:
        lines += [f"| ball within {BALL_RADIUS:g} px of the real one | {b['ball_recall']:.1%} | 100% (autoencoder: {b.get('autoencoder_ball_recall', nan):.1%}) | {b.get('blind_ball_recall', nan):.1%} |",
                  f"| a ball where the real frame has none | {b['ball_false_positive']:.1%} | 0% | {b.get('blind_ball_false_positive', nan):.1%} |",
                  f"| player's paddle within 2 px | {b['paddle_within_2px']:.1%} | 100% (autoencoder: {b.get('autoencoder_paddle_within_2px', nan):.1%}) | {b.get('blind_paddle_within_2px', nan):.1%} |",
                  f"| player's paddle error (px, where drawn) | {b['paddle_error_px']:.2f} | 0 | {b.get('blind_paddle_error_px', nan):.2f} |"]
        if f"first_{GOAL_HORIZON}" in b:
            g = b[f"first_{GOAL_HORIZON}"]
            lines += [f"| ... in each replay's first {GOAL_HORIZON} frames: ball within {BALL_RADIUS:g} px / false ball / "
                      f"paddle within 2 px | {g['ball_recall']:.1%} / {g['ball_false_positive']:.1%} / {g['paddle_within_2px']:.1%} | | |"]
    if results.get("wall"):
        lines += ["", "The wall of bricks in the replays: of the wall pixels the game changed since the last real frame "
                      "(a brick cleared), the share the world shows as the game does; of those the game left alone, the share "
                      "it kept (a world without a wall keeps none). Beside it the autoencoder, the action-blind clip and a wall that stands still:", "",
                  "| frame | changed pixels | world: cleared / kept | autoencoder | action-blind | still wall |", "|---|---|---|---|---|---|"]
        for at, w in results["wall"].items():
            cells = [f"{w[k]['cleared']:.1%} / {w[k]['kept']:.1%}" if k in w else "" for k in ("world", "autoencoder", "blind", "still")]
            lines += [f"| {at} | {w['world']['changed_pixels']} | " + " | ".join(cells) + " |"]
    if results.get("action_test"):
        t = results["action_test"]
        lines += ["", f"Opposite keys ({' vs '.join(t['keys'])}, {t['chunks']} chunks each, {t['trials']} real moments):", "",
                  "| | world | real game | action-blind (one key twice) |", "|---|---|---|---|",
                  f"| paddle ends on the commanded side | {t['world_pass_rate']:.0%} | {t['real_pass_rate']:.0%} | {t.get('blind_pass_rate', nan):.0%} |",
                  f"| separation (px) | {t['world_separation_px']:.1f} ({t['distance_ratio']:.2f}x) | {t['real_separation_px']:.1f} | "
                  f"{t.get('blind_separation_px', nan):.1f} ({t.get('blind_distance_ratio', nan):.2f}x) |"]
    if results.get("objects"):
        o = results["objects"]
        lines += ["", f"What the {results['long_steps']}-step rollout draws (real episodes beside it):", "",
                  "| share of frames | world | real game | uniform noise |", "|---|---|---|---|"]
        lines += [f"| {k.replace('_', ' ')} | {o['world'][k]:.1%} | {o['real'][k]:.1%} | {o.get('noise', {}).get(k, nan):.1%} |"
                  for k in o["world"] if k != "frames"]
    if results.get("points"):
        p = results["points"]
        lines += ["", "Points in that rollout (the ball passing a paddle) and score changes (real episodes beside it):", "",
                  "| | world | real game |", "|---|---|---|",
                  f"| points / score changes | {p['world']['points']} / {p['world']['score_changes']} | "
                  f"{p['real']['points']} / {p['real']['score_changes']} |",
                  f"| points that change the score | {p['world']['points_scored']:.0%} | {p['real']['points_scored']:.0%} |",
                  f"| score changes on a point | {p['world']['changes_on_points']:.0%} | {p['real']['changes_on_points']:.0%} |"]
    if results["drift"]:
        d = results.get("drift_controls") or {}
        lines += ["", f"| rollout step | histogram distance to real frames (a real chunk: {d.get('real', nan):.3f}, "
                      f"uniform noise: {d.get('noise', nan):.3f}) |", "|---|---|"]
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
    parser.add_argument("--split", default="auto", choices=("auto", "test", "all"),
                        help="episodes to replay: the test split, all of them, or auto (test if it has any, else all)")
    parser.add_argument("--action-trials", type=int, default=8, help="real moments of the opposite-keys test (0: skip)")
    parser.add_argument("--out", default="runs/eval", help="folder for eval.json, eval.md and eval.png")


def main(args: argparse.Namespace) -> int:
    from worldsdk.world import World

    world = World.load(args.world)
    sampler = Sampler(args.sampler, args.euler_steps, args.guidance)
    results = evaluate(world, args.data, args.episodes, args.starts, args.horizon, args.long_steps, args.seed, sampler,
                       args.split, args.action_trials)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "eval.md").write_text(markdown(results))
    plot(results, out)
    print(markdown(results))
    return 0
