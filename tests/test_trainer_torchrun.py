"""`torchrun --nproc_per_node=2` runs stage=autoencoder on CPU (gloo) and both ranks end with the same weights."""

from __future__ import annotations

import subprocess
import sys

from tests.test_trainer_app import _env, train_command, write_synthetic_recording
from trainers.logger import read_metrics


def test_two_cpu_processes_train_in_step(tmp_path):
    data = write_synthetic_recording(tmp_path / "pong")
    run_dir = tmp_path / "run"
    train = train_command(data, run_dir, "loop.max_steps=4", "loop.checkpoint_every=2")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *train[1:]]
    out = subprocess.run(command, capture_output=True, text=True, timeout=180, env=_env())
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]

    records = read_metrics(run_dir)
    end = [r for r in records if r.get("event") == "end"][-1]
    assert end["world_size"] == 2 and end["finished"]
    first, second = end["replica_fingerprints"]
    assert first == second, "ranks disagree on the weights"
    assert [r["step"] for r in records if "reconstruction/loss" in r] == [1, 2, 3, 4]
    assert (run_dir / "autoencoder.safetensors").is_file()
    assert not (run_dir.parent / "outputs").exists() and not list(tmp_path.glob("**/rank*"))
