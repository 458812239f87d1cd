"""`worldsdk demo`: play the default world headless under a simple policy and save a video.

The default world is `worldsdk.world.default_world()`: the shipped `pong` world when present; without
a shipped world, the `small` preset with random weights (and the demo says so).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", default=None, help="shipped world name, path, or preset (default: the default world)")
    parser.add_argument("--steps", type=int, default=60, help="chunks to generate")
    parser.add_argument("--prompt", default=None, help="prompt (default: the world's default prompt)")
    parser.add_argument("--switch-prompt", default=None, help="switch to this prompt halfway through")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="demo.mp4", help="video file to write (.mp4 or .gif)")
    parser.add_argument("--scale", type=int, default=4, help="integer upscaling of the saved video")
    parser.add_argument("--device", default="cpu")


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (N, H, W, 3) frames: crisp pixels."""
    return frames.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else frames


def save_video(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """Write uint8 frames (N, H, W, 3) to an mp4 or gif."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        iio.imwrite(path, frames, duration=1000.0 / fps, loop=0)
    else:
        iio.imwrite(path, frames, fps=fps, codec="libx264", macro_block_size=1)
    return path


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worldsdk.world import World, default_world

    name = args.world or default_world()
    world = World.load(name, device=args.device)
    if not world.info.get("trained", True):
        log.warning("no trained world is installed: %r has random weights, expect noise", name)
    rng = np.random.default_rng(args.seed)
    space = world.spec.action.to_space()
    space.seed(args.seed)
    frames = [world.reset(prompt=args.prompt, seed=args.seed)]
    action = space.sample()
    start = time.perf_counter()
    for step in tqdm(range(args.steps), desc=f"demo {world.spec.name}", unit="chunk"):
        if rng.random() < 0.3:  # sticky random actions: a player holds keys for a while
            action = space.sample()
        if args.switch_prompt and step == args.steps // 2:
            world.set_prompt(args.switch_prompt)
        frames.append(world.step(action))
    elapsed = time.perf_counter() - start
    video = np.concatenate(frames)
    generated = args.steps * world.chunk_frames
    out = save_video(upscale(video, args.scale), args.out, world.spec.fps)
    print(f"world {world.spec.name} ({world.info.get('source')}): {generated} frames in {elapsed:.2f} s = "
          f"{generated / elapsed:.1f} frames/s (world fps {world.spec.fps:g}); video: {out}")
    return 0
