"""The autoencoder's ceiling on recordings it never saw, per style: every frame through encode/decode,
then the probe's object scores (ball within 4 px, false positives, paddle error) against the real frame.

    python benchmarks/autoencoder_ceiling.py --data data/pong-fresh \\
        --autoencoders runs/pong3/autoencoder/autoencoder.safetensors,runs/pong3/decoder/autoencoder.safetensors

No world can draw the ball more often than its autoencoder brings it back, so this bounds every
replay figure of the issue on worlds that play their game (its goal: ball within 4 px in 80% of frames).
Prints one markdown table (a row per autoencoder, a column per style and all frames) and writes it
with the JSON beside `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worldsdk.autoencoder import load_autoencoder  # noqa: E402
from worldsdk.data.store import EpisodeStore  # noqa: E402
from worldsdk.probe import object_scores  # noqa: E402


def recorded_frames(data: str) -> tuple[np.ndarray, list[str], str]:
    """Every frame of every episode (N, H, W, 3), each frame's style, and the game."""
    store = EpisodeStore(data)
    frames, styles = [], []
    for record in store.verified_records():
        episode = store.read(record)
        frames.append(episode.frames)
        styles += [episode.styles[i] for i in episode.prompt_ids]
    return np.concatenate(frames), styles, store.meta().game


@torch.no_grad()
def reconstruct(path: str, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    autoencoder = load_autoencoder(path)
    out = [autoencoder.decode(autoencoder.encode(torch.from_numpy(frames[i : i + batch]))).numpy()
           for i in range(0, len(frames), batch)]
    return np.concatenate(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="recordings the autoencoders never saw")
    parser.add_argument("--autoencoders", required=True, help="comma-separated autoencoder files")
    parser.add_argument("--out", default="runs/autoencoder_ceiling.md")
    args = parser.parse_args()
    frames, styles, game = recorded_frames(args.data)
    names = sorted(set(styles))
    results = {}
    for path in args.autoencoders.split(","):
        recon = reconstruct(path, frames)
        style_array = np.asarray(styles)
        row = {"all": object_scores(frames, recon, styles, game)}
        for style in names:
            idx = np.flatnonzero(style_array == style)
            row[style] = object_scores(frames[idx], recon[idx], [style] * len(idx), game)
        results[path] = row
    head = ["autoencoder", "all frames"] + names
    lines = ["ball within 4 px of the real one (frames with a ball) / paddle error px:", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path, row in results.items():
        cells = [f"{row[k]['ball_recall']:.0%} / {row[k]['paddle_error_px']:.2f}" for k in ["all"] + names]
        lines.append("| " + " | ".join([f"`{path}`"] + cells) + " |")
    table = "\n".join(lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    out.with_suffix(".json").write_text(json.dumps({"data": args.data, "frames": len(frames), "results": results}, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
