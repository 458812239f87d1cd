"""The Causal Forcing chain on the tiny preset: every stage runs a few steps, writes a world file,
and the next stage loads it; the final world opens in World.load and the env."""

from __future__ import annotations

from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

import worldsdk  # noqa: F401
from torch.utils.data import Subset

from trainers.app import build_dataclass, run
from trainers.loop import LoopConfig
from trainers.loop import train as train_loop
from trainers.stage import ModelChoice
from trainers.stages.teacher import TeacherStage, TeacherStageConfig
from worldsdk import World
from worldsdk.autoencoder import AUTOENCODER_PRESETS, FrameAutoencoder, save_autoencoder
from worldsdk.data.latents import build_latent_cache
from worldsdk.data.recorder import record

TINY = {"name": "tiny", "preset": "tiny", "autoencoder": "tiny"}


def loop(steps=2, **kw):
    return {"max_steps": steps, "batch_size": 2, "seed": 0, "device": "cpu", "precision": "fp32", "log_every": 1,
            "checkpoint_every": 100, "progress": False, "tensorboard": False, **kw}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Recordings of real Pong at the tiny resolution, an autoencoder and their latent cache."""
    root = tmp_path_factory.mktemp("chain")
    data = root / "pong"
    record("ALE/Pong-v5", data, episodes=4, policy="scripted", size=(32, 32), max_steps=40, seed=0)
    torch.manual_seed(0)
    autoencoder = FrameAutoencoder(AUTOENCODER_PRESETS["tiny"])
    ae_path = save_autoencoder(root / "autoencoder.safetensors", autoencoder)
    latents = build_latent_cache(data, autoencoder, root / "latents", progress=False)
    return root, str(ae_path), str(latents)


def train(root: Path, stage: dict, steps=2, folder: str = "", **loop_kw) -> Path:
    run_dir = root / (folder or f"{stage['name']}-{stage.get('mode', stage.get('teacher_kind', ''))}")
    run({"run_dir": str(run_dir), "loop": loop(steps, **loop_kw), "model": TINY, "stage": stage})
    world_file = run_dir / "world.safetensors"
    assert world_file.is_file()
    return world_file


def test_the_whole_chain_runs_and_each_stage_loads_the_previous(chain):
    root, ae, latents = chain
    causal = train(root, {"name": "teacher", "mode": "teacher_forcing", "latents": latents, "autoencoder": ae})
    bidir = train(root, {"name": "teacher", "mode": "bidirectional", "latents": latents, "autoencoder": ae})
    train(root, {"name": "teacher", "mode": "diffusion_forcing", "latents": latents, "autoencoder": ae})
    ode = train(root, {"name": "ode", "teacher": str(causal), "latents": latents, "num_clips": 2, "generate_batch": 2,
                       "ode_steps": 8, "guidance": 2.0})
    pairs = sorted((ode.parent / "ode_pairs").glob("pairs_*.safetensors"))
    assert len(pairs) == 1
    sf_ode = train(root, {"name": "ode", "teacher": str(bidir), "teacher_kind": "bidirectional", "latents": latents,
                          "num_clips": 2, "generate_batch": 2, "ode_steps": 8})
    cd = train(root, {"name": "cd", "teacher": str(causal), "latents": latents, "ode_steps": 8})
    dmd = train(root, {"name": "dmd", "generator": str(ode), "real": str(bidir), "latents": latents, "critic_updates": 2}, steps=3)
    for path in (sf_ode, cd, dmd):
        world = World.load(path)
        assert world.info["trained"] is True and world.spec.name == "pong"
    world = World.load(dmd)
    assert world.info["stage"] == "dmd" and world.spec.action.n == 6
    env = gymnasium.make("worldsdk/World-v0", world=str(dmd))
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(2)
    assert obs.shape == (2, 32, 32, 3) and obs.dtype == np.uint8
    # long rollouts: 2 recorded frames, then up to 12 generated (the cache rolls), the last 8 scored
    long = train(root, {"name": "dmd", "generator": str(ode), "real": str(bidir), "latents": latents, "critic_updates": 1,
                        "rollout_frames": 12, "context_frames": 2, "ema_decay": 0.0,
                        "generator_optimizer": {"lr": 1e-3, "betas": [0.0, 0.999]}}, steps=2, folder="dmd-long")
    before, after = World.load(ode).model.state_dict(), World.load(long).model.state_dict()
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 0  # the generator learned from it
    with pytest.raises(ValueError, match="stage.rollout_frames must be 0 or a multiple of the chunk"):
        train(root, {"name": "dmd", "generator": str(ode), "real": str(bidir), "latents": latents, "rollout_frames": 6},
              folder="dmd-bad")
    # GameNGen's context noise: on teacher forcing's and the causal ODE's clean history only
    noisy = train(root, {"name": "ode", "teacher": str(causal), "latents": latents, "num_clips": 2, "generate_batch": 2,
                         "ode_steps": 8, "guidance": 2.0, "context_noise": 0.3}, folder="ode-noise")
    assert World.load(noisy).info["config"]["context_noise"] == 0.3
    with pytest.raises(ValueError, match="only with mode=teacher_forcing"):
        train(root, {"name": "teacher", "mode": "bidirectional", "latents": latents, "autoencoder": ae, "context_noise": 0.3},
              folder="teacher-bad")
    with pytest.raises(ValueError, match="only with teacher_kind=causal"):
        train(root, {"name": "ode", "teacher": str(bidir), "teacher_kind": "bidirectional", "latents": latents,
                     "context_noise": 0.3}, folder="ode-bad")


def test_teacher_loss_falls_on_one_batch_through_the_loop(chain):
    root, ae, latents = chain
    run_dir = root / "overfit"
    stage = {"name": "teacher", "mode": "teacher_forcing", "latents": latents, "autoencoder": ae,
             "optimizer": {"lr": 3e-3, "warmup_steps": 0}, "ema_decay": 0.0, "p_drop_text": 0.0, "p_drop_action": 0.0}
    losses = []
    config = build_dataclass(TeacherStageConfig, stage, "stage")

    class OneBatch(TeacherStage):
        def dataset(self):
            return Subset(self.data, [0])

    train_loop(lambda ctx: OneBatch(config, ModelChoice(**TINY), ctx),
               build_dataclass(LoopConfig, loop(40, batch_size=1), "loop"), run_dir,
               on_step=lambda step, logs: losses.append(float(logs["teacher/loss"])))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_recipe_command_writes_a_world(chain, tmp_path):
    import subprocess
    import sys

    root, ae, _ = chain
    out = tmp_path / "recipe"
    cmd = [sys.executable, "-m", "trainers.recipe", "--data", str(root / "pong"), "--out", str(out), "--preset", "tiny",
           "--scale", "0.0005", "--batch-size", "2", "--ode-clips", "2", "--autoencoder", ae, "--ode-guidance", "3",
           "--context-noise", "0.2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    world = World.load(out / "world.safetensors")
    assert world.info["stage"] == "dmd"
    assert world.step(3).shape == (2, 32, 32, 3)
    ode = World.load(out / "ode-causal" / "world.safetensors").info["config"]
    assert (ode["guidance"], ode["context_noise"]) == (3.0, 0.2)  # the flags reach the causal ODE stage


def test_world_stages_run_from_the_command_line_with_their_yaml(chain, tmp_path):
    """`worldsdk-train stage=teacher|ode|cd|dmd` through Hydra: the YAML mirrors each stage's dataclass."""
    import subprocess
    import sys

    root, ae, latents = chain
    common = ["model=tiny", "loop.device=cpu", "loop.threads=1", "loop.batch_size=2", "loop.max_steps=2",
              "loop.progress=false", "loop.tensorboard=false", f"stage.latents={latents}"]

    def cli(name: str, *overrides: str) -> Path:
        run_dir = tmp_path / name
        cmd = [sys.executable, "-m", "trainers.app", *overrides, *common, f"run_dir={run_dir}"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return run_dir / "world.safetensors"

    causal = cli("teacher", "stage=teacher", f"stage.autoencoder={ae}")
    bidir = cli("bidir", "stage=teacher", "stage.mode=bidirectional", f"stage.autoencoder={ae}")
    ode = cli("ode", "stage=ode", f"stage.teacher={causal}", "stage.num_clips=2", "stage.generate_batch=2", "stage.ode_steps=8")
    cli("cd", "stage=cd", f"stage.teacher={causal}", "stage.ode_steps=8")
    dmd = cli("dmd", "stage=dmd", f"stage.generator={ode}", f"stage.real={bidir}")
    assert World.load(dmd).info["stage"] == "dmd"
    result = subprocess.run([sys.executable, "-m", "trainers.app", "stage=teacher", "stage.mode=nope", *common,
                             f"run_dir={tmp_path / 'bad'}", f"stage.autoencoder={ae}"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "stage.mode must be one of" in result.stderr


def test_a_world_trains_and_samples_on_its_own_schedule(chain, monkeypatch):
    # A shift other than the paper's 5 must reach every grid: the teacher's training draws, the world it
    # writes, the ODE pairs' Euler steps and student states, DMD's student sigmas and the World's sampler.
    from trainers import objectives as O
    from worldsdk import diffusion as D

    root, ae, latents = chain
    schedule = D.Schedule(shift=2.0)
    seen: dict[str, list] = {"train": [], "euler": []}
    original_chunk_sigmas, original_euler = O.chunk_sigmas, D.Schedule.euler_sigmas

    def spy_chunk_sigmas(batch, frames, fc, sched, device, uniform=False):
        seen["train"].append(sched)
        return original_chunk_sigmas(batch, frames, fc, sched, device, uniform)

    def spy_euler(self, num_steps):
        seen["euler"].append(self)
        return original_euler(self, num_steps)

    monkeypatch.setattr(O, "chunk_sigmas", spy_chunk_sigmas)
    monkeypatch.setattr(D.Schedule, "euler_sigmas", spy_euler)
    shifted = root / "shift2"
    teacher = train(shifted, {"name": "teacher", "mode": "teacher_forcing", "latents": latents, "autoencoder": ae,
                              "timestep_shift": 2.0})
    assert seen["train"] and all(s == schedule for s in seen["train"])
    world = World.load(teacher)
    assert world.spec.schedule == schedule
    assert torch.allclose(world.sigmas, schedule.student_sigmas())
    ode = train(shifted, {"name": "ode", "teacher": str(teacher), "latents": latents, "num_clips": 2, "generate_batch": 2,
                          "ode_steps": 8, "guidance": 1.0})
    assert seen["euler"] and all(s == schedule for s in seen["euler"])
    assert World.load(ode).spec.schedule == schedule
    # without an override, the teacher takes its preset's schedule
    from worldsdk.config import WORLD_PRESETS

    default = train(root / "preset-shift", {"name": "teacher", "mode": "teacher_forcing", "latents": latents, "autoencoder": ae})
    assert World.load(default).spec.schedule == WORLD_PRESETS["tiny"].schedule != schedule
    # draw_shift moves only the training draws: the world keeps (and samples on) its own schedule
    seen["train"].clear()
    drawn = train(root / "draw3", {"name": "teacher", "mode": "teacher_forcing", "latents": latents, "autoencoder": ae,
                                   "timestep_shift": 2.0, "draw_shift": 3.0})
    assert seen["train"] and all(s == D.Schedule(shift=3.0) for s in seen["train"])
    assert World.load(drawn).spec.schedule == schedule


def test_snapshot_of_the_last_checkpoint_is_the_world_the_run_wrote(chain, tmp_path, capsys):
    """`python -m trainers.snapshot` rebuilds the stage from the checkpoint's config: the EMA world of the
    final checkpoint equals the run's own world file; the raw weights (and an earlier step) differ."""
    from trainers.snapshot import main, snapshot

    root, ae, latents = chain
    stage = {"name": "teacher", "mode": "teacher_forcing", "latents": latents, "autoencoder": ae, "ema_decay": 0.5}
    run_dir = tmp_path / "teacher"
    run({"run_dir": str(run_dir), "loop": loop(4, checkpoint_every=2), "model": TINY, "stage": stage})
    final = World.load(run_dir / "world.safetensors").model.state_dict()
    ema = World.load(snapshot(run_dir) / "world.safetensors")
    assert ema.info["step"] == 4 and ema.spec == World.load(run_dir / "world.safetensors").spec
    assert all(torch.equal(final[k], v) for k, v in ema.model.state_dict().items())
    raw = World.load(snapshot(run_dir, raw=True, out=tmp_path / "raw") / "world.safetensors").model.state_dict()
    early = World.load(snapshot(run_dir, step=2) / "world.safetensors").model.state_dict()
    assert any(not torch.equal(final[k], raw[k]) for k in final)
    assert any(not torch.equal(final[k], early[k]) for k in final)
    with pytest.raises(SystemExit) as stop:
        main([str(run_dir), "--step", "3"])
    assert stop.value.code == 2 and "has no checkpoint at step 3; it has steps [2, 4]" in capsys.readouterr().err


def test_teacher_logs_the_learnability_probe_at_each_eval(chain, tmp_path):
    """stage.probe_data: every eval logs the probe's scores per sigma and the keys' effect; the controls
    (autoencoder ceiling, repeat-the-last-frame floor) once. Scores are over every frame after each clip's
    first chunk: 4 episodes x 2 clips x (8 - 2) frames, split into frames with and without a ball."""
    from trainers.logger import read_metrics

    root, ae, latents = chain
    stage = {"name": "teacher", "latents": latents, "autoencoder": ae, "probe_data": str(root / "pong"),
             "probe_split": "all", "probe_clips_per_episode": 2, "probe_sigmas": [1.0, 0.5]}
    run({"run_dir": str(tmp_path / "t"), "loop": loop(5, eval_every=2), "model": TINY, "stage": stage})
    evals = [r for r in read_metrics(tmp_path / "t") if any(k.startswith("eval/probe/") for k in r)]
    assert [r["step"] for r in evals] == [2, 4]
    for record in evals:
        for sigma in ("1", "0.5"):
            assert record[f"eval/probe/{sigma}/ball_frames"] + record[f"eval/probe/{sigma}/no_ball_frames"] == 4 * 2 * 6
            assert 0.0 <= record[f"eval/probe/{sigma}/paddle_found"] <= 1.0
        assert "eval/probe/keys/pass_rate" in record and "eval/probe/keys/separation_px" in record
    assert "eval/probe/autoencoder/ball_recall" in evals[0] and "eval/probe/autoencoder/ball_recall" not in evals[1]
    assert evals[0]["eval/probe/repeat_last_frame/paddle_found"] > 0.9  # real frames: the paddle is there
    with pytest.raises(ValueError, match="probe_split must be test or all"):
        run({"run_dir": str(tmp_path / "u"), "loop": loop(1), "model": TINY, "stage": {**stage, "probe_split": "val"}})


def test_decoder_only_finetune_keeps_the_latents_and_changes_the_frames(chain):
    from worldsdk.autoencoder import load_autoencoder
    from worldsdk.data.latents import autoencoder_fingerprint

    root, ae, _ = chain
    stage = {"name": "autoencoder", "data": [str(root / "pong")], "init": ae, "train_encoder": False,
             "eval_frames": 16, "stats_frames": 16, "sample_frames": 2}
    run_dir = root / "decoder-finetune"
    run({"run_dir": str(run_dir), "loop": loop(3), "model": TINY, "stage": stage})
    before, after = load_autoencoder(ae), load_autoencoder(run_dir / "autoencoder.safetensors")
    for name, value in before.state_dict().items():  # the encoder and the latent statistics stay as they were
        assert name.startswith("decoder.") or torch.equal(value, after.state_dict()[name]), name
    assert any(not torch.equal(v, after.decoder.state_dict()[n]) for n, v in before.decoder.state_dict().items())
    assert autoencoder_fingerprint(after) == autoencoder_fingerprint(before)
    frames = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    z = before.encode(frames)
    assert torch.equal(after.encode(frames), z)  # the same latents: caches and worlds trained on them stay valid
    assert not torch.equal(after.decode(z), before.decode(z))
    with pytest.raises(ValueError, match="stage.init"):  # nothing to keep the encoder of
        run({"run_dir": str(root / "no-init"), "loop": loop(1), "model": TINY,
             "stage": {**stage, "init": ""}})


def test_a_teacher_grows_a_new_pathway_on_its_initial_world(chain):
    from trainers.stages.worlds import grown_model

    root, ae, latents = chain
    base = train(root / "grow-base", {"name": "teacher", "mode": "teacher_forcing", "latents": latents, "autoencoder": ae})
    model = World.load(base).model
    grown = grown_model(model, {"action_map": True})
    assert grown.config.action_map and not grown.action_map.any()
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.latent_channels, 4, cfg.latent_height, cfg.latent_width, generator=g)
    t, text = torch.rand(2, 4, generator=g) * 1000, torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)
    actions = torch.randn(2, 4, cfg.action_dim + 1, generator=g)
    with torch.no_grad():  # a zero map: the grown model computes what the initial one did
        assert torch.equal(grown.forward_causal(x, t, text, actions), model.forward_causal(x, t, text, actions))
    tuned = train(root / "grow-tuned", {"name": "teacher", "mode": "teacher_forcing", "latents": latents,
                                        "init": str(base), "grow": {"action_map": True}, "ema_decay": 0.0}, steps=2)
    world = World.load(tuned)
    assert world.model.config.action_map and world.model.action_map.abs().sum() > 0  # it trained
    with pytest.raises(ValueError, match="has no place in the grown model"):
        grown_model(model, {"dim": 2 * cfg.dim, "ffn_dim": 2 * cfg.ffn_dim})
    with pytest.raises(ValueError, match="unknown model field"):
        grown_model(model, {"no_such_field": 1})
    fresh = World.load(train(root / "grow-fresh", {"name": "teacher", "latents": latents, "autoencoder": ae,
                                                   "grow": {"action_map": True}, "ema_decay": 0.0}, steps=2))
    assert fresh.model.config.action_map and fresh.model.action_map.abs().sum() > 0  # a preset grown from step 0
    assert not model.config.action_map  # the preset itself is unchanged


def test_a_teacher_grown_with_a_history_predictor_trains_and_probes_it(chain, tmp_path):
    """+stage.grow.predictor_channels: the predictor's own regression is logged beside the loss, it trains
    (zero when grown), and each eval's probe gets its own row of scores."""
    from trainers.logger import read_metrics

    root, ae, latents = chain
    base = train(root / "pred-base", {"name": "teacher", "mode": "teacher_forcing", "latents": latents, "autoencoder": ae})
    stage = {"name": "teacher", "latents": latents, "init": str(base), "ema_decay": 0.0,
             "grow": {"context_frames": 2, "context_skip": 0.33, "predictor_channels": 8, "predictor_blocks": 1},
             "probe_data": str(root / "pong"), "probe_split": "all", "probe_clips_per_episode": 1, "probe_sigmas": [1.0]}
    run({"run_dir": str(tmp_path / "p"), "loop": loop(3, eval_every=2), "model": TINY, "stage": stage})
    records = read_metrics(tmp_path / "p")
    assert all(r["teacher/predictor_loss"] > 0 for r in records if "teacher/loss" in r)
    probe = [r for r in records if "eval/probe/predictor/ball_frames" in r]
    assert len(probe) == 1 and probe[0]["eval/probe/predictor/ball_frames"] == probe[0]["eval/probe/1/ball_frames"]
    assert World.load(tmp_path / "p" / "world.safetensors").model.predictor.out.weight.abs().sum() > 0


def test_a_teacher_trains_only_the_parts_it_is_told_to(chain):
    root, ae, latents = chain
    base = train(root / "part-base", {"name": "teacher", "mode": "teacher_forcing", "latents": latents, "autoencoder": ae})
    before = World.load(base)
    stage = {"name": "teacher", "mode": "teacher_forcing", "latents": latents, "init": str(base),
             "grow": {"local_channels": 8}, "trainable": ["local"], "ema_decay": 0.0}
    after = World.load(train(root / "part-local", stage, steps=3))
    old = before.model.state_dict()
    trunk = {k: v for k, v in after.model.state_dict().items() if not k.startswith("local.")}
    assert trunk.keys() == old.keys()
    assert all(torch.equal(v, old[k]) for k, v in trunk.items())  # the frozen trunk is bit for bit the initial one
    text = before.text_encoder.state_dict()
    assert all(torch.equal(v, text[k]) for k, v in after.text_encoder.state_dict().items())
    assert after.model.local.out.weight.abs().sum() > 0  # the path, zero when grown, trained
    with pytest.raises(ValueError, match="does not have"):
        train(root / "part-bad", {**stage, "trainable": ["no_such_part"]}, steps=1)
