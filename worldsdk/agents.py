"""Agents in worlds: the real game seen exactly as its world sees it, the policy's view of frames, and
evaluation on the real game.

A world is trained on recorded frames (`worldsdk.data.recorder`: frameskip 4, minimal action set,
area resize, a palette style) and steps one chunk of frames per action. `RealGameEnv` wraps the
real game behind the same interface: it applies the recorder's frame pipeline to every frame and
repeats one action over a chunk, so its observation and action spaces equal the world env's and a
policy trained inside the world plays the real game unchanged.

A policy sees frames through one `ObservationConfig`, applied alike to the world's frames and the
real game's: "pixels" (`pixel_observation`: the chunk as grey images, for a CNN) or "objects"
(`object_observation`: where the ball and the player's paddle are, found by colour with
`worldsdk.data.objects`, a few floats per frame for an MLP). `PolicyObservation` is the same
transform as a Gymnasium wrapper, for other RL libraries.

    world_env = gymnasium.make("worldsdk/World-v0", world="pong")
    real_env = make_real_env(world_env.unwrapped.world, max_episode_steps=10_000)
    view = ObservationConfig("objects", game="pong")
    agent_env = PolicyObservation(real_env, view)       # Box(-1, 1, (10,), float32) for a chunk of 2
    scores = evaluate(my_act, real_env, episodes=20)
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldsdk.data.actions import action_spec_from_space
from worldsdk.data.objects import find_balls, find_paddles, get_game
from worldsdk.data.recorder import ATARI_FRAMESKIP, frame_of, is_atari, make_env
from worldsdk.data.resize import resize_frame
from worldsdk.data.store import DatasetMeta, EpisodeStore
from worldsdk.data.styles import apply_style, get_style

DEFAULT_GAME = "ALE/Pong-v5"
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma weights

OBSERVATION_MODES = ("pixels", "objects")
# per frame, in this order; a missing object has its flag and coordinates 0
OBJECT_FEATURES = ("paddle_seen", "paddle", "ball_seen", "ball_row", "ball_col")


def _check_frames(frames: np.ndarray, what: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 4 or frames.shape[-1] != 3:
        raise ValueError(f"{what} expects uint8 frames (..., chunk, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def pixel_observation(frames: np.ndarray) -> np.ndarray:
    """uint8 frames (..., chunk, H, W, 3) -> float32 luma (..., chunk, H, W) in [0, 1].

    Grey keeps Pong's objects apart (luma: ground 87, paddles 147-148, ball 236) at a third of the
    input size; the chunk's frames stay separate channels, which carry the ball's motion."""
    frames = _check_frames(frames, "pixel_observation")
    return (frames.astype(np.float32) @ LUMA) / np.float32(255.0)


def _to_unit(position: np.ndarray, n: float | np.ndarray) -> np.ndarray:
    """Pixel coordinates (centre of pixel 0 at 0.0) of an n-pixel axis -> [-1, 1] (the frame's edges)."""
    return np.clip(2.0 * (position + 0.5) / n - 1.0, -1.0, 1.0)


def object_observation(frames: np.ndarray, game: str = "pong", style: str | None = "classic") -> np.ndarray:
    """uint8 frames (..., chunk, H, W, 3) -> float32 (..., chunk * 5) in [-1, 1]: per frame, in the
    order of `OBJECT_FEATURES`, whether the player's paddle is seen, its centre along the axis it
    moves on (Pong: row, Breakout: column), whether the ball is seen, and its row and column.

    Coordinates map the frame's edges to -1 and 1; an object not found has flag 0 and coordinates 0
    (Pong: no ball between a point and the serve; a paddle pushed mostly above the playfield). The
    finders are `worldsdk.data.objects.find_paddles` and `find_balls`; `style` is the frames' palette
    style (None: detected per frame, about twice as slow). Two frames per chunk make the ball's
    velocity visible."""
    frames = _check_frames(frames, "object_observation")
    axis = get_game(game).paddle_axis
    *lead, chunk, height, width, _ = frames.shape
    flat = frames.reshape(-1, height, width, 3)  # (N, H, W, 3)
    size = np.array([height, width], dtype=np.float32)
    features = np.zeros((len(flat), len(OBJECT_FEATURES)), dtype=np.float32)  # (N, 5)
    if len(flat):
        paddle = find_paddles(flat, game, style)[:, axis]  # (N,)
        ball = find_balls(flat, game, style)  # (N, 2)
        paddle_seen, ball_seen = ~np.isnan(paddle), ~np.isnan(ball[:, 0])
        features[:, 0], features[:, 2] = paddle_seen, ball_seen
        features[paddle_seen, 1] = _to_unit(paddle[paddle_seen], size[axis])
        features[ball_seen, 3:5] = _to_unit(ball[ball_seen], size)
    return features.reshape(*lead, chunk * len(OBJECT_FEATURES))


@dataclass(frozen=True)
class ObservationConfig:
    """How a policy sees the frames of a world or of the real game; stored with a trained policy so
    that evaluation rebuilds the same view.

    `mode`: "pixels" (`pixel_observation`) or "objects" (`object_observation`). `game`: the object
    finder's game ("pong", "breakout"; `worldsdk.data.objects.GAMES`) and `style`: the frames'
    palette style (None: detect per frame); both are used by "objects" only."""

    mode: str
    game: str = "pong"
    style: str | None = "classic"

    def __post_init__(self):
        if self.mode not in OBSERVATION_MODES:
            raise ValueError(f"observation mode must be one of {OBSERVATION_MODES}, got {self.mode!r}")
        if self.mode == "objects":
            get_game(self.game)  # KeyError naming the games with an object finder
        if self.style is not None:
            get_style(self.style)

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (..., chunk, H, W, 3) -> the policy's float32 input, (..., *self.shape(...))."""
        if self.mode == "pixels":
            return pixel_observation(frames)
        return object_observation(frames, self.game, self.style)

    def shape(self, chunk: int, height: int, width: int) -> tuple[int, ...]:
        """The policy's input shape for chunks of `chunk` frames of height x width."""
        return (chunk, height, width) if self.mode == "pixels" else (chunk * len(OBJECT_FEATURES),)

    def space(self, frame_space: spaces.Box) -> spaces.Box:
        """The observation space after `apply`, given the env's `Box(0, 255, (chunk, H, W, 3), uint8)`."""
        shape = self.shape(*frame_space.shape[:3])
        low = 0.0 if self.mode == "pixels" else -1.0
        return spaces.Box(low, 1.0, shape, np.float32)


class PolicyObservation(gym.ObservationWrapper):
    """A world env or a `RealGameEnv` seen through `config` (an `ObservationConfig`): wrap both in the
    same config and a policy cannot tell them apart. For a vector env, apply `config.apply` to the
    batch of frames (it takes any leading dimensions). `render()` still shows the frames."""

    def __init__(self, env: gym.Env, config: ObservationConfig):
        super().__init__(env)
        self.config = config
        self.observation_space = config.space(env.observation_space)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return self.config.apply(observation)


class RealGameEnv(gym.Env):
    """## Description
    The real game behind its world's interface: every frame goes through the recorder's pipeline
    (area resize to the world's resolution, then the palette style) and one action is held for a
    chunk of `chunk` frames, as the world steps. An Atari game (id "ALE/...") is made as the
    recorder makes it: frameskip 4, no sticky actions, the minimal action set; another game repeats
    each action `frameskip` times per frame, as the recorder does.

    ## Action Space
    The game's (for Pong: `Discrete(6)`, ALE's minimal set, equal to the pong world's).

    ## Observation Space
    `Box(0, 255, (chunk, H, W, 3), uint8)`: the chunk of frames the action produced, equal to the
    world env's observation space.

    ## Rewards
    The game's reward summed over the chunk; `info["reward_predicted"]` is False (a real reward).

    ## Starting State
    The game's reset frame followed by `chunk - 1` frames under the no-op action (the world likewise
    opens with a chunk generated under the no-op). Options (a world's "prompt", "start", ...) are
    accepted and ignored, so code written for the world env runs unchanged.

    ## Episode End
    Terminates when the game ends (Pong: a player reaches 21); the chunk is then padded with the
    last frame. Truncates when the game truncates; add a limit with `max_episode_steps` in
    `make_real_env`.

    ## Arguments
    `env_id`: a Gymnasium id with pixel observations or an rgb_array render. `size`: (height, width)
    of the frames. `chunk`: frames per step. `style`: the palette style (the worlds' classic one by
    default). `frameskip` and `env_kwargs`: as for the recorder (`worldsdk.data.recorder.make_env`).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, env_id: str = DEFAULT_GAME, size: tuple[int, int] = (64, 64), chunk: int = 2,
                 style: str = "classic", frameskip: int | None = None, env_kwargs: Mapping | None = None,
                 render_mode: str | None = None):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.style = get_style(style).name
        self.size = (int(size[0]), int(size[1]))
        self.chunk = int(chunk)
        self.game, self.env_kwargs = make_env(env_id, frameskip, env_kwargs)
        self.env_id = env_id
        atari = is_atari(env_id)
        self.frameskip = int(self.env_kwargs.get("frameskip", ATARI_FRAMESKIP)) if atari else int(frameskip or 1)
        self._repeats = 1 if atari else self.frameskip  # the ALE skips frames itself
        fps = (60.0 if atari else float(self.game.metadata.get("render_fps") or 30)) / self.frameskip
        self.metadata = {**self.metadata, "render_fps": int(fps) if fps.is_integer() else fps}
        self.render_mode = render_mode
        self.action_space = self.game.action_space
        self.observation_space = spaces.Box(0, 255, (self.chunk, *self.size, 3), np.uint8)
        self._noop = action_spec_from_space(self.action_space).noop_action()
        self._frames: np.ndarray | None = None

    def settings(self) -> dict:
        """The arguments that rebuild this env, JSON-able: `RealGameEnv(**env.settings())`."""
        return {"env_id": self.env_id, "size": list(self.size), "chunk": self.chunk, "style": self.style,
                "frameskip": self.frameskip, "env_kwargs": dict(self.env_kwargs)}

    def _frame(self, observation: Any) -> np.ndarray:
        """One game observation -> the frame the recorder would store: area resize, then the style."""
        return apply_style(resize_frame(frame_of(observation, self.game), self.size), self.style)

    def _advance(self, action: Any) -> tuple[np.ndarray, float, bool, bool]:
        """One recorded frame's worth of game steps under `action`."""
        reward, terminated, truncated = 0.0, False, False
        for _ in range(self._repeats):
            observation, r, terminated, truncated, _ = self.game.step(action)
            reward += float(r)
            if terminated or truncated:
                break
        return self._frame(observation), reward, bool(terminated), bool(truncated)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        observation, _ = self.game.reset(seed=seed)
        frames, terminated, truncated = [self._frame(observation)], False, False
        while len(frames) < self.chunk and not (terminated or truncated):
            frame, _, terminated, truncated = self._advance(self._noop)
            frames.append(frame)
        self._frames = self._pad(frames)
        return self._frames, {"reward_predicted": False}

    def step(self, action):
        if self._frames is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in the game's action space {self.action_space}")
        frames, reward, terminated, truncated = [], 0.0, False, False
        while len(frames) < self.chunk and not (terminated or truncated):
            frame, r, terminated, truncated = self._advance(action)
            frames.append(frame)
            reward += r
        self._frames = self._pad(frames)
        return self._frames, reward, terminated, truncated, {"reward_predicted": False}

    def _pad(self, frames: list[np.ndarray]) -> np.ndarray:
        """(chunk, H, W, 3): a chunk cut short by the episode's end repeats its last frame."""
        return np.stack(frames + [frames[-1]] * (self.chunk - len(frames)))

    def render(self):
        if self.render_mode == "rgb_array" and self._frames is not None:
            return self._frames[-1].copy()
        return None

    def close(self):
        self.game.close()


def make_real_env(world: Any = None, *, dataset: str | os.PathLike | DatasetMeta | None = None,
                  env_id: str | None = None, style: str = "classic", max_episode_steps: int | None = None,
                  render_mode: str | None = None) -> gym.Env:
    """The real game seen as `world` sees it: a `RealGameEnv` with the world's resolution and chunk.

    `world`: a `World`, a world env (its `.unwrapped.world`), or None for a Pong world's shape (64x64,
    chunk 2). `dataset`: a dataset directory or its `DatasetMeta` (e.g. the world's training data):
    its game, frameskip and env kwargs are used, and its resolution must equal the world's.
    `env_id` overrides the game (default: the dataset's, else "ALE/Pong-v5"). `max_episode_steps`
    wraps the env in a `TimeLimit` (steps of one chunk)."""
    world = getattr(getattr(world, "unwrapped", world), "world", world)
    size, chunk = (64, 64), 2
    if world is not None:
        size, chunk = (world.spec.height, world.spec.width), world.chunk_frames
    frameskip, env_kwargs = None, None
    if dataset is not None:
        meta = dataset if isinstance(dataset, DatasetMeta) else EpisodeStore(Path(dataset)).meta()
        if world is not None and (meta.height, meta.width) != size:
            raise ValueError(f"the dataset's frames are {meta.height}x{meta.width}, the world's {size[0]}x{size[1]}")
        size, frameskip, env_kwargs = (meta.height, meta.width), meta.frameskip, meta.env_kwargs
        env_id = env_id or meta.env_id
    env: gym.Env = RealGameEnv(env_id or DEFAULT_GAME, size, chunk, style, frameskip, env_kwargs, render_mode)
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    return env


def random_actor(action_space: gym.Space, seed: int = 0) -> Callable[[np.ndarray], Any]:
    """The random agent: ignores the observation, samples the action space uniformly (seeded)."""
    space = copy.deepcopy(action_space)  # its own RNG: seeding it leaves the env's space alone
    space.seed(seed)
    return lambda observation: space.sample()


def evaluate(act: Callable[[np.ndarray], Any], env: gym.Env, episodes: int = 20, seed: int = 0,
             progress: Callable[[int, float], None] | None = None) -> np.ndarray:
    """Play `episodes` whole episodes and return their scores (summed rewards), float64 (episodes,).

    `act` maps one observation to an action. Episode e resets with seed `seed + e`, so two agents are
    scored on the same starts; cap long episodes with a `TimeLimit` on `env`. `progress(e, score)` is
    called after each episode."""
    scores = np.zeros(episodes, dtype=np.float64)
    for e in range(episodes):
        observation, _ = env.reset(seed=seed + e)
        done = False
        while not done:
            observation, reward, terminated, truncated, _ = env.step(act(observation))
            scores[e] += float(reward)
            done = terminated or truncated
        if progress is not None:
            progress(e, scores[e])
    return scores
