"""The on-disk dataset: one compressed shard per episode, an index with checksums, and metadata.

Layout of a dataset directory:

    meta.json              DatasetMeta: env id, game, resolution, fps, frameskip, ActionSpec, ...
    index.json             {"format_version": 1, "episodes": [EpisodeRecord, ...]}
    episodes/ep_000000.npz one episode: zip (deflate) of .npy arrays, loadable with allow_pickle=False
    .lock                  held (flock) by the one process recording into the directory

An episode of T frames stores, aligned by frame t:
    frames_00000, ...      uint8 (<= frame_chunk, H, W, 3): the frames in chunks, so a clip is read
                           without inflating the whole episode
    actions                the action that produced frame t (actions[0]: the no-op of reset);
                           int64 (T,) for discrete, int8 (T, n) multi_binary, float32 (T, *shape) box;
                           a dict spec stores actions.<name> per key
    rewards                float32 (T,): reward received on arriving at frame t
    terminated, truncated  bool (T,): frame t ends the episode (true only at the last frame)
    prompt_ids             int16 (T,): index into prompts / styles, per frame
    prompts, styles        unicode (K,): the episode's prompts and the style each one names

Crash safety: a shard is written to a temporary file and renamed into place, then the index is
rewritten to a temporary file and renamed; a crash loses at most the episode being written, and a
shard that is not in the index is ignored. The index holds each shard's size and sha256, so a
truncated or corrupt shard is reported by name and skipped, never read as zeros.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from worldsdk.config import ActionSpec
from worldsdk.data.actions import RecordedActions

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"
INDEX_FILE = "index.json"
SHARD_DIR = "episodes"
LOCK_FILE = ".lock"
ACTION_ALIGNMENT = "actions[t] produced frame t; actions[0] is the no-op of reset"
_SHARD_NAME = re.compile(r"^ep_(\d+)\.npz$")


class CorruptShardError(RuntimeError):
    """A shard that cannot be read back as written (names the file)."""


class DatasetError(ValueError):
    """A dataset's meta.json or index.json that cannot be read (names the file)."""


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is corrupt ({what} is not valid JSON: {err}); restore it or record the dataset again") from err


