"""Ctrl-C during training saves a checkpoint and stops cleanly; a truncated newest checkpoint falls
back to the previous valid one; the command-line errors of worldsdk-train are one line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import torch

from tests.test_trainer_loop import ToyConfig, ToyStage
from trainers.loop import LoopConfig, list_checkpoints, train
from trainers.stage import ModelChoice
from worldsdk.train_checkpoint import load_train_state


def make(ctx):
    return ToyStage(ToyConfig(), ModelChoice(), ctx)


def loop(**kw):
    return LoopConfig(**{"max_steps": 12, "batch_size": 8, "device": "cpu", "log_every": 1, "checkpoint_every": 4,
                         "progress": False, "tensorboard": False, **kw})


def test_ctrl_c_saves_a_checkpoint_and_resumes_on_the_same_trajectory(tmp_path, caplog):
    def press_ctrl_c_at_step_6(step, scalars):
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    with caplog.at_level(logging.WARNING):
        stopped = train(make, loop(), tmp_path / "run", on_step=press_ctrl_c_at_step_6)
    assert stopped.interrupted and not stopped.finished and stopped.step == 7
    assert stopped.checkpoint.name == "step_00000007.safetensors" and stopped.checkpoint.is_file()
    assert "resume with the same command" in caplog.text
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    resumed = train(make, loop(), tmp_path / "run")
    straight = train(make, loop(), tmp_path / "straight")
    assert resumed.finished and not resumed.interrupted
    a, b = load_train_state(resumed.checkpoint), load_train_state(straight.checkpoint)
    for name in a.modules["generator"]:
        assert torch.equal(a.modules["generator"][name], b.modules["generator"][name])


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    run_dir = tmp_path / "run"
    train(make, loop(max_steps=8, keep_checkpoints=2), run_dir)
    (older, _), (newest_step, newest) = list_checkpoints(run_dir)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    with caplog.at_level(logging.WARNING):
        result = train(make, loop(max_steps=10, keep_checkpoints=2), run_dir)
    assert f"step_{older:08d}" in caplog.text and "unreadable" in caplog.text and result.finished
    assert result.step == 10


def test_every_checkpoint_unreadable_is_an_error_naming_the_folder(tmp_path):
    import pytest

    from worldsdk.checkpoint import CheckpointError

    run_dir = tmp_path / "run"
    train(make, loop(max_steps=4, keep_checkpoints=1), run_dir)
    (_, only), = list_checkpoints(run_dir)
    only.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no readable checkpoint in .*checkpoints"):
        train(make, loop(max_steps=6), run_dir)


def _train_cli(*overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "trainers.app", *overrides], capture_output=True, text=True, timeout=120, env=env)


def test_a_wrong_hydra_key_is_one_line(tmp_path):
    out = _train_cli("stage=autoencoder", "model=tiny", "data=x", "loop.no_such_key=1", f"run_dir={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == ["worldsdk-train: error: Could not override 'loop.no_such_key'. "
                                               "To append to your config use +loop.no_such_key=1 (Key 'no_such_key' is not in struct)"]
    out = _train_cli("stage=autoencoder", "model=tiny", "data=x", "+stage.no_such_key=1", f"run_dir={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "unknown key(s) ['no_such_key'] in `stage`" in out.stderr
    out = _train_cli("stage=autoencoder", "model=tiny", "data=x", "+stage.no_such_key=1", f"run_dir={tmp_path}", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_samples_reach_tensorboard_as_images_and_clips(tmp_path):
    """A stage's sample files (png, gif) show in TensorBoard's Images tab, not only its scalars."""
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainers.media import save_image, save_video

    class SamplingStage(ToyStage):
        def sample(self, step, weights, out_dir):
            frames = np.random.default_rng(step).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
            save_image(out_dir / "grid.png", frames[0])
            save_video(out_dir / "rollout.gif", frames)

    train(lambda ctx: SamplingStage(ToyConfig(), ModelChoice(), ctx), loop(max_steps=4, sample_every=2, tensorboard=True),
          tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0}).Reload()
    assert set(events.Tags()["images"]) == {"samples/grid", "samples/rollout"}
    clips = events.Images("samples/rollout")
    assert [c.step for c in clips] == [2, 4] and clips[0].encoded_image_string[:6] == b"GIF89a"
    assert (clips[0].width, clips[0].height) == (16, 16)
