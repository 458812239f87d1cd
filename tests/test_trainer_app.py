"""Smoke runs of `worldsdk-train` from the command line: stage=autoencoder on a synthetic recording,
and runs killed with SIGKILL between checkpoints that resume onto the uninterrupted trajectory: the
autoencoder stage, and the teacher stage, which draws noise and timesteps every step (so a resume that
did not restore the random number generators would leave its trajectory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainers.logger import read_metrics

PONG_BACKGROUND, PONG_WHITE, PONG_GREEN, PONG_ORANGE = (144, 72, 17), (236, 236, 236), (92, 186, 92), (213, 130, 74)


def synthetic_pong_frames(steps: int, size: int, seed: int) -> np.ndarray:
    """Pong-like raw 210x160 frames (walls, two paddles, a 4x2 ball bouncing), area-resized to size x size."""
    from worldsdk.data.resize import resize_frame

    rng = np.random.default_rng(seed)
    y, x = rng.uniform(60, 170), rng.uniform(30, 130)
    vy, vx = rng.choice([-3.0, 3.0]), rng.choice([-2.0, 2.0])
    frames = []
    for t in range(steps):
        raw = np.empty((210, 160, 3), dtype=np.uint8)
        raw[:] = PONG_BACKGROUND
        raw[24:34], raw[194:210] = PONG_WHITE, PONG_WHITE
        mine, theirs = int(34 + (t * 5 + 40) % 140), int(34 + (t * 3) % 140)
        raw[mine : mine + 16, 140:144] = PONG_GREEN
        raw[theirs : theirs + 16, 16:20] = PONG_ORANGE
        y, x = y + vy, x + vx
        if not 36 < y < 188:
            vy = -vy
        if not 22 < x < 136:
            vx = -vx
        raw[int(y) : int(y) + 4, int(x) : int(x) + 2] = PONG_WHITE
        frames.append(resize_frame(raw, (size, size)))
    return np.stack(frames)


def write_synthetic_recording(root: Path, episodes: int = 4, steps: int = 40, size: int = 32) -> Path:
    """A `worldsdk.data` recording of synthetic Pong episodes (ids 0..episodes-1; id 1 lands in val)."""
    from worldsdk.config import ActionSpec
    from worldsdk.data.store import DatasetMeta, Episode, EpisodeStore

    meta = DatasetMeta(env_id="Synthetic/Pong", game="pong", height=size, width=size, fps=15.0, action_spec=ActionSpec.discrete(6), frame_chunk=16)
    store = EpisodeStore(root)
    with store.writing(meta):
        for e in range(episodes):
            frames = synthetic_pong_frames(steps, size, seed=e)
            store.append(
                Episode(
                    frames=frames, actions=np.zeros(steps, dtype=np.int64), rewards=np.zeros(steps, dtype=np.float32),
                    terminated=np.zeros(steps, dtype=bool), truncated=np.zeros(steps, dtype=bool),
                    prompt_ids=np.zeros(steps, dtype=np.int16), prompts=("pong, classic colours",), styles=("classic",),
                ),
                meta,
            )
    return root


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    return write_synthetic_recording(tmp_path_factory.mktemp("data") / "pong")


def train_command(data: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "trainers.app", "stage=autoencoder", "model=tiny", f"data={data}", f"run_dir={run_dir}",
        "loop.device=cpu", "loop.threads=1", "loop.batch_size=4", "loop.log_every=1", "loop.progress=false",
        "loop.tensorboard=false", "stage.eval_frames=16", "stage.stats_frames=32", "stage.sample_frames=4", *overrides,
    ]


def _env() -> dict:
    """The training subprocesses' environment: this checkout first on the path, the caller's path after it
    (benchmarks/mutations.py plants its bugs through it)."""
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


COMMON = ("loop.max_steps=10", "loop.checkpoint_every=4", "stage.optimizer.warmup_steps=2")


@pytest.fixture(scope="module")
def straight_run(recording, tmp_path_factory) -> Path:
    """A run of 10 steps that nothing interrupts (checkpoints at 4, 8 and the end)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    out = subprocess.run(train_command(recording, run_dir, *COMMON), capture_output=True, text=True, timeout=180, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def _losses(run_dir: Path, key: str = "reconstruction/loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(run_dir) if key in r]


def kill_between_checkpoints(command: list[str], run_dir: Path, key: str = "reconstruction/loss") -> None:
    """Start a run and SIGKILL it once it is past its first checkpoint (every 4 steps), between two."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            steps = [step for step, _ in _losses(run_dir, key)] if (run_dir / "metrics.jsonl").exists() else []
            if steps and steps[-1] >= 5 and steps[-1] % 4:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def test_app_trains_the_autoencoder_and_writes_a_checkpoint(straight_run):
    from worldsdk.autoencoder import load_autoencoder

    run_dir = straight_run
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000008.safetensors", "step_00000010.safetensors"]
    autoencoder = load_autoencoder(run_dir / "autoencoder.safetensors")
    assert autoencoder.config.stride == 4 and not torch.allclose(autoencoder.latent_std, torch.ones_like(autoencoder.latent_std))
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["step"] == 10 and final["psnr"] > 0 and "psnr/pong" in final
    assert (run_dir / "samples" / "step_00000010" / "reconstruction_pong.png").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert [step for step, _ in _losses(run_dir)] == list(range(1, 11))


def test_sigkilled_run_resumes_onto_the_same_trajectory(recording, straight_run, tmp_path):
    from worldsdk.autoencoder import load_autoencoder

    killed_dir = tmp_path / "killed"
    kill_between_checkpoints(train_command(recording, killed_dir, *COMMON), killed_dir)
    assert not (killed_dir / "autoencoder.safetensors").exists()

    resumed = subprocess.run(train_command(recording, killed_dir, *COMMON), capture_output=True, text=True, timeout=180, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    assert _losses(killed_dir) == _losses(straight_run)
    a = load_autoencoder(straight_run / "autoencoder.safetensors").state_dict()
    b = load_autoencoder(killed_dir / "autoencoder.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_sigkilled_teacher_run_resumes_onto_the_same_trajectory(recording, straight_run, tmp_path):
    # The teacher draws timesteps, noise and condition dropout every step from the global generators:
    # only a resume that restores them (with the weights, optimiser and data order) lands on the same losses.
    from worldsdk.autoencoder import load_autoencoder
    from worldsdk.data.latents import build_latent_cache
    from worldsdk.world import World

    ae = straight_run / "autoencoder.safetensors"
    latents = build_latent_cache(recording, load_autoencoder(ae), tmp_path / "latents", progress=False)

    def command(run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "trainers.app", "stage=teacher", "model=tiny", f"stage.latents={latents}",
                f"stage.autoencoder={ae}", f"run_dir={run_dir}", "loop.device=cpu", "loop.threads=1", "loop.batch_size=2",
                "loop.log_every=1", "loop.progress=false", "loop.tensorboard=false", "loop.max_steps=12",
                "loop.checkpoint_every=4", "stage.optimizer.warmup_steps=2"]  # long enough to be killed mid-run

    straight = subprocess.run(command(tmp_path / "straight"), capture_output=True, text=True, timeout=180, env=_env())
    assert straight.returncode == 0, straight.stderr[-3000:]
    kill_between_checkpoints(command(tmp_path / "killed"), tmp_path / "killed", key="teacher/loss")
    resumed = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True, timeout=180, env=_env())
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr, resumed.stderr[-3000:]
    want = _losses(tmp_path / "straight", "teacher/loss")
    assert [step for step, _ in want] == list(range(1, 13)) and len({loss for _, loss in want}) == 12
    assert _losses(tmp_path / "killed", "teacher/loss") == want
    a = World.load(tmp_path / "straight" / "world.safetensors").model.state_dict()
    b = World.load(tmp_path / "killed" / "world.safetensors").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
