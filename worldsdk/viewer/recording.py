"""Recordings: the frames as mp4 and, beside them, the events as JSON so the episode replays exactly.

The JSON holds how to open the world again (`source`), its spec, and the episode's events in order:
    {"type": "reset", "prompt": str, "seed": int, "frames_sha256": str}
    {"type": "prompt", "text": str}                       # applies from the next step on
    {"type": "step", "action": <JSON action>, "frames_sha256": str}
A recording always starts at a reset, even when recording was switched on mid-episode (the video then
starts later, at `video_start`), because the world's state depends on the whole episode. Replaying
sends the same calls with the same seeds and compares each chunk's digest with the stored one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsdk.spec import ActionSpec, WorldSpec

log = logging.getLogger(__name__)

FORMAT = "worldsdk.recording"
FORMAT_VERSION = 1


def frames_digest(frames: np.ndarray) -> str:
    """sha256 of a chunk of frames, shape included."""
    frames = np.ascontiguousarray(frames)
    h = hashlib.sha256(f"{frames.dtype}{frames.shape}".encode())
    h.update(frames.tobytes())
    return h.hexdigest()


def action_to_json(action) -> Any:
    """An action (int, array, dict of those) -> plain JSON values."""
    if isinstance(action, dict):
        return {k: action_to_json(v) for k, v in action.items()}
    if isinstance(action, np.ndarray):
        return action.tolist()
    if isinstance(action, np.generic):
        return action.item()
    return action


def action_from_json(spec: ActionSpec, value) -> Any:
    """JSON values -> an action of `spec` with the dtypes the space uses."""
    if spec.kind == "discrete":
        return int(value)
    if spec.kind == "multi_binary":
        return np.asarray(value, dtype=np.int8)
    if spec.kind == "box":
        return np.asarray(value, dtype=np.float32)
    return {name: action_from_json(sub, value[name]) for name, sub in spec.spaces}


@dataclass
class Recording:
    """One recorded run: how to reopen its world, the world's spec, and its events from a reset on."""

    source: dict
    spec: WorldSpec
    events: list[dict] = field(default_factory=list)
    video: str | None = None  # mp4 file name, beside the JSON
    video_start: int = 0  # index of the event whose chunk's first frame starts the video

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "source": self.source, "spec": self.spec.to_dict(),
            "video": self.video, "video_start": self.video_start, "events": self.events,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @staticmethod
    def load(path: str | Path) -> "Recording":
        path = Path(path)
        d = json.loads(path.read_text())
        if d.get("format") != FORMAT:
            raise ValueError(f"{path} is not a worldsdk recording (format {d.get('format')!r}, expected {FORMAT!r})")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{path} is recording format {d['format_version']}; this worldsdk reads up to {FORMAT_VERSION}")
        events = d["events"]
        if not events or events[0].get("type") != "reset":
            raise ValueError(f"{path}: a recording must start with a reset event")
        return Recording(d["source"], WorldSpec.from_dict(d["spec"]), events, d.get("video"), int(d.get("video_start", 0)))


class VideoWriter:
    """Frames scaled up by an integer factor (nearest neighbour) into an mp4 at the world's fps."""

    def __init__(self, path: Path, fps: float, scale: int):
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401  (imageio's mp4 backend)
        except ImportError as exc:
            raise RuntimeError("mp4 recording needs imageio-ffmpeg: pip install imageio-ffmpeg") from exc
        self.scale = scale
        self.path = path
        self._writer = imageio.get_writer(
            path, fps=fps, codec="libx264", quality=9, ffmpeg_log_level="error", output_params=["-threads", "1"],
        )
        self.frames = 0

    def add(self, frame: np.ndarray) -> None:
        if self.scale > 1:
            frame = frame.repeat(self.scale, axis=0).repeat(self.scale, axis=1)
        self._writer.append_data(frame)
        self.frames += 1

    def close(self) -> None:
        self._writer.close()


class Recorder:
    """A recording in progress: the JSON events (shared with the game's episode log) and the mp4 of shown frames."""

    def __init__(self, directory: str | Path, source: dict, spec: WorldSpec, episode: list[dict], scale: int = 1):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stem = _free_stem(directory, f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.json_path = directory / f"{stem}.json"
        self.recording = Recording(dict(source), spec, list(episode))
        try:
            self.video: VideoWriter | None = VideoWriter(directory / f"{stem}.mp4", spec.fps, scale)
            self.recording.video = self.video.path.name
        except RuntimeError as exc:
            log.warning("%s; recording the events only", exc)
            self.video = None

    def add_event(self, event: dict) -> None:
        self.recording.events.append(event)

    def add_frame(self, frame: np.ndarray, event: dict) -> None:
        """A frame the player was shown; `event` is the reset or step that produced it."""
        if self.video is None:
            return
        if self.video.frames == 0:
            self.recording.video_start = next(i for i, e in enumerate(self.recording.events) if e is event)
        self.video.add(frame)

    def close(self) -> Path:
        if self.video is not None:
            self.video.close()
        path = self.recording.save(self.json_path)
        log.info("recorded %d events to %s%s", len(self.recording.events), path,
                 f" and {self.video.frames} frames to {self.video.path}" if self.video else "")
        return path


def _free_stem(directory: Path, stem: str) -> str:
    candidate, n = stem, 1
    while (directory / f"{candidate}.json").exists() or (directory / f"{candidate}.mp4").exists():
        candidate, n = f"{stem}-{n}", n + 1
    return candidate
