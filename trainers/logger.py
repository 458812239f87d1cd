"""Metrics to TensorBoard and to a JSONL file (one JSON object per line), on rank 0 only; the
samples a stage writes (images, clips) to TensorBoard's Images tab too.

On resume, records written after the checkpoint being resumed from are dropped from the JSONL file
and purged from TensorBoard, so both read as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping


class RunLogger:
    """`log(step, scalars)` -> `<run_dir>/metrics.jsonl` and TensorBoard events in `<run_dir>/tb`."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate_after(resume_step or 0)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step or None)

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if record.get("step", 0) <= step and record.get("event") != "end":
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, scalars: Mapping[str, float], **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **fields, **{k: _finite(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)

    def log_samples(self, step: int, folder: Path) -> int:
        """Every .png (an image) and .gif / .mp4 (an animated clip) under `folder` to TensorBoard, tagged
        `samples/<name>`; returns how many were logged. Stages keep writing plain files; this reads them."""
        if self._writer is None or not Path(folder).is_dir():
            return 0
        import imageio.v3 as iio

        count = 0
        for path in sorted(Path(folder).rglob("*")):
            tag = f"samples/{path.relative_to(folder).with_suffix('').as_posix()}"
            if path.suffix == ".png":
                self._writer.add_image(tag, _rgb(iio.imread(path)), step, dataformats="HWC")
            elif path.suffix in (".gif", ".mp4"):
                self._writer.file_writer.add_summary(_gif_summary(tag, _rgb(iio.imread(path, index=None))), step)
            else:
                continue
            count += 1
        return count

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _finite(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else str(value)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of a run's metrics.jsonl (for tests and notebooks)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rgb(frames) -> "np.ndarray":
    import numpy as np

    frames = np.asarray(frames)
    return frames[..., :3] if frames.shape[-1] == 4 else frames


def _gif_summary(tag: str, frames, fps: float = 15.0):
    """A TensorBoard image summary holding an animated GIF (what `add_video` writes, without moviepy)."""
    import imageio.v3 as iio
    from tensorboard.compat.proto.summary_pb2 import Summary

    data = iio.imwrite("<bytes>", frames, extension=".gif", duration=1000.0 / fps, loop=0)
    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
    return Summary(value=[Summary.Value(tag=tag, image=image)])
