"""Actions in recorded data: the ActionSpec of a Gymnasium space, and arrays of actions -> features.

Recorded actions are stored as plain arrays, one row per frame: discrete int64 (T,), multi_binary
int8 (T, n), box float32 (T, *shape); a dict space stores one such array per key. `encode_actions`
turns them into the float32 features (T, feature_dim) that `ActionSpec.encode` gives one at a time.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from worldsdk.config import ActionSpec

RecordedActions = np.ndarray | dict[str, np.ndarray]


def action_spec_from_space(space: gym.Space) -> ActionSpec:
    """The ActionSpec of a Gymnasium action space (Discrete, MultiBinary, Box or a Dict of those).

    A Box with per-dimension bounds is declared with its overall min and max (features are scaled
    with those); CarRacing's steer [-1, 1], gas and brake [0, 1] become box(3, -1, 1).
    """
    if isinstance(space, gym.spaces.Discrete):
        if int(space.start) != 0:
            raise ValueError(f"Discrete spaces must start at 0 to be recorded, got start={space.start}")
        return ActionSpec.discrete(int(space.n))
    if isinstance(space, gym.spaces.MultiBinary):
        return ActionSpec.multi_binary(int(np.prod(space.shape)))
    if isinstance(space, gym.spaces.Box):
        return ActionSpec.box(space.shape, float(np.min(space.low)), float(np.max(space.high)))
    if isinstance(space, gym.spaces.Dict):
        return ActionSpec.dict(**{name: action_spec_from_space(sub) for name, sub in space.spaces.items()})
    raise ValueError(f"cannot record actions of space {space}; supported: Discrete, MultiBinary, Box, Dict")


def stack_actions(spec: ActionSpec, actions: list[Any]) -> RecordedActions:
    """A list of T actions -> the stored array form (see the module docstring)."""
    if spec.kind == "discrete":
        return np.asarray([int(a) for a in actions], dtype=np.int64)
    if spec.kind == "multi_binary":
        return np.asarray(actions, dtype=np.int8).reshape(len(actions), spec.n)
    if spec.kind == "box":
        return np.asarray(actions, dtype=np.float32).reshape((len(actions), *spec.shape))
    return {name: stack_actions(sub, [a[name] for a in actions]) for name, sub in spec.spaces}


def slice_actions(actions: RecordedActions, start: int, stop: int) -> RecordedActions:
    if isinstance(actions, Mapping):
        return {name: a[start:stop] for name, a in actions.items()}
    return actions[start:stop]


def encode_actions(spec: ActionSpec, actions: RecordedActions) -> np.ndarray:
    """Stored actions (T, ...) -> float32 features (T, spec.feature_dim), equal to spec.encode per row."""
    if spec.kind == "discrete":
        actions = np.asarray(actions)
        if actions.size and (actions.min() < 0 or actions.max() >= spec.n):
            raise ValueError(f"discrete actions outside [0, {spec.n}): {np.unique(actions)}")
        return np.eye(spec.n, dtype=np.float32)[actions]
    if spec.kind == "multi_binary":
        return np.asarray(actions, dtype=np.float32).reshape(len(actions), spec.n)
    if spec.kind == "box":
        a = np.asarray(actions, dtype=np.float32).reshape(len(actions), -1)
        return (2.0 * (a - spec.low) / (spec.high - spec.low) - 1.0).astype(np.float32)
    if not isinstance(actions, Mapping):
        raise ValueError("a dict action spec needs a dict of action arrays")
    return np.concatenate([encode_actions(sub, actions[name]) for name, sub in spec.spaces], axis=1)