@dataclass(frozen=True)
class DatasetMeta:
    """What every episode of a dataset shares; written once, checked on every append."""

    env_id: str
    game: str
    height: int
    width: int
    fps: float
    action_spec: ActionSpec
    frameskip: int = 1
    action_meanings: tuple[str, ...] = ()
    env_kwargs: Mapping = field(default_factory=dict)
    frame_chunk: int = 64
    action_alignment: str = ACTION_ALIGNMENT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        d["action_spec"] = self.action_spec.to_dict()
        d["action_meanings"] = list(self.action_meanings)
        d["env_kwargs"] = dict(self.env_kwargs)
        return d

    @staticmethod
    def from_dict(d: Mapping) -> "DatasetMeta":
        d = dict(d)
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"dataset format {d['format_version']} is newer than this worldsdk reads ({FORMAT_VERSION})")
        d["action_spec"] = ActionSpec.from_dict(d["action_spec"])
        d["action_meanings"] = tuple(d.get("action_meanings", ()))
        return DatasetMeta(**d)

    def differences(self, other: "DatasetMeta") -> list[str]:
        """Fields (other than frame_chunk) in which `other` differs: episodes of both cannot share a dataset."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if k != "frame_chunk" and mine[k] != theirs[k]]


@dataclass
class Episode:
    """One episode in memory; arrays aligned by frame (see the module docstring)."""

    frames: np.ndarray | None  # uint8 (T, H, W, 3); None when read without frames
    actions: RecordedActions
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    prompt_ids: np.ndarray
    prompts: tuple[str, ...]
    styles: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.rewards)

    def frame_prompts(self, start: int = 0, stop: int | None = None) -> list[str]:
        return [self.prompts[i] for i in self.prompt_ids[start:stop]]


@dataclass(frozen=True)
class EpisodeRecord:
    """An episode's entry in the index."""

    id: int
    shard: str  # path relative to the dataset directory
    length: int
    bytes: int
    sha256: str
    game: str
    prompts: tuple[str, ...]
    styles: tuple[str, ...]
    switch_frames: tuple[int, ...] = ()  # frames at which the prompt changes
    seed: int | None = None
    policy: str = ""
    total_reward: float = 0.0

    @property
    def prompt(self) -> str:
        return self.prompts[0]

    @property
    def style(self) -> str:
        return self.styles[0]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"], d["styles"], d["switch_frames"] = list(self.prompts), list(self.styles), list(self.switch_frames)
        return d

    @staticmethod
    def from_dict(d: Mapping) -> "EpisodeRecord":
        d = dict(d)
        for key in ("prompts", "styles", "switch_frames"):
            d[key] = tuple(d.get(key, ()))
        return EpisodeRecord(**d)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, and rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encode_episode(episode: Episode, frame_chunk: int) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    frames = np.ascontiguousarray(episode.frames, dtype=np.uint8)
    for c, start in enumerate(range(0, len(frames), frame_chunk)):
        arrays[f"frames_{c:05d}"] = frames[start : start + frame_chunk]
    if isinstance(episode.actions, Mapping):
        arrays.update({f"actions.{name}": np.asarray(a) for name, a in episode.actions.items()})
    else:
        arrays["actions"] = np.asarray(episode.actions)
    arrays["rewards"] = np.asarray(episode.rewards, dtype=np.float32)
    arrays["terminated"] = np.asarray(episode.terminated, dtype=bool)
    arrays["truncated"] = np.asarray(episode.truncated, dtype=bool)
    arrays["prompt_ids"] = np.asarray(episode.prompt_ids, dtype=np.int16)
    arrays["prompts"] = np.asarray(episode.prompts, dtype=str)
    arrays["styles"] = np.asarray(episode.styles, dtype=str)
    arrays["frame_chunk"] = np.asarray(frame_chunk, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _read_arrays(npz: np.lib.npyio.NpzFile, with_frames: bool) -> Episode:
    names = set(npz.files)
    if "actions" in names:
        actions: RecordedActions = npz["actions"]
    else:
        actions = {n.split(".", 1)[1]: npz[n] for n in sorted(names) if n.startswith("actions.")}
    frames = None
    if with_frames:
        chunks = sorted(n for n in names if n.startswith("frames_"))
        frames = np.concatenate([npz[n] for n in chunks]) if chunks else np.zeros((0, 0, 0, 3), np.uint8)
    return Episode(
        frames=frames,
        actions=actions,
        rewards=npz["rewards"],
        terminated=npz["terminated"],
        truncated=npz["truncated"],
        prompt_ids=npz["prompt_ids"].astype(np.int64),
        prompts=tuple(str(p) for p in npz["prompts"]),
        styles=tuple(str(s) for s in npz["styles"]),
    )


_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


# ----------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------


class EpisodeStore:
    """Reads and appends episodes of one dataset directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._verified: dict[tuple[str, int, float], bool] = {}

    # -- metadata and index ------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.root / META_FILE

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def meta(self) -> DatasetMeta:
        if not self.exists():
            raise FileNotFoundError(f"{self.root} is not a worldsdk dataset (no {META_FILE}); record one with `worldsdk record`")
        try:
            return DatasetMeta.from_dict(_read_json(self.meta_path, "the dataset description"))
        except (KeyError, TypeError) as err:
            raise DatasetError(f"{self.meta_path} is corrupt (missing or wrong field {err})") from err

    def records(self) -> list[EpisodeRecord]:
        """Every episode in the index, in id order, without checking the shards."""
        if not self.index_path.is_file():
            return []
        index = _read_json(self.index_path, "the episode index")
        try:
            return sorted((EpisodeRecord.from_dict(e) for e in index["episodes"]), key=lambda r: r.id)
        except (KeyError, TypeError, AttributeError) as err:
            raise DatasetError(f"{self.index_path} is corrupt (missing or wrong field {err})") from err

    def verified_records(self) -> list[EpisodeRecord]:
        """The episodes whose shard is present and matches the index; the others are logged by name and skipped."""
        return [r for r in self.records() if self.verify(r)]

    def verify(self, record: EpisodeRecord) -> bool:
        """True if the shard matches its size and sha256 in the index; else log a warning naming it."""
        path = self.root / record.shard
        try:
            stat = path.stat()
        except FileNotFoundError:
            log.warning("episode shard %s is missing; skipping episode %d", path, record.id)
            return False
        key = (record.shard, stat.st_size, stat.st_mtime)
        if key not in self._verified:
            ok = stat.st_size == record.bytes and sha256_bytes(path.read_bytes()) == record.sha256
            if not ok:
                problem = "truncated" if stat.st_size < record.bytes else "corrupt"
                log.warning(
                    "episode shard %s is %s (%d bytes, index expects %d and sha256 %s...); skipping episode %d",
                    path, problem, stat.st_size, record.bytes, record.sha256[:12], record.id,
                )
            self._verified[key] = ok
        return self._verified[key]

    # -- reading ---------------------------------------------------------------------------
    def read(self, record: EpisodeRecord, with_frames: bool = True) -> Episode:
        """The whole episode (or its annotations only); CorruptShardError names an unreadable shard."""
        path = self.root / record.shard
        try:
            with np.load(path, allow_pickle=False) as npz:
                episode = _read_arrays(npz, with_frames)
        except _READ_ERRORS as e:
            raise CorruptShardError(f"episode shard {path} cannot be read: {type(e).__name__}: {e}") from e
        if len(episode) != record.length:
            raise CorruptShardError(f"episode shard {path} has {len(episode)} frames, index says {record.length}")
        return episode

    def read_frame_chunks(self, record: EpisodeRecord, chunks: list[int]) -> dict[int, np.ndarray]:
        """Frame chunks by number (chunk c holds frames [c * frame_chunk, (c + 1) * frame_chunk))."""
        path = self.root / record.shard
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {c: npz[f"frames_{c:05d}"] for c in chunks}
        except _READ_ERRORS as e:
            raise CorruptShardError(f"episode shard {path} cannot be read: {type(e).__name__}: {e}") from e

    def __iter__(self) -> Iterator[Episode]:
        for record in self.verified_records():
            yield self.read(record)

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, meta: DatasetMeta):
        """Hold the dataset's write lock; create the dataset or check that `meta` matches it."""
        (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as lock:
            try:
                import fcntl

                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # no flock on this platform: one writer at a time is the user's job
                pass
            except BlockingIOError:
                raise RuntimeError(f"another process is recording into {self.root}; wait for it or choose another --out") from None
            if self.exists():
                existing = self.meta()
                diffs = existing.differences(meta)
                if diffs:
                    raise ValueError(f"cannot append to {self.root}: its episodes were recorded differently ({'; '.join(diffs)})")
            else:
                write_json_atomic(self.meta_path, meta.to_dict())
            self._clean_leftovers()
            yield self

    def _clean_leftovers(self) -> None:
        """Remove temporary files of interrupted writes; report complete shards the index never got."""
        shard_dir = self.root / SHARD_DIR
        for tmp in list(shard_dir.glob(".*.tmp-*")) + list(self.root.glob(".*.tmp-*")):
            log.info("removing %s, left over from an interrupted recording", tmp)
            tmp.unlink(missing_ok=True)
        indexed = {r.shard for r in self.records()}
        orphans = [p.name for p in sorted(shard_dir.glob("ep_*.npz")) if f"{SHARD_DIR}/{p.name}" not in indexed]
        if orphans:
            log.warning("shards not in the index (from an interrupted recording) are ignored: %s", ", ".join(orphans))

    def next_episode_id(self) -> int:
        """One past every id in the index or on disk, so an ignored shard is never overwritten."""
        ids = [r.id for r in self.records()]
        ids += [int(m.group(1)) for p in (self.root / SHARD_DIR).glob("ep_*.npz") if (m := _SHARD_NAME.match(p.name))]
        return max(ids, default=-1) + 1

    def append(
        self, episode: Episode, meta: DatasetMeta, *, seed: int | None = None, policy: str = "", game: str | None = None
    ) -> EpisodeRecord:
        """Write one episode (shard first, then the index). Call inside `writing(meta)`."""
        if episode.frames is None or episode.frames.shape[1:] != (meta.height, meta.width, 3):
            shape = None if episode.frames is None else episode.frames.shape
            raise ValueError(f"episode frames {shape} do not match the dataset's {meta.height}x{meta.width}x3")
        episode_id = self.next_episode_id()
        shard = f"{SHARD_DIR}/ep_{episode_id:06d}.npz"
        data = _encode_episode(episode, meta.frame_chunk)
        write_atomic(self.root / shard, data)
        changes = np.flatnonzero(np.diff(episode.prompt_ids)) + 1
        record = EpisodeRecord(
            id=episode_id,
            shard=shard,
            length=len(episode),
            bytes=len(data),
            sha256=sha256_bytes(data),
            game=game or meta.game,
            prompts=tuple(episode.prompts[i] for i in _ordered_ids(episode.prompt_ids)),
            styles=tuple(episode.styles[i] for i in _ordered_ids(episode.prompt_ids)),
            switch_frames=tuple(int(c) for c in changes),
            seed=seed,
            policy=policy,
            total_reward=float(np.sum(episode.rewards)),
        )
        records = self.records() + [record]
        write_json_atomic(
            self.index_path, {"format_version": FORMAT_VERSION, "episodes": [r.to_dict() for r in records]}
        )
        return record


def _ordered_ids(prompt_ids: np.ndarray) -> list[int]:
    """Prompt ids in order of first appearance."""
    _, first = np.unique(prompt_ids, return_index=True)
    return [int(prompt_ids[i]) for i in np.sort(first)]
