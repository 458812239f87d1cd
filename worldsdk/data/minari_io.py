"""Minari (the Farama format for recorded episodes): export a dataset to it, import one from it.

A dataset episode of T frames is a Minari episode of T - 1 steps:

    dataset (store.py)                      Minari episode
    frames (T, H, W, 3) uint8               observations (T, H, W, 3): frame 0 is the reset observation
    actions[1:], rewards[1:],               actions, rewards, terminations, truncations (T - 1): step t
    terminated[1:], truncated[1:]           leads from frame t to frame t + 1 (actions[0] is the no-op
                                            of reset and rewards[0] is 0, so nothing is lost)
    prompt_ids into prompts / styles        infos["prompt"], infos["style"] (str) and infos["prompt_id"]
                                            (int16), one per observation
    EpisodeRecord.seed                      the episode's seed
    meta.json, each episode's policy/game   metadata["worldsdk"] = {"dataset": DatasetMeta, "episodes": [...]}
    env_id and env_kwargs                   env_spec, when the id is registered in Gymnasium

Frames are stored raw (lossless; Minari's `jpeg_encoding=False`), so an import gives back the
recording frame for frame. `jpeg=True` keeps Minari's default, JPEG, about 10 times smaller and lossy.
An import of a Minari dataset that was not exported here takes its observation space as the frames
(uint8 RGB or grayscale images), its action space as the ActionSpec, and prompts "<game>, classic style".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from worldsdk.data.actions import action_spec_from_space, slice_actions, stack_actions
from worldsdk.data.recorder import ATARI_FPS, ATARI_FRAMESKIP, game_name, is_atari
from worldsdk.data.resize import resize_frames
from worldsdk.data.store import DatasetMeta, Episode, EpisodeRecord, EpisodeStore
from worldsdk.data.styles import prompt_for
from worldsdk.errors import UserError

log = logging.getLogger(__name__)

METADATA_KEY = "worldsdk"  # the key of the Minari dataset's metadata that holds what Minari has no field for
DEFAULT_STYLE = "classic"
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AssertionError)  # what Minari and h5py raise on bad files


def _minari():
    try:
        import minari
    except ImportError:
        raise UserError("Minari export and import need the minari package: pip install 'worldsdk[minari]'") from None
    return minari


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def export_minari(dataset: str | os.PathLike, dataset_id: str, *, jpeg: bool = False, progress: bool = False):
    """Write every verified episode of `dataset` as Minari dataset `dataset_id` (under MINARI_DATASETS_PATH,
    default ~/.minari/datasets). Returns the `minari.MinariDataset`."""
    minari = _minari()
    from minari.data_collector import EpisodeBuffer

    store = EpisodeStore(dataset)
    meta = store.meta()
    records = store.verified_records()
    if not records:
        raise UserError(f"{store.root} has no readable episodes to export")
    try:
        minari.dataset.minari_dataset.parse_dataset_id(dataset_id)
    except ValueError:
        raise UserError(f"{dataset_id!r} is not a Minari dataset id; use namespace/name-vN, e.g. worldsdk/pong/scripted-v0") from None
    if minari.storage.get_dataset_path(dataset_id).exists():
        raise UserError(f"Minari dataset {dataset_id} already exists at {minari.storage.get_dataset_path(dataset_id)}; "
                        "pick another name or version, or remove it with `minari delete`")
    with warnings.catch_warnings():  # Minari warns about every optional field left empty (author, permalink, ...)
        warnings.simplefilter("ignore", UserWarning)
        created = minari.create_dataset_from_buffers(
            dataset_id, [], observation_space=gym.spaces.Box(0, 255, (meta.height, meta.width, 3), np.uint8),
            action_space=meta.action_spec.to_space(), algorithm_name=_policies(records),
            description=f"{meta.game} recorded with worldsdk from {meta.env_id} at {meta.height}x{meta.width}, {meta.fps:g} fps",
            jpeg_encoding=jpeg,
        )
    try:
        extra = {METADATA_KEY: {"dataset": meta.to_dict(), "episodes": [{"id": r.id, "policy": r.policy, "game": r.game} for r in records]}}
        env_spec = _registered_spec(meta)
        if env_spec is not None:
            extra["env_spec"] = env_spec.to_json()
        created.storage.update_metadata(extra)
        for record in tqdm(records, unit="episode", disable=not progress, desc=f"exporting {meta.game}"):
            created.storage.update_episodes([_episode_buffer(EpisodeBuffer, store.read(record), record)])
    except BaseException:
        minari.delete_dataset(dataset_id)  # no half-written dataset under the name
        raise
    log.info("exported %d episodes of %s to Minari dataset %s", len(records), store.root, dataset_id)
    return minari.load_dataset(dataset_id)


def _policies(records: list[EpisodeRecord]) -> str:
    return ", ".join(dict.fromkeys(r.policy for r in records if r.policy)) or "unknown"


def _registered_spec(meta: DatasetMeta) -> gym.envs.registration.EnvSpec | None:
    """The Gymnasium spec of the recorded game with the kwargs it was recorded with; None when the id is not registered."""
    if is_atari(meta.env_id):
        try:
            import ale_py

            gym.register_envs(ale_py)
        except ImportError:
            return None
    try:
        spec = gym.spec(meta.env_id)
    except gym.error.Error:
        return None
    return dataclasses.replace(spec, kwargs={**spec.kwargs, **meta.env_kwargs})


def _episode_buffer(buffer_type, episode: Episode, record: EpisodeRecord):
    prompts = [episode.prompts[i] for i in episode.prompt_ids]
    styles = [episode.styles[i] for i in episode.prompt_ids]
    return buffer_type(
        seed=record.seed,
        observations=episode.frames,
        actions=slice_actions(episode.actions, 1, len(episode)),
        rewards=episode.rewards[1:],
        terminations=episode.terminated[1:],
        truncations=episode.truncated[1:],
        infos={"prompt": prompts, "style": styles, "prompt_id": episode.prompt_ids.astype(np.int16)},
    )


# ----------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------


def open_minari(source: str | os.PathLike):
    """A Minari dataset by id (under MINARI_DATASETS_PATH) or by path (its folder or the `data` folder in it)."""
    minari = _minari()
    path = Path(source)
    try:
        if path.is_dir():
            data = path / "data" if (path / "data").is_dir() else path
            return minari.MinariDataset(data)
        return minari.load_dataset(str(source))
    except FileNotFoundError:
        raise UserError(f"{source} is neither a Minari dataset id found under {minari.storage.get_dataset_path()} "
                        "nor a Minari dataset folder") from None
    except (*_READ_ERRORS, json.JSONDecodeError) as err:
        raise UserError(f"{source} is not a readable Minari dataset ({type(err).__name__}: {err})") from err


def import_minari(
    source: str | os.PathLike, out: str | os.PathLike, *, size: tuple[int, int] | None = None, progress: bool = False
) -> list[EpisodeRecord]:
    """Append every episode of Minari dataset `source` (an id or a path) to dataset directory `out`,
    resized to `size` = (height, width) by area averaging when given. Returns the new index records."""
    dataset = open_minari(source)
    try:
        metadata = dataset.storage.metadata
        meta, extras = _dataset_meta(dataset, metadata, str(source), size)
        seeds = [m.get("seed") for m in dataset.storage.get_episode_metadata(dataset.episode_indices)]
    except _READ_ERRORS as err:
        raise UserError(f"{source} is not a readable Minari dataset ({type(err).__name__}: {err})") from err
    store = EpisodeStore(out)
    if store.exists() and (diffs := store.meta().differences(meta)):
        raise UserError(f"cannot import {source} into {store.root}: its episodes were recorded differently ({'; '.join(diffs)})")
    default_policy = metadata.get("algorithm_name") or "minari"
    records: list[EpisodeRecord] = []
    episodes = dataset.iterate_episodes()
    with store.writing(meta), tqdm(total=len(seeds), unit="episode", disable=not progress, desc=f"importing {meta.game}") as bar:
        for i, seed in enumerate(seeds):
            try:
                minari_episode = next(episodes)
            except _READ_ERRORS as err:
                raise UserError(f"{source}: episode {i} cannot be read ({type(err).__name__}: {err})") from err
            episode = _episode(minari_episode, meta, size, str(source))
            extra = extras[i] if i < len(extras) else {}
            records.append(store.append(
                episode, meta, seed=None if seed is None else int(seed),
                policy=extra.get("policy", default_policy), game=extra.get("game"),
            ))
            bar.update(1)
    log.info("imported %d episodes of %s into %s", len(records), source, store.root)
    return records


def _dataset_meta(dataset, metadata: Mapping[str, Any], source: str, size: tuple[int, int] | None) -> tuple[DatasetMeta, list[dict]]:
    """The DatasetMeta of the imported dataset, and the per-episode extras an export wrote (else [])."""
    frame_shape = _frame_shape(dataset.observation_space, source)
    height, width = size or frame_shape
    ours = metadata.get(METADATA_KEY)
    if ours is not None:
        meta = DatasetMeta.from_dict(ours["dataset"])
        return dataclasses.replace(meta, height=int(height), width=int(width)), list(ours.get("episodes", []))
    try:
        spec = action_spec_from_space(dataset.action_space)
    except ValueError as err:
        raise UserError(f"{source}: {err}") from None
    env_spec = dataset.env_spec
    env_id = env_spec.id if env_spec is not None else str(metadata.get("dataset_id") or source)
    env_kwargs = dict(env_spec.kwargs) if env_spec is not None else {}
    if is_atari(env_id):
        frameskip = env_kwargs.get("frameskip", ATARI_FRAMESKIP)
        frameskip = frameskip if isinstance(frameskip, int) else ATARI_FRAMESKIP
        fps = ATARI_FPS / frameskip
    else:
        frameskip, fps = 1, 30.0
    meta = DatasetMeta(
        env_id=env_id, game=_game(env_id, env_spec), height=int(height), width=int(width), fps=fps, action_spec=spec,
        frameskip=frameskip, action_meanings=_action_meanings(env_spec, spec), env_kwargs=_json_safe(env_kwargs),
    )
    return meta, []


def _frame_shape(space: gym.Space, source: str) -> tuple[int, int]:
    """(H, W) of a Minari observation space that holds uint8 images: (H, W, 3), (H, W, 1) or (H, W)."""
    shape = getattr(space, "shape", None)
    if not (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and shape is not None
            and (len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3)))):
        raise UserError(f"{source}: observations {space} are not uint8 images (H, W, 3) or (H, W); worlds train on frames")
    return int(shape[0]), int(shape[1])


def _game(env_id: str, env_spec) -> str:
    if env_spec is None and "/" in env_id:  # a dataset id such as "atari/pong/expert-v0": its middle part
        parts = env_id.split("/")
        return game_name(parts[-2] if len(parts) > 2 else parts[-1])
    return game_name(env_id)


def _action_meanings(env_spec, spec) -> tuple[str, ...]:
    """The recorded game's action names (Atari), by making the env; () when it cannot be made."""
    if env_spec is None or spec.kind != "discrete":
        return ()
    try:
        if is_atari(env_spec.id):
            import ale_py

            gym.register_envs(ale_py)
        env = gym.make(env_spec)
    except Exception as err:  # a foreign env may need packages or assets that are not here; names are optional
        log.info("action names of %s unknown (%s)", env_spec.id, err)
        return ()
    try:
        meanings = env.unwrapped.get_action_meanings() if hasattr(env.unwrapped, "get_action_meanings") else ()
    finally:
        env.close()
    return tuple(meanings) if len(meanings) == spec.n else ()


