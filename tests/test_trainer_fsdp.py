"""FSDP2 in the shared loop (`loop.strategy=fsdp`) on CPU with gloo, tiny preset.

One `torchrun --nproc_per_node=2` launch runs every two-rank training of this file in the same two
processes (a process group made once; each `train` call leaves it to its maker), which keeps the
file fast on a shared 2-core machine:

- teacher and DMD with FSDP end with the weights, EMA and optimiser moments that the replicated
  (ddp) path computes on the same batches and noise, within fp32 tolerance;
- teacher with FSDP and activation checkpointing ends with the same weights;
- a teacher run resumed from its sharded step-2 checkpoint ends bit-identical to the straight run.

The reference is the ddp path on the same two ranks, not a one-process run: each rank draws its noise
from its own rank-seeded RNG, so one process with the global batch would draw different noise.
In this process: resuming on one rank from the two-rank checkpoint, and the checkpoint folder's
layout and error messages.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from tests.test_trainer_app import _env, write_synthetic_recording
from trainers.app import build_dataclass
from trainers.logger import read_metrics
from trainers.loop import LoopConfig, list_checkpoints, train
from trainers.stage import ModelChoice, OptimizerConfig, RunContext
from trainers.stages import worlds
from trainers.stages.dmd import DmdStage, DmdStageConfig
from trainers.stages.teacher import TeacherStage, TeacherStageConfig
from worldsdk.autoencoder import AUTOENCODER_PRESETS, FrameAutoencoder, save_autoencoder
from worldsdk.checkpoint import read, split_prefix
from worldsdk.data.latents import build_latent_cache
from worldsdk.train_checkpoint import CheckpointError, load_sharded_train_state, load_train_state, read_sharded_tensors

TINY = ModelChoice(name="tiny", preset="tiny", autoencoder="tiny")
# fp32 sums over ranks and shards are added in another order. AdamW divides each gradient by its own
# RMS, so for a gradient near zero that rounding can move a weight by a small fraction of lr (1e-3):
# one weight in 437k, by 7.5e-6, in the DMD run; the mean difference is 1e-10 against a mean change of 1e-3.
TOLERANCE = dict(rtol=1e-4, atol=1e-5)
STEP2, STEP4 = "step_00000002", "step_00000004"


def loop_config(strategy: str = "fsdp", steps: int = 4, **kw) -> LoopConfig:
    return LoopConfig(**{"max_steps": steps, "batch_size": 2, "seed": 0, "device": "cpu", "precision": "fp32", "log_every": 1,
                         "checkpoint_every": 2, "keep_checkpoints": 3, "progress": False, "tensorboard": False,
                         "threads": 1, "strategy": strategy, **kw})


def make_inputs(root: Path) -> dict:
    """Synthetic Pong latents, and two random tiny worlds for DMD (a generator and a real score)."""
    data = write_synthetic_recording(root / "pong", episodes=4, steps=24)
    torch.manual_seed(0)
    autoencoder = FrameAutoencoder(AUTOENCODER_PRESETS["tiny"])
    ae = save_autoencoder(root / "autoencoder.safetensors", autoencoder)
    latents = build_latent_cache(data, autoencoder, root / "latents", progress=False)
    spec = worlds.spec_for_dataset(worlds.open_latent_clips(str(latents), 4), "tiny")
    out = {"latents": str(latents), "autoencoder": str(ae)}
    for name, seed in (("generator", 1), ("real", 2)):
        torch.manual_seed(seed)
        model, text, ae_module = worlds.fresh_parts("tiny", spec, str(ae))
        with torch.no_grad():  # the zero-initialised head would give DMD's first steps no gradient
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        ctx = RunContext(run_dir=root / name, device=torch.device("cpu"))
        ctx.run_dir.mkdir()
        out[name] = str(worlds.save_world(ctx, model, text, ae_module, spec, {"stage": "test"}))
    return out


class ShardedRealDmd(DmdStage):
    """DMD whose frozen real score is sharded too (the loop shards what `frozen_modules` names)."""

    def frozen_modules(self):
        return {"real": self.real}


def teacher_stage(inputs: dict):
    config = TeacherStageConfig(latents=inputs["latents"], autoencoder=inputs["autoencoder"], clip_frames=4,
                                optimizer=OptimizerConfig(lr=1e-3, betas=(0.9, 0.99), grad_clip=1.0))
    return lambda ctx: TeacherStage(config, TINY, ctx)


def dmd_stage(inputs: dict):
    # Learning rates far above the paper's 2e-6, so that three steps move the weights well past the tolerance.
    optimizer = OptimizerConfig(lr=1e-3, betas=(0.0, 0.999), grad_clip=10.0)
    config = DmdStageConfig(generator=inputs["generator"], real=inputs["real"], latents=inputs["latents"], critic_updates=2,
                            ema_start_step=0, generator_optimizer=optimizer, critic_optimizer=optimizer)
    return lambda ctx: ShardedRealDmd(config, TINY, ctx)


def worker(root: Path) -> None:
    """The two-rank trainings (run under torchrun by the `runs` fixture)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")  # made here, once: each `train` below uses it and leaves it up
    inputs = json.loads((root / "inputs.json").read_text())
    teacher, dmd = teacher_stage(inputs), dmd_stage(inputs)
    train(teacher, loop_config("fsdp"), root / "teacher-fsdp")
    train(teacher, loop_config("ddp"), root / "teacher-ddp")
    train(teacher, loop_config("fsdp", activation_checkpointing=True), root / "teacher-fsdp-ac")
    # A run killed after its step-2 checkpoint, while writing step 4: the step-2 folder and a partial step-4 one.
    killed = root / "teacher-fsdp-resumed" / "checkpoints"
    if dist.get_rank() == 0:
        shutil.copytree(root / "teacher-fsdp" / "checkpoints" / STEP2, killed / STEP2)
        (killed / f"{STEP4}.tmp" / "shards").mkdir(parents=True)
        (killed / f"{STEP4}.tmp" / "shards" / "shard-00001-model-00001-of-00001.safetensors").write_bytes(b"partial")
    dist.barrier()
    train(teacher, loop_config("fsdp"), killed.parent)
    train(dmd, loop_config("fsdp", steps=3), root / "dmd-fsdp")
    train(dmd, loop_config("ddp", steps=3), root / "dmd-ddp")
    train(teacher, loop_config("fsdp", steps=2, precision="bf16"), root / "teacher-fsdp-bf16")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    (root / "inputs.json").write_text(json.dumps(make_inputs(root)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "tests.test_trainer_fsdp", str(root)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    return root


# ------------------------------------------------------------------------------------------------
# Reading what runs wrote
# ------------------------------------------------------------------------------------------------


def checkpoint_tensors(path: Path, kinds: tuple[str, ...] = ("module", "ema", "optim")) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors named `<kind>.<module>.<parameter>[.<moment>]`: weights, EMA and, from a
    sharded folder, AdamW moments (a ddp file keys them by position, so they are left out there)."""
    if path.is_dir():
        tensors = read_sharded_tensors(path)
    else:
        state = load_train_state(path)
        tensors = {f"module.{m}.{k}": t for m, sd in state.modules.items() for k, t in sd.items()}
        tensors.update({f"ema.{m}.{k}": t for m, sd in state.ema.items() for k, t in sd.items()})
    return {k: t for k, t in tensors.items() if k.split(".")[0] in kinds}


def final_tensors(run_dir: Path, kinds: tuple[str, ...] = ("module", "ema", "optim")) -> dict[str, torch.Tensor]:
    return checkpoint_tensors(list_checkpoints(run_dir)[-1][1], kinds)


def losses(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir) if key in r}


def assert_close_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOLERANCE, msg=lambda m: f"{name}: {m}")
    mean_difference = torch.cat([(a[k] - b[k]).abs().flatten().double() for k in a]).mean().item()
    assert mean_difference < 1e-8


def assert_equal_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and a
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def largest_change(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a if k.startswith("module."))


# ------------------------------------------------------------------------------------------------
# Two ranks: FSDP against the replicated path
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage, loss_key", [("teacher", "teacher/loss"), ("dmd", "critic/loss")])
def test_two_ranks_with_fsdp_end_with_the_weights_of_the_replicated_path(runs, stage, loss_key):
    fsdp, ddp = runs / f"{stage}-fsdp", runs / f"{stage}-ddp"
    assert_close_tensors(final_tensors(fsdp, ("module", "ema")), final_tensors(ddp, ("module", "ema")))
    # ... which is not vacuous: the weights moved far more than the tolerance
    first, last = list_checkpoints(fsdp)[0][1], list_checkpoints(fsdp)[-1][1]
    assert largest_change(checkpoint_tensors(first, ("module",)), checkpoint_tensors(last, ("module",))) > 1e-3
    a, b = losses(fsdp, loss_key), losses(ddp, loss_key)
    assert sorted(a) == sorted(b) and all(math.isclose(a[s], b[s], rel_tol=1e-4) for s in a)
    end = [r for r in read_metrics(fsdp) if r.get("event") == "end"][-1]
    assert end["world_size"] == 2 and end["finished"]
    first_rank, second_rank = end["replica_fingerprints"]  # gathered from the shards on each rank
    assert first_rank == second_rank


def test_dmd_generator_update_runs_with_fsdp(runs):
    """Generator updates at steps 0 and 2 (critic_updates=2), through the sharded real score and critic."""
    a, b = losses(runs / "dmd-fsdp", "generator/loss"), losses(runs / "dmd-ddp", "generator/loss")
    assert sorted(a) == [1, 3] and all(math.isclose(a[s], b[s], rel_tol=1e-4) for s in a)


def test_bf16_mixed_precision_keeps_fp32_master_weights_and_tracks_fp32(runs):
    """bf16 gathers and compute with fp32 reduction: the sharded weights, EMA and moments stay fp32,
    and two steps land next to the fp32 run's.

    Adam's first steps move each weight by about +-lr = 1e-3 whatever its gradient's size, and behind the
    zero-initialised output head many gradients are near zero at step 2, so bf16 rounding flips their
    sign: those weights land ~1e-3 away (3.5% of them here; the mean difference, 2.3e-5 on this CPU, is
    set by how many flip). Every other weight must land on the fp32 run's up to fp32 rounding. Weights
    kept in bf16 would sit up to 2e-4 away from fp32 ones (44% of them beyond 1e-4), and a broken
    bf16 forward would flip most signs."""
    bf16 = final_tensors(runs / "teacher-fsdp-bf16")
    fp32 = checkpoint_tensors(runs / "teacher-fsdp" / "checkpoints" / STEP2)
    assert sorted(bf16) == sorted(fp32)
    assert all(t.dtype == torch.float32 for t in bf16.values())
    weights = [k for k in bf16 if k.startswith("module.")]
    difference = torch.cat([(bf16[k] - fp32[k]).abs().flatten() for k in weights])
    assert difference.median().item() < 1e-6  # measured 3.2e-7
    assert (difference > 1e-4).float().mean().item() < 0.06  # measured 0.035: the flipped signs
    a, b = losses(runs / "teacher-fsdp-bf16", "teacher/loss"), losses(runs / "teacher-fsdp", "teacher/loss")
    assert sorted(a) == [1, 2] and all(math.isclose(a[s], b[s], rel_tol=1e-2) for s in a)


def test_activation_checkpointing_gives_the_same_training(runs):
    assert_close_tensors(final_tensors(runs / "teacher-fsdp-ac"), final_tensors(runs / "teacher-fsdp"))


def test_resume_from_a_sharded_checkpoint_is_exact(runs):
    straight, resumed = runs / "teacher-fsdp", runs / "teacher-fsdp-resumed"
    assert_equal_tensors(final_tensors(resumed), final_tensors(straight))  # weights, EMA and AdamW moments, bit for bit
    assert losses(resumed, "teacher/loss") == {s: v for s, v in losses(straight, "teacher/loss").items() if s > 2}
    names = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert names == [STEP2, STEP4]  # the killed write's partial folder was replaced


def test_sharded_checkpoint_folder_holds_only_safetensors(runs):
    folder = runs / "teacher-fsdp" / "checkpoints" / STEP2
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["shards/shard-00001-model-00001-of-00001.safetensors", "shards/shard-00002-model-00001-of-00001.safetensors",
                     "train_state.safetensors"]
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:  # no pickle anywhere: every file is safetensors
            assert len(f.keys()) > 0
    state = load_sharded_train_state(folder)
    assert state.step == 2 and len(state.rng) == 2 and state.extra["strategy"] == "fsdp"
    assert state.optimizers["teacher"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    tensors = read_sharded_tensors(folder)
    weight = "module.model.blocks.0.ffn.0.weight"
    with safe_open(str(folder / files[0]), framework="pt") as f:  # rank 0 holds the first half of the rows
        half = f.get_slice(weight).get_shape()[0]
        assert half == tensors[weight].shape[0] // 2
        assert torch.equal(f.get_tensor(weight), tensors[weight][:half])
    assert tensors["optim.teacher.model.blocks.0.ffn.0.weight.step"].item() == 2


def test_world_file_holds_the_gathered_ema(runs):
    run_dir = runs / "teacher-fsdp"
    world, _ = read(run_dir / "world.safetensors")
    ema = final_tensors(run_dir, ("ema",))
    for module in ("model", "text_encoder"):
        expected = {k.removeprefix(f"ema.{module}."): t for k, t in ema.items() if k.startswith(f"ema.{module}.")}
        assert_equal_tensors(split_prefix(world, module), expected)


# ------------------------------------------------------------------------------------------------
# One rank (this process): resuming a two-rank checkpoint, and mistakes
# ------------------------------------------------------------------------------------------------


def test_one_rank_resumes_a_two_rank_checkpoint(runs, tmp_path, caplog):
    inputs = json.loads((runs / "inputs.json").read_text())
    run_dir = tmp_path / "one-rank"
    shutil.copytree(runs / "teacher-fsdp" / "checkpoints" / STEP2, run_dir / "checkpoints" / STEP2)
    saved = checkpoint_tensors(run_dir / "checkpoints" / STEP2)

    # Resumed at its last step: nothing to train, the world file is written from the loaded EMA.
    result = train(teacher_stage(inputs), loop_config("fsdp", steps=2), run_dir)
    assert result.step == 2 and result.finished
    world, _ = read(run_dir / "world.safetensors")
    assert_equal_tensors(split_prefix(world, "model"),
                         {k.removeprefix("ema.model."): t for k, t in saved.items() if k.startswith("ema.model.")})

    # Trained on: the optimiser moments came along (AdamW's step count goes on from 2).
    with caplog.at_level(logging.WARNING, logger="trainers.loop"):
        result = train(teacher_stage(inputs), loop_config("fsdp", steps=4), run_dir)
    assert result.step == 4 and "written by 2 process(es), this run has 1" in caplog.text
    after = checkpoint_tensors(run_dir / "checkpoints" / STEP4)
    assert after["optim.teacher.model.blocks.0.ffn.0.weight.step"].item() == 4
    assert load_sharded_train_state(run_dir / "checkpoints" / STEP4).extra["world_size"] == 1
    assert all(math.isfinite(v) for v in losses(run_dir, "teacher/loss").values())
    assert 0 < largest_change(saved, after) < 1.0


def test_resuming_with_the_other_strategy_is_a_clear_error(runs, tmp_path):
    inputs = json.loads((runs / "inputs.json").read_text())
    run_dir = tmp_path / "mixed"
    shutil.copytree(runs / "teacher-fsdp" / "checkpoints" / STEP2, run_dir / "checkpoints" / STEP2)
    with pytest.raises(CheckpointError, match="written with loop.strategy=fsdp; this run has loop.strategy=ddp"):
        train(teacher_stage(inputs), loop_config("ddp"), run_dir)


def test_a_missing_or_cut_shard_file_is_named(runs, tmp_path):
    folder = tmp_path / STEP2
    shutil.copytree(runs / "teacher-fsdp" / "checkpoints" / STEP2, folder)
    shard = folder / "shards" / "shard-00002-model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="shard-00002.* has .* bytes"):
        read_sharded_tensors(folder)
    shard.unlink()
    with pytest.raises(CheckpointError, match="shard-00002.* is missing"):
        read_sharded_tensors(folder)


@pytest.mark.parametrize("overrides, message", [
    ({"strategy": "zero3"}, "loop.strategy must be one of"),
    ({"strategy": "ddp", "activation_checkpointing": True}, "activation_checkpointing needs loop.strategy=fsdp"),
])
def test_strategy_mistakes_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(lambda ctx: None, loop_config(**{"strategy": "fsdp", **overrides}), tmp_path)


def test_hydra_loop_section_offers_the_strategy_switch():
    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "trainers" / "conf" / "config.yaml")
    loop = build_dataclass(LoopConfig, OmegaConf.to_container(conf.loop), "loop")
    assert loop.strategy == "ddp" and loop.activation_checkpointing is False


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
