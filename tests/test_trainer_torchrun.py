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


def test_ranks_read_disjoint_shards_whose_union_is_the_one_process_batch():
    from trainers.batches import BatchStream

    data = list(range(40))
    one = BatchStream(data, batch_size=4, seed=3)
    ranks = [BatchStream(data, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(12):  # two epochs and a half
        whole = next(one).tolist()
        shards = [next(stream).tolist() for stream in ranks]
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == sorted(whole)


def test_two_processes_equal_one_process_on_the_union_batch(tmp_path):
    # DDP averages the ranks' gradients: 2 ranks of batch 2 must train as 1 process of batch 4 (the union
    # of their shards), up to the rounding of the gradient all-reduce.
    from worldsdk.autoencoder import load_autoencoder

    data = write_synthetic_recording(tmp_path / "pong")
    runs = {}
    for ranks, batch in ((1, 4), (2, 2)):
        run_dir = tmp_path / f"ranks{ranks}"
        train = train_command(data, run_dir, "loop.max_steps=3", "loop.checkpoint_every=100", f"loop.batch_size={batch}")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *train[1:]]
        out = subprocess.run(command, capture_output=True, text=True, timeout=180, env=_env())
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        losses = [r["reconstruction/loss"] for r in read_metrics(run_dir) if "reconstruction/loss" in r]
        runs[ranks] = load_autoencoder(run_dir / "autoencoder.safetensors").state_dict(), losses
    (one, one_losses), (two, two_losses) = runs[1], runs[2]
    assert len(set(one_losses)) == 3  # it trained
    assert all(abs(a - b) <= 1e-5 * abs(a) for a, b in zip(one_losses, two_losses)), (one_losses, two_losses)
    worst = max(float((one[k].double() - two[k].double()).abs().max()) for k in one if one[k].is_floating_point())
    assert worst < 1e-5, worst