def _json_safe(kwargs: Mapping) -> dict:
    return {k: v for k, v in kwargs.items() if _is_json(v)}


def _is_json(value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def _episode(minari_episode, meta: DatasetMeta, size: tuple[int, int] | None, source: str) -> Episode:
    """A Minari episode -> our Episode (frames first; the reset frame gets the no-op action and reward 0)."""
    frames = np.asarray(minari_episode.observations)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if size is not None:
        frames = resize_frames(frames, size)
    steps = len(minari_episode.rewards)
    if len(frames) != steps + 1:
        raise UserError(f"{source}: episode {minari_episode.id} has {len(frames)} observations for {steps} steps (needs steps + 1)")
    spec = meta.action_spec
    actions = minari_episode.actions
    if spec.kind == "dict":
        step_actions = [{name: actions[name][t] for name, _ in spec.spaces} for t in range(steps)]
    else:
        step_actions = list(np.asarray(actions))
    terminated = np.concatenate([[False], np.asarray(minari_episode.terminations, dtype=bool)])
    truncated = np.concatenate([[False], np.asarray(minari_episode.truncations, dtype=bool)])
    if steps and not (terminated[-1] or truncated[-1]):
        truncated[-1] = True  # the recording stopped there: a cut, as the recorder marks one
    prompt_ids, prompts, styles = _prompts(minari_episode.infos or {}, steps + 1, meta.game)
    return Episode(
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        actions=stack_actions(spec, [spec.noop_action(), *step_actions]),
        rewards=np.concatenate([[0.0], np.asarray(minari_episode.rewards, dtype=np.float32)]).astype(np.float32),
        terminated=terminated,
        truncated=truncated,
        prompt_ids=prompt_ids,
        prompts=prompts,
        styles=styles,
    )


def _prompts(infos: Mapping, length: int, game: str) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Per-frame prompt ids, and the prompts and styles they index (in order of first appearance)."""
    if "prompt" not in infos or "style" not in infos or len(infos["prompt"]) != length:
        return np.zeros(length, np.int16), (prompt_for(game, DEFAULT_STYLE),), (DEFAULT_STYLE,)
    pairs = [(_text(p), _text(s)) for p, s in zip(infos["prompt"], infos["style"])]
    first = list(dict.fromkeys(pairs))
    ids = {pair: i for i, pair in enumerate(first)}
    return (np.asarray([ids[p] for p in pairs], np.int16), tuple(p for p, _ in first), tuple(s for _, s in first))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------------------------
# `worldsdk minari`
# ----------------------------------------------------------------------------------------------


def configure(parser) -> None:
    from worldsdk.data.cli import parse_size

    sub = parser.add_subparsers(dest="minari_command", metavar="{export,import}", required=True)
    export = sub.add_parser("export", help="write a recorded dataset as a Minari dataset",
                            description="Write a recorded dataset as a Minari dataset (under MINARI_DATASETS_PATH, "
                                        "default ~/.minari/datasets): frames, actions, rewards, episode ends, prompts.")
    export.add_argument("dataset", help="dataset directory (from `worldsdk record` or `worldsdk minari import`)")
    export.add_argument("dataset_id", help="Minari dataset id, namespace/name-vN, e.g. worldsdk/pong/scripted-v0")
    export.add_argument("--jpeg", action="store_true",
                        help="store frames as JPEG, Minari's default (about 10x smaller, lossy); default: raw, lossless")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    imported = sub.add_parser("import", help="append the episodes of a Minari dataset to a dataset",
                              description="Append the episodes of a Minari dataset (an id under MINARI_DATASETS_PATH, "
                                          "or its folder) to a dataset directory that worlds train on.")
    imported.add_argument("source", help="Minari dataset id (e.g. worldsdk/pong/scripted-v0) or its folder")
    imported.add_argument("out", help="dataset directory (created, or appended to)")
    imported.add_argument("--size", type=parse_size, default=None,
                          help="resize frames to N or HxW by area averaging (default: keep the dataset's size)")
    imported.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args) -> int:
    if args.minari_command == "export":
        dataset = export_minari(args.dataset, args.dataset_id, jpeg=args.jpeg, progress=not args.quiet)
        print(f"exported {dataset.total_episodes} episodes ({dataset.total_steps} steps) of {args.dataset} "
              f"as Minari dataset {args.dataset_id} in {dataset.storage.data_path.parent}")
        return 0
    records = import_minari(args.source, args.out, size=args.size, progress=not args.quiet)
    print(f"imported {len(records)} episodes ({sum(r.length for r in records)} frames) of {args.source} into {args.out}")
    return 0
