"""Recording episodes of a Gymnasium game with pixel observations into a dataset.

`record` plays `episodes` episodes under a policy, resizes every frame by area averaging, paints each
episode in a visual style (optionally switching style at a random frame, with the per-frame prompt
recorded), and appends one shard per episode to the dataset directory (see `store.py`). Atari games
(ids starting "ALE/") are made with frameskip 4, no sticky actions (the recorded action is the one
executed) and the minimal action set; other envs are made with render_mode="rgb_array" and may
repeat each action `frameskip` times in the recorder.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from worldsdk.data.actions import action_spec_from_space, stack_actions
from worldsdk.data.policies import Policy, make_policy
from worldsdk.data.resize import resize_frame
from worldsdk.data.store import DatasetMeta, Episode, EpisodeRecord, EpisodeStore
from worldsdk.data.styles import STYLES, apply_style, get_style, prompt_for

log = logging.getLogger(__name__)

ATARI_FRAMESKIP = 4
ATARI_FPS = 60.0  # the console's frame rate; the recorded rate is ATARI_FPS / frameskip
DEFAULT_STYLES = tuple(STYLES)  # every style registered at import: classic, neon, inverted, night, sepia


def game_name(env_id: str) -> str:
    """"ALE/Pong-v5" -> "pong", "CarRacing-v3" -> "carracing"."""
    name = re.sub(r"-v\d+$", "", env_id.rsplit("/", 1)[-1])
    return re.sub(r"NoFrameskip$", "", name).lower()


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def make_env(env_id: str, frameskip: int | None = None, env_kwargs: Mapping | None = None) -> tuple[gym.Env, dict]:
    """The env to record, and the kwargs it was made with (stored in the dataset's metadata)."""
    kwargs = dict(env_kwargs or {})
    if is_atari(env_id):
        import ale_py

        gym.register_envs(ale_py)
        kwargs = {
            "frameskip": ATARI_FRAMESKIP if frameskip is None else frameskip,
            "repeat_action_probability": 0.0,
            "full_action_space": False,
            "obs_type": "rgb",
            **kwargs,
        }
    else:
        kwargs = {"render_mode": "rgb_array", **kwargs}
    return gym.make(env_id, **kwargs), kwargs


def frame_of(observation: Any, env: gym.Env) -> np.ndarray:
    """The RGB frame of a step: the observation when it is an image, else env.render()."""
    if isinstance(observation, np.ndarray) and observation.ndim == 3 and observation.shape[-1] == 3:
        frame = observation
    else:
        frame = env.render()
        if frame is None:
            raise ValueError("the env's observations are not RGB images and render() returned None; make it with render_mode='rgb_array'")
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    return frame


def _episode_seeds(seed: int, episode_id: int) -> tuple[int, np.random.Generator, np.random.Generator]:
    """The env's reset seed, the policy's RNG and the style RNG of one episode, from (seed, id)."""
    sequence = np.random.SeedSequence([int(seed), int(episode_id)])
    env_seed = int(sequence.generate_state(1)[0])
    policy_seq, style_seq = sequence.spawn(2)
    return env_seed, np.random.default_rng(policy_seq), np.random.default_rng(style_seq)


_GOLDEN = (5**0.5 - 1) / 2


def _switches(episode_id: int, fraction: float) -> bool:
    """Whether episode `episode_id` switches style: a low-discrepancy choice (frac(id * golden ratio)),
    so any run of consecutive episodes switches in very nearly `fraction` of them."""
    return (episode_id * _GOLDEN) % 1.0 < fraction


def _paint(frames: np.ndarray, game: str, styles: Sequence[str], first: str, switch: bool, rng: np.random.Generator):
    """Style the classic frames; if `switch`, change to another style at a random frame in the
    middle half. -> frames, prompt ids, prompts, styles."""
    prompt_ids = np.zeros(len(frames), dtype=np.int16)
    names = [first]
    others = [s for s in styles if s != first]
    if others and len(frames) >= 8 and switch:
        switch = int(rng.integers(len(frames) // 4, 3 * len(frames) // 4 + 1))
        names.append(others[int(rng.integers(len(others)))])
        prompt_ids[switch:] = 1
    out = np.empty_like(frames)
    for i, name in enumerate(names):
        mask = prompt_ids == i
        out[mask] = apply_style(frames[mask], name)
    return out, prompt_ids, tuple(prompt_for(game, s) for s in names), tuple(names)


def record(
    env: str | gym.Env,
    out: str | os.PathLike,
    episodes: int,
    *,
    policy: str | Policy = "random",
    size: tuple[int, int] = (64, 64),
    max_steps: int = 1000,
    seed: int = 0,
    styles: Sequence[str] | None = None,
    style_switch_fraction: float = 0.0,
    frameskip: int | None = None,
    game: str | None = None,
    env_kwargs: Mapping | None = None,
    frame_chunk: int = 64,
    progress: bool = False,
) -> list[EpisodeRecord]:
    """Record `episodes` episodes of `env` (an id or an env) into dataset directory `out` (appends).

    Each episode has at most `max_steps` steps (max_steps + 1 frames, the reset frame first), is
    resized to `size` = (height, width) and painted in style styles[episode_id % len(styles)]; a
    `style_switch_fraction` of episodes (spread evenly over ids) switch to another style at a random
    frame in their middle half. Episode e's env seed and RNGs derive from (seed, e), so appending never repeats an episode.
    Returns the index records of the new episodes.
    """
    styles = tuple(DEFAULT_STYLES if styles is None else styles)
    for s in styles:
        get_style(s)
    if episodes < 0 or max_steps < 1:
        raise ValueError(f"need episodes >= 0 and max_steps >= 1, got {episodes}, {max_steps}")
    env_kwargs = dict(env_kwargs or {})
    if isinstance(env, str):
        env_id = env
        env, env_kwargs = make_env(env_id, frameskip, env_kwargs)
        owns_env = True
    else:
        env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        owns_env = False
    atari = is_atari(env_id)
    frameskip = int(env_kwargs.get("frameskip", ATARI_FRAMESKIP)) if atari else int(frameskip or 1)
    repeats = 1 if atari else frameskip  # the ALE skips frames itself
    game = game or game_name(env_id)
    spec = action_spec_from_space(env.action_space)
    fps = ATARI_FPS / frameskip if atari else float(env.metadata.get("render_fps") or 30) / frameskip
    meanings = tuple(env.unwrapped.get_action_meanings()) if hasattr(env.unwrapped, "get_action_meanings") else ()
    meta = DatasetMeta(
        env_id=env_id, game=game, height=int(size[0]), width=int(size[1]), fps=fps, action_spec=spec,
        frameskip=frameskip, action_meanings=meanings, env_kwargs=env_kwargs, frame_chunk=frame_chunk,
    )
    policy_name = policy if isinstance(policy, str) else type(policy).__name__
    player = make_policy(policy, game) if isinstance(policy, str) else policy
    store = EpisodeStore(out)
    records: list[EpisodeRecord] = []
    start_time, frames_done = time.perf_counter(), 0
    try:
        with store.writing(meta), tqdm(total=episodes, unit="episode", disable=not progress, desc=f"recording {game}") as bar:
            for _ in range(episodes):
                episode_id = store.next_episode_id()
                env_seed, policy_rng, style_rng = _episode_seeds(seed, episode_id)
                episode = _play(env, player, policy_rng, env_seed, spec, (meta.height, meta.width), max_steps, repeats)
                frames, prompt_ids, prompts, names = _paint(
                    episode.frames, game, styles, styles[episode_id % len(styles)],
                    _switches(episode_id, style_switch_fraction), style_rng,
                )
                episode.frames, episode.prompt_ids, episode.prompts, episode.styles = frames, prompt_ids, prompts, names
                records.append(store.append(episode, meta, seed=env_seed, policy=policy_name))
                frames_done += len(episode)
                bar.update(1)
                bar.set_postfix(frames=frames_done, fps=f"{frames_done / (time.perf_counter() - start_time):.0f}")
    finally:
        if owns_env:
            env.close()
    elapsed = time.perf_counter() - start_time
    log.info(
        "recorded %d episodes, %d frames of %s in %.1f s (%.0f frames/s) into %s",
        len(records), frames_done, env_id, elapsed, frames_done / max(elapsed, 1e-9), store.root,
    )
    return records


def _play(
    env: gym.Env, player: Policy, rng: np.random.Generator, env_seed: int, spec, size: tuple[int, int], max_steps: int, repeats: int
) -> Episode:
    """One episode in the classic style: frames[0] is the reset frame, actions[t] produced frames[t]."""
    observation, _ = env.reset(seed=env_seed)
    player.reset(env, rng)
    frames = [resize_frame(frame_of(observation, env), size)]
    actions, rewards, terminated, truncated = [spec.noop_action()], [0.0], [False], [False]
    for _ in range(max_steps):
        action = player.act(observation, env)
        reward, term, trunc = 0.0, False, False
        for _ in range(repeats):
            observation, r, term, trunc, _ = env.step(action)
            reward += float(r)
            if term or trunc:
                break
        frames.append(resize_frame(frame_of(observation, env), size))
        actions.append(action)
        rewards.append(reward)
        terminated.append(bool(term))
        truncated.append(bool(trunc))
        if term or trunc:
            break
    else:
        truncated[-1] = True  # cut by max_steps
    return Episode(
        frames=np.stack(frames),
        actions=stack_actions(spec, actions),
        rewards=np.asarray(rewards, dtype=np.float32),
        terminated=np.asarray(terminated),
        truncated=np.asarray(truncated),
        prompt_ids=np.zeros(len(frames), dtype=np.int16),
        prompts=(),
        styles=(),
    )
