"""Evaluation metrics (closed forms) and a smoke run of `worldsdk eval` on recorded Pong."""

import json
import subprocess
import sys

import numpy as np
import pytest

from worldsdk import World
from worldsdk.evaluation import colour_histogram, commanded_direction, histogram_distance, motion, psnr, ssim


def test_psnr_and_ssim_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert psnr(a, a) == float("inf") and abs(ssim(a, a) - 1.0) < 1e-12
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert abs(psnr(a, b) - 10 * np.log10(255**2 / mse)) < 1e-9
    assert ssim(a, b) < 1.0 and ssim(a, 255 - a) < 0.0  # an inverted image is anti-correlated


def test_histogram_distance_and_motion():
    black, white = np.zeros((2, 4, 4, 3), np.uint8), np.full((2, 4, 4, 3), 255, np.uint8)
    assert histogram_distance(colour_histogram(black), colour_histogram(black)) == 0.0
    assert histogram_distance(colour_histogram(black), colour_histogram(white)) == 1.0
    assert motion(black) == 0.0 and motion(np.concatenate([black[:1], white[:1]])) == 255.0


def test_commanded_direction_per_game():
    assert commanded_direction("RIGHT", "pong") == -1 and commanded_direction("LEFTFIRE", "pong") == 1
    assert commanded_direction("RIGHT", "breakout") == 1 and commanded_direction("NOOP", "breakout") == 0


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    from worldsdk.data.recorder import record

    root = tmp_path_factory.mktemp("eval")
    record("ALE/Pong-v5", root / "pong", episodes=30, policy="scripted", size=(32, 32), max_steps=40, seed=0)
    world = World.from_preset("tiny")
    return root, world.save(root / "tiny.safetensors")


def test_eval_command_writes_json_markdown_and_plot(recorded):
    root, world = recorded
    out = root / "out"
    cmd = [sys.executable, "-m", "worldsdk.cli", "eval", "--world", str(world), "--data", str(root / "pong"),
           "--episodes", "2", "--starts", "1", "--horizon", "16", "--long-steps", "10", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "eval.json").read_text())
    assert set(results["fidelity"]) == {"1", "4", "16"} and results["replays"] == 2
    assert 0.0 <= results["action_following"]["real"] <= 1.0
    assert results["motion"]["real"] >= 0 and results["cost"]["model_calls_per_frame"] == 2.5
    assert (out / "eval.md").read_text().startswith("# Evaluation") and (out / "eval.png").stat().st_size > 0
