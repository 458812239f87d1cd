"""Object finders on real recorded Pong and Breakout frames, against the raw frames' ground truth."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from worldsdk.data import EpisodeStore, apply_style, detect_style, find_ball, find_balls, find_paddles, paddle_motion, record
from worldsdk.data.objects import GAMES, ball_recall, raw_to_frame
from worldsdk.data.recorder import make_env
from worldsdk.data.resize import resize_frames

STEPS = 300


class KeepRawFrames(gym.Wrapper):
    """Keeps every raw observation, aligned with the recorded frames."""

    def __init__(self, env):
        super().__init__(env)
        self.raw: list[np.ndarray] = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.raw.append(obs)
        return obs, info

    def step(self, action):
        out = self.env.step(action)
        self.raw.append(out[0])
        return out


def _truth(raw: np.ndarray, game: str):
    """Ball and paddle centres in raw pixels from exact palette colours (None when absent)."""
    objects = GAMES[game]
    ball = (raw == objects.ball).all(-1)
    keep = np.zeros(raw.shape[:2], bool)
    for a, b in objects.ball_rows:
        keep[a:b, objects.ball_cols[0] : objects.ball_cols[1]] = True
    for a, b in objects.ball_excluded_rows:
        keep[a:b] = False
    paddle = np.zeros_like(keep)
    paddle[slice(*objects.paddle_rows), slice(*objects.paddle_cols)] = True
    b, p = np.argwhere(ball & keep), np.argwhere((raw == objects.paddle).all(-1) & paddle)
    return (b.mean(0) if len(b) else None), (p.mean(0) if len(p) else None)


@pytest.fixture(scope="module", params=["pong", "breakout"])
def recorded(request, tmp_path_factory):
    game = request.param
    env = KeepRawFrames(make_env(f"ALE/{game.capitalize()}-v5")[0])
    root = tmp_path_factory.mktemp(game)
    (rec,) = record(env, root, 1, policy="scripted", max_steps=STEPS, styles=["classic"], seed=3)
    frames = EpisodeStore(root).read(rec).frames
    assert len(env.raw) == len(frames)
    return game, frames, [_truth(r, game) for r in env.raw], np.stack(env.raw)


@pytest.mark.parametrize("style", ["classic", "neon", "inverted", "night", "sepia"])
def test_ball_and_paddle_found_in_every_style(recorded, style):
    game, classic, truth, _ = recorded
    frames = apply_style(classic, style)
    balls, paddles = find_balls(frames, game, style), find_paddles(frames, game, style)
    size = frames.shape[1:3]
    hits = [np.abs(balls[t] - raw_to_frame(b, size)).max() <= 1.5 for t, (b, _) in enumerate(truth) if b is not None]
    assert len(hits) > STEPS // 2 and np.mean(hits) >= 0.95
    no_ball = [t for t, (b, _) in enumerate(truth) if b is None]
    assert np.isnan(balls[no_ball, 0]).all()
    close = [np.abs(paddles[t] - raw_to_frame(p, size)).max() <= 3.0 for t, (_, p) in enumerate(truth) if p is not None]
    assert np.mean(close) >= 0.9


def test_style_is_detected(recorded):
    game, classic, _, _ = recorded
    for style in ("classic", "neon", "inverted", "night", "sepia"):
        frames = apply_style(classic[::25], style)
        assert detect_style(frames, game) == [style] * len(frames)
    t = next(i for i in range(len(classic)) if find_ball(classic[i], game) is not None)
    assert find_ball(apply_style(classic[t], "neon"), game) == pytest.approx(find_ball(classic[t], game, "classic"), abs=0.5)


def test_paddle_motion_follows_the_paddle(recorded):
    game, classic, truth, _ = recorded
    axis = GAMES[game].paddle_axis
    motion = paddle_motion(apply_style(classic, "inverted"), game)
    true = [None if p is None or q is None else q[axis] - p[axis] for (_, p), (_, q) in zip(truth, truth[1:])]
    moved = [(m, np.sign(d)) for m, d in zip(motion, true) if d is not None and abs(d) >= 4 and not np.isnan(m)]
    assert len(moved) > 20
    assert np.mean([m == d for m, d in moved]) >= 0.9


def test_area_resize_keeps_the_ball(recorded):
    game, classic, truth, raw = recorded
    seen = [t for t, (b, _) in enumerate(truth) if b is not None]
    assert ball_recall(classic[seen], classic[seen], game, "classic") == 1.0
    nearest = np.stack([np.asarray(__import__("PIL.Image").Image.fromarray(r).resize((64, 64), 0)) for r in raw[seen]])
    assert np.array_equal(resize_frames(raw[:3], (64, 64)), classic[:3])
    # nearest-neighbour resizing drops the ball in some frames; area resizing never does
    assert ball_recall(classic[seen], nearest, game, "classic") < 1.0
