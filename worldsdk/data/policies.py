"""Policies that play a game while it is recorded.

A policy is an object with `reset(env, rng)` at the start of an episode and `act(observation, env)`
for every step; all randomness comes from the `rng` it was reset with, so a seeded recording is
reproducible. `RandomPolicy` works on any action space; `PongPolicy` and `BreakoutPolicy` read the
Atari RAM to find ball and paddle and keep the ball in play, with epsilon-random actions so that
every action of the minimal set appears in the data.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import gymnasium as gym
import numpy as np


class Policy(Protocol):
    def reset(self, env: gym.Env, rng: np.random.Generator) -> None: ...

    def act(self, observation: np.ndarray, env: gym.Env) -> Any: ...


def _sample(space: gym.Space, rng: np.random.Generator) -> Any:
    """A uniform sample from `space` drawn from `rng` (gymnasium's own sample uses the space's RNG)."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start + rng.integers(space.n))
    if isinstance(space, gym.spaces.MultiBinary):
        return rng.integers(0, 2, size=space.shape, dtype=np.int8)
    if isinstance(space, gym.spaces.Box):
        return rng.uniform(space.low, space.high).astype(space.dtype)
    if isinstance(space, gym.spaces.Dict):
        return {name: _sample(sub, rng) for name, sub in space.spaces.items()}
    raise TypeError(f"cannot sample actions from {space}")


class RandomPolicy:
    """Uniform random actions, each repeated with probability `repeat_prob` (mean hold 1 / (1 - p) steps)."""

    def __init__(self, repeat_prob: float = 0.75):
        self.repeat_prob = repeat_prob
        self._rng = np.random.default_rng()
        self._last: Any = None

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        self._rng = rng
        self._last = None

    def act(self, observation: np.ndarray, env: gym.Env) -> Any:
        if self._last is None or self._rng.random() >= self.repeat_prob:
            self._last = _sample(env.action_space, self._rng)
        return self._last


class _AtariScriptedPolicy:
    """Shared machinery: epsilon-random sticky actions, and a choice among equivalent actions."""

    def __init__(self, epsilon: float = 0.2, mean_hold: float = 3.0):
        self.epsilon = epsilon
        self.mean_hold = mean_hold
        self._rng = np.random.default_rng()
        self._random_left = 0
        self._random_action = 0

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        self._rng = rng
        self._random_left = 0
        meanings = env.unwrapped.get_action_meanings()
        self._by_meaning = {m: i for i, m in enumerate(meanings)}
        self._n = len(meanings)
        self.reset_game()

    def reset_game(self) -> None:
        pass

    def _one_of(self, *meanings: str) -> int:
        """One of the named actions that exist in the env's action set, chosen at random."""
        ids = [self._by_meaning[m] for m in meanings if m in self._by_meaning]
        return ids[int(self._rng.integers(len(ids)))]

    def act(self, observation: np.ndarray, env: gym.Env) -> int:
        scripted, safe = self.decide(env.unwrapped.ale.getRAM())
        if not safe:
            self._random_left = 0
        if self._random_left > 0:
            self._random_left -= 1
            return self._random_action
        # explore only while the ball is moving away: all actions appear and rallies stay long
        if safe and self._rng.random() < self.epsilon:
            self._random_action = int(self._rng.integers(self._n))
            self._random_left = int(self._rng.geometric(1.0 / self.mean_hold)) - 1
            return self._random_action
        return scripted

    def decide(self, ram: np.ndarray) -> tuple[int, bool]:
        """The scripted action for this RAM state, and whether a random action now is harmless."""
        raise NotImplementedError


