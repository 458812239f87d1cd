"""Stable-Baselines3 as-is: a `VecEnv` whose envs step in one batched forward of the world.

    from stable_baselines3 import PPO
    from worldsdk.sb3 import make_vec_env
    venv = make_vec_env("pong", num_envs=8, frames="stack")
    PPO("CnnPolicy", venv).learn(10_000)

SB3's own `make_vec_env` runs one env per slot (`DummyVecEnv` steps them one after another), which
for a world means `num_envs` forward passes per step; this adapter keeps the batch that
`WorldVectorEnv` already forms. Needs the `sb3` extra (`pip install 'worldsdk[sb3]'`).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import gymnasium as gym
import numpy as np

try:
    from stable_baselines3.common.vec_env import VecEnv, VecMonitor
except ImportError as exc:  # the sb3 extra is optional
    raise ImportError("worldsdk.sb3 needs Stable-Baselines3: pip install 'worldsdk[sb3]'") from exc

from worldsdk.envs.world_env import WorldVectorEnv
from worldsdk.world import World

# Keys of the vector env's info that SB3 reads under other names.
_SB3_NAMES = {"final_obs": "terminal_observation"}


class WorldVecEnv(VecEnv):
    """An SB3 `VecEnv` over `WorldVectorEnv` (same-step autoreset, SB3's convention).

    Each `info` is the single env's info for that env; an env whose episode ended carries
    `terminal_observation` (the last observation of the finished episode) and
    `TimeLimit.truncated`, the keys SB3's algorithms read to bootstrap truncated episodes.
    """

    def __init__(self, vector_env: WorldVectorEnv):
        if vector_env.autoreset_mode != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError("WorldVecEnv needs a WorldVectorEnv built with autoreset_mode='same_step'")
        self.vector_env = vector_env
        self.render_mode = "rgb_array"
        super().__init__(vector_env.num_envs, vector_env.single_observation_space, vector_env.single_action_space)
        self._actions: np.ndarray | None = None

    @property
    def world(self) -> World:
        return self.vector_env.world

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs, infos = self.vector_env.reset(seed=seed, options=self._options[0] if self._options else None)
        self.reset_infos = _split_infos(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, infos = self.vector_env.step(self._actions)
        per_env = _split_infos(infos, self.num_envs)
        for b, info in enumerate(per_env):
            if terminated[b] or truncated[b]:
                info["TimeLimit.truncated"] = bool(truncated[b] and not terminated[b])
        return obs, rewards.astype(np.float32), terminated | truncated, per_env

    def close(self) -> None:
        self.vector_env.close()

    def get_images(self) -> Sequence[np.ndarray]:
        frames = self.vector_env.render()
        return [] if frames is None else list(frames)

    # One world serves every env, so attributes are the vector env's, the same for each index.
    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.vector_env, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.vector_env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        method = getattr(self.vector_env, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))

    def _get_indices(self, indices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)


def _split_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium's batched info (values plus `_key` masks) -> SB3's list of per-env dicts."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, values in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}", np.ones(num_envs, dtype=bool))
        name = _SB3_NAMES.get(key, key)
        nested = _split_infos(values, num_envs) if isinstance(values, dict) else None  # final_info
        for b in np.flatnonzero(mask):
            value = nested[b] if nested is not None else values[b]
            out[b][name] = value.item() if isinstance(value, np.generic) else value
    return out


def make_vec_env(world: World | str, num_envs: int, monitor: bool = True, **env_kwargs) -> VecEnv:
    """`num_envs` sessions of `world` as an SB3 VecEnv stepped in one batched forward.

    `env_kwargs` are `WorldVectorEnv`'s (frames="chunk" | "last" | "stack", prompt, start, device,
    max_episode_steps; default 1000 like the registered env). `monitor=True` wraps it in SB3's
    `VecMonitor`, so episode returns and lengths reach SB3's logger.
    """
    env_kwargs.setdefault("max_episode_steps", 1000)
    venv: VecEnv = WorldVecEnv(WorldVectorEnv(num_envs, world=world, autoreset_mode="same_step", **env_kwargs))
    return VecMonitor(venv) if monitor else venv
