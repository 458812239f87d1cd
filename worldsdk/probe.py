"""What a world predicts of the next chunk from real history: the learnability probe.

Given real clips of a recording (frames the world never saw), every chunk after the first is noised to
a level sigma and the world predicts its x0 with the *real* clean frames before it as history, in the
teacher-forcing layout the teachers train in (each noisy chunk sees the clean chunks before it and
itself, nothing else; `tests/test_model.py` checks streaming gives the same). At sigma 1 nothing of
the chunk is left: what the prediction shows comes from the history and the actions alone, which
isolates the dynamics from the sampler (small_worlds.md, "ball from history"). At lower sigmas it
measures what the last denoising steps can refine.

Read off the decoded prediction with the game's object finders:
  ball recall      of the frames whose real frame shows a ball, the share whose prediction shows one
                   within `radius` px of it;
  ball false pos.  of the frames without a real ball, the share whose prediction shows one;
  paddle error     the player's paddle centre, px (a prediction without a paddle counts as missing).
Controls computed in the same run: the real frames through the autoencoder (the ceiling) and the
last history frame repeated (a world that copies instead of predicting: the floor of the dynamics).
A world with a history predictor (`ModelConfig.predictor_channels`) gets one more row: the predictor's
own frames, the reference its sigma-1 prediction starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worldsdk import diffusion as D

PROBE_SIGMAS = (1.0, 0.625, 0.25)


@dataclass
class ProbeClips:
    """Real clips for the probe: frames uint8 (N, F, H, W, 3), per-frame action features (N, F, A + 1),
    one prompt per clip and each frame's style (for the object finders)."""

    frames: np.ndarray
    actions: list
    prompts: list[str]
    styles: list[list[str]]
    game: str


def load_clips(dataset_dir: str, frames_per_clip: int, clips_per_episode: int = 4, episodes: int | None = None,
               split: str | None = None, seed: int = 0) -> ProbeClips:
    """Clips of `frames_per_clip` frames at seeded random places of a dataset's episodes (all of them,
    or one split)."""
    from worldsdk.data.splits import split_of
    from worldsdk.data.store import EpisodeStore

    store = EpisodeStore(dataset_dir)
    records = [r for r in store.verified_records() if split is None or split_of(r.id) == split][:episodes]
    if not records:
        raise ValueError(f"{dataset_dir} has no episodes{'' if split is None else f' in split {split!r}'}")
    frames, actions, prompts, styles = [], [], [], []
    for index, record in enumerate(records):
        episode = store.read(record)
        if len(episode) < frames_per_clip + 1:
            continue
        rng = np.random.default_rng([seed, record.id])
        for _ in range(clips_per_episode):
            start = int(rng.integers(0, len(episode) - frames_per_clip))
            frames.append(episode.frames[start : start + frames_per_clip])
            actions.append(np.asarray(episode.actions)[start : start + frames_per_clip])
            prompts.append(episode.frame_prompts(start, start + 1)[0])
            styles.append([episode.styles[i] for i in episode.prompt_ids[start : start + frames_per_clip]])
    if not frames:
        raise ValueError(f"no episode of {dataset_dir} is longer than {frames_per_clip} frames")
    return ProbeClips(np.stack(frames), actions, prompts, styles, store.meta().game)


def find_objects(frames: np.ndarray, styles: list[str], game: str) -> tuple[np.ndarray, np.ndarray]:
    """Ball and player-paddle centres (N, 2) of frames (N, H, W, 3) painted in the given styles."""
    from worldsdk.data.objects import find_balls, find_paddles

    balls = np.full((len(frames), 2), np.nan, dtype=np.float32)
    paddles = balls.copy()
    styles = np.asarray(styles)
    for style in dict.fromkeys(styles.tolist()):
        idx = np.flatnonzero(styles == style)
        balls[idx] = find_balls(frames[idx], game, style)
        paddles[idx] = find_paddles(frames[idx], game, style)
    return balls, paddles


def object_scores(real: np.ndarray, generated: np.ndarray, styles: list[str], game: str, radius: float = 4.0) -> dict:
    """Ball recall within `radius` px, ball false positives and paddle error of generated frames
    against the real frames they should equal (both (N, H, W, 3))."""
    real_ball, real_paddle = find_objects(real, styles, game)
    gen_ball, gen_paddle = find_objects(generated, styles, game)
    has_ball = ~np.isnan(real_ball[:, 0])
    gen_has_ball = ~np.isnan(gen_ball[:, 0])
    distance = np.linalg.norm(real_ball - gen_ball, axis=1)
    hit = has_ball & gen_has_ball & (np.nan_to_num(distance, nan=np.inf) <= radius)
    has_paddle = ~np.isnan(real_paddle[:, 0])
    paddle_error = np.linalg.norm(real_paddle - gen_paddle, axis=1)[has_paddle]
    found = ~np.isnan(paddle_error)
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
    return {
        "ball_recall": mean(hit[has_ball]), "ball_false_positive": mean(gen_has_ball[~has_ball]),
        "ball_frames": int(has_ball.sum()), "no_ball_frames": int((~has_ball).sum()),
        "paddle_error_px": mean(paddle_error[found]), "paddle_found": mean(found),
        "paddle_within_2px": mean(np.nan_to_num(paddle_error, nan=np.inf) <= 2.0),
    }