class PongPolicy(_AtariScriptedPolicy):
    """Moves the right (green) paddle to where the ball will cross it, aiming with a random offset.

    RAM (screen coordinates, found against the frames): ball x = ram[49] - 49, ball top y =
    ram[54] - 14, player paddle top y = ram[51] - 13 (16 pixels tall, at x = 140..143). RIGHT moves
    the paddle up, LEFT down; FIRE variants act the same and are mixed in so all 6 actions appear.
    The paddle has momentum (about 22 pixels a step at full speed, and it coasts a step after
    release), so the policy steers by where the paddle will be, not where it is.
    """

    PADDLE_X = 140
    TOP, BOTTOM = 34, 194  # playfield rows
    dead_zone = 4.0  # pixels; the paddle is 16 tall
    lead = 1.0  # steps of paddle velocity to look ahead

    def reset_game(self) -> None:
        self._previous_ball: tuple[int, int] | None = None
        self._previous_paddle: int | None = None
        self._offset = 0.0

    def decide(self, ram: np.ndarray) -> tuple[int, bool]:
        ram = ram.astype(np.int64)
        ball_x, ball_y = int(ram[49]) - 49, int(ram[54]) - 14 + 2  # ball centre row
        paddle_y = int(ram[51]) - 13 + 8  # paddle centre row
        velocity = 0 if self._previous_paddle is None else paddle_y - self._previous_paddle
        self._previous_paddle = paddle_y
        visible = 0 <= ball_x < 160 and self.TOP <= ball_y < self.BOTTOM
        middle = (self.TOP + self.BOTTOM) / 2.0
        target, safe = middle, True
        if visible:
            if self._previous_ball is not None:
                vx, vy = ball_x - self._previous_ball[0], ball_y - self._previous_ball[1]
                if vx > 0:  # coming towards us: aim at the predicted crossing, reflected off the walls
                    crossing = ball_y + vy * (self.PADDLE_X - ball_x) / vx
                    target = _reflect(crossing, self.TOP + 2, self.BOTTOM - 2) + self._offset
                    safe = False
                else:  # going away: choose which part of the paddle hits it next time
                    if vx < 0 and self._rng.random() < 0.1:
                        self._offset = float(self._rng.uniform(-5.0, 5.0))
                    target = (ball_y + middle) / 2.0
            self._previous_ball = (ball_x, ball_y)
        else:
            self._previous_ball = None
        expected = paddle_y + self.lead * velocity
        if expected > target + self.dead_zone:
            return self._one_of("RIGHT", "RIGHTFIRE"), safe
        if expected < target - self.dead_zone:
            return self._one_of("LEFT", "LEFTFIRE"), safe
        return self._one_of("NOOP", "FIRE"), safe


class BreakoutPolicy(_AtariScriptedPolicy):
    """Keeps the paddle under the ball and serves with FIRE when no ball is in play.

    RAM: ball x = ram[99] - 49 (2 wide), ball y = ram[101] + 9 (ram[101] = 0 when no ball), paddle
    left x = ram[72] - 47 (16 wide, rows 189..192).
    """

    dead_zone = 3.0

    def reset_game(self) -> None:
        self._offset = 0.0
        self._previous_y = 0

    def decide(self, ram: np.ndarray) -> tuple[int, bool]:
        ram = ram.astype(np.int64)
        ball_x, ball_raw_y = int(ram[99]) - 49 + 1, int(ram[101])
        paddle_x = int(ram[72]) - 47 + 8
        if ball_raw_y == 0:  # no ball in play: serve
            return self._one_of("FIRE"), True
        rising = ball_raw_y < self._previous_y
        if rising and self._rng.random() < 0.1:
            self._offset = float(self._rng.uniform(-6.0, 6.0))  # where on the paddle to hit it next
        self._previous_y = ball_raw_y
        target = ball_x + self._offset
        safe = rising and ball_raw_y < 120
        if paddle_x < target - self.dead_zone:
            return self._one_of("RIGHT"), safe
        if paddle_x > target + self.dead_zone:
            return self._one_of("LEFT"), safe
        return self._one_of("NOOP", "FIRE"), safe


def _reflect(y: float, low: float, high: float) -> float:
    """Fold `y` into [low, high] as a ball bouncing between two walls would."""
    span = high - low
    y = (y - low) % (2 * span)
    return low + (y if y <= span else 2 * span - y)


SCRIPTED_POLICIES: dict[str, Callable[[], Policy]] = {"pong": PongPolicy, "breakout": BreakoutPolicy}
POLICY_NAMES = ("random", "scripted")


def make_policy(name: str, game: str) -> Policy:
    """"random" (any game) or "scripted" (games in SCRIPTED_POLICIES)."""
    if name == "random":
        return RandomPolicy()
    if name == "scripted":
        if game not in SCRIPTED_POLICIES:
            raise ValueError(f"no scripted policy for game {game!r}; scripted games: {sorted(SCRIPTED_POLICIES)}, or use 'random'")
        return SCRIPTED_POLICIES[game]()
    raise ValueError(f"unknown policy {name!r}; choose one of {POLICY_NAMES} or pass a Policy object")