@torch.no_grad()
def predict_next_chunks(world, clips: ProbeClips, sigma: float, seed: int = 0, batch: int = 16,
                        last_chunk_action: int | None = None, predictor: bool = False) -> np.ndarray:
    """x0 of every chunk of every clip, noised to `sigma`, with the real clean frames before it as
    history, decoded: uint8 (N, F, H, W, 3). `last_chunk_action` replaces the real actions of each
    clip's last chunk (whose prediction nothing else reads). `predictor`: the frames of the world's
    history predictor instead (`ModelConfig.predictor_channels`; sigma does not matter to it)."""
    model, codec = world.model, world.codec
    out = []
    g = torch.Generator().manual_seed(seed)
    for i in range(0, len(clips.frames), batch):
        frames = torch.from_numpy(clips.frames[i : i + batch]).to(world.device)
        x0 = torch.cat([codec.encode_video(clip) for clip in frames])  # (B, C, F, h, w)
        b, _, f = x0.shape[:3]
        fc = model.config.frames_per_chunk
        per_chunk = [[int(x) if last_chunk_action is None or s + fc < f else last_chunk_action for x in a[s : s + fc]]
                     for a in clips.actions[i : i + batch] for s in range(0, f, fc)]
        features = world.frame_action_features(per_chunk)
        features = None if features is None else features.reshape(b, f, -1)
        text = world.text_encoder.encode(list(clips.prompts[i : i + batch]))
        noise = torch.randn(x0.shape, generator=g).to(x0)
        s = torch.full((b, f), float(sigma), device=x0.device)
        x_t = D.add_noise(x0, noise, s)
        v, prediction = model.forward_teacher_forcing(x0, x_t, D.sigma_to_t(s), text, features, with_prediction=True)
        pred = prediction if predictor else D.x0_from_velocity(x_t, v.float(), s)
        out += [codec.decode_chunk(p[None], [codec.decoder_state()]).cpu().numpy()[0] for p in pred]
    return np.stack(out)


def probe(world, clips: ProbeClips, sigmas=PROBE_SIGMAS, seed: int = 0, radius: float = 4.0,
          actions: tuple[int, int] | None = None) -> dict:
    """The probe's scores at each sigma, on every chunk after each clip's first, with its two controls,
    and with `actions` (up, down) the keys' effect from history (`key_effect`)."""
    chunk = world.chunk_frames
    real = clips.frames[:, chunk:]
    styles = [s for clip in clips.styles for s in clip[chunk:]]
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    results = {}
    for sigma in sigmas:
        pred = predict_next_chunks(world, clips, sigma, seed)[:, chunk:]
        results[f"{sigma:g}"] = object_scores(flat(real), flat(pred), styles, clips.game, radius)
    with torch.no_grad():
        recon = np.stack([world.codec.decode_chunk(world.codec.encode_video(torch.from_numpy(c).to(world.device)),
                                                   [world.codec.decoder_state()]).cpu().numpy()[0] for c in clips.frames])
    if world.model.predictor is not None:  # what the history predictor alone makes of the same chunks
        pred = predict_next_chunks(world, clips, 1.0, seed, predictor=True)[:, chunk:]
        results["predictor"] = object_scores(flat(real), flat(pred), styles, clips.game, radius)
    results["autoencoder"] = object_scores(flat(real), flat(recon[:, chunk:]), styles, clips.game, radius)
    # repeat the last frame before each chunk: what a world that ignores the dynamics would draw
    starts = np.arange(chunk, clips.frames.shape[1]) // chunk * chunk - 1
    repeat = clips.frames[:, starts]
    results["repeat_last_frame"] = object_scores(flat(real), flat(repeat), styles, clips.game, radius)
    if actions is not None:
        results["keys"] = key_effect(world, clips, actions, seed)
    return results


def key_effect(world, clips: ProbeClips, actions: tuple[int, int], seed: int = 0, min_separation: float = 1.0) -> dict:
    """From history alone (sigma 1), the last chunk predicted under the first key and under the second
    (up / down): how far the player's paddle ends apart along the commanded direction. A world that
    ignores its keys predicts the same frames for both (same noise): separation 0, no pass."""
    from worldsdk.data.objects import find_paddles, get_game

    axis = get_game(clips.game).paddle_axis
    ends = []
    for action in actions:
        frames = predict_next_chunks(world, clips, 1.0, seed, last_chunk_action=action)[:, -1]
        styles = np.asarray([clip[-1] for clip in clips.styles])
        rows = np.full(len(frames), np.nan)
        for style in dict.fromkeys(styles.tolist()):
            idx = np.flatnonzero(styles == style)
            rows[idx] = find_paddles(frames[idx], clips.game, style, min_fraction=1 / 8)[:, axis]
        ends.append(rows)
    separation = ends[1] - ends[0]
    return {"pass_rate": float(np.mean(np.nan_to_num(separation, nan=-np.inf) >= min_separation)),
            "separation_px": float(np.nanmean(separation)) if np.isfinite(separation).any() else float("nan")}
