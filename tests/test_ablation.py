"""The teachers' evaluation sampler (parity with the ODE stage's) and a smoke run of benchmarks/ablation.py."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, load_script, perturb_
from worldsdk import World
from worldsdk.evaluation import GuidedEulerRollout, Sampler


def _tiny(seed: int = 0, **info) -> World:
    world = World.from_preset("tiny", seed=seed)
    perturb_(world.model, seed=seed)
    world.info.update(info)
    return world


def test_teacher_sampler_matches_the_ode_stage_trajectories():
    """A guided Euler rollout from real context = `causal_ode_pairs` (what the students learned from) on
    the same clean history, noise, prompt and actions."""
    from trainers.objectives import Conditioning, causal_ode_pairs

    world = _tiny()
    fc = world.model.config.frames_per_chunk
    context = world.reset(seed=1)  # one chunk of frames as the real history
    action, steps, guidance, seed = 2, 5, 3.0, 7
    rollout = GuidedEulerRollout(world, world.spec.default_prompt, seed, context, steps, guidance)
    mc = world.model.config
    chunk_shape = (mc.latent_channels, fc, mc.latent_height, mc.latent_width)
    torch.randn(chunk_shape, generator=rollout.state.generators[0])  # the reference draws chunk 0's noise first
    frames = rollout.step([action] * fc)

    with torch.no_grad():
        history = world.codec.encode_video(torch.from_numpy(context))  # (1, C, fc, h, w)
        x0 = torch.cat([history, torch.zeros_like(history)], dim=2)  # chunk 1's clean latents are never read
        features = torch.zeros(1, 2 * fc, mc.action_dim + 1)
        features[0, fc:, action] = 1.0  # the context was committed without an action; then the action
        features[0, fc:, -1] = 1.0  # presence flag
        cond = Conditioning(world.text_encoder.encode([world.spec.default_prompt]), features)
        torch.manual_seed(seed)
        _, endpoint = causal_ode_pairs(world.model, x0, cond, replace(world.spec.schedule, steps=(1000.0,)), steps, guidance)
        expected = world.codec.decode_chunk(endpoint[:, :, fc:]).numpy()[0]
    assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1


def test_sampler_auto_picks_the_teacher_sampler_and_counts_calls():
    student, teacher = _tiny(stage="dmd"), _tiny(stage="teacher")
    assert Sampler().resolve(student).kind == "few_step" and Sampler().resolve(teacher).kind == "euler"
    chunk = student.chunk_frames
    assert Sampler().calls_per_chunk(student) / chunk == 2.5  # 4 passes + 1 commit per 2-frame chunk
    assert Sampler().calls_per_chunk(teacher) / chunk == 49.0  # (48 steps + 1 commit) x 2 CFG branches / 2 frames
    assert Sampler("euler", 10, 1.0).calls_per_chunk(student) == 11
    with pytest.raises(ValueError, match="sampler kind"):
        Sampler("ddim")


def _load_driver():
    """benchmarks/ is a folder of scripts, not a package: import the driver from its path."""
    return load_script(ROOT / "benchmarks" / "ablation.py", "benchmarks_ablation")


@pytest.fixture(scope="module")
def ablation_runs(tmp_path_factory):
    from worldsdk.data.recorder import record

    root = tmp_path_factory.mktemp("ablation")
    # episode ids 24 and 25 are the first in the test split
    record("ALE/Pong-v5", root / "pong", episodes=26, policy="scripted", size=(32, 32), max_steps=30, seed=0)
    runs = root / "runs"
    for i, (folder, stage) in enumerate([("teacher-causal", "teacher"), ("dmd-causal-forcing", "dmd"),
                                         ("dmd-self-forcing", "dmd")]):
        _tiny(seed=i, stage=stage).save(runs / folder / "world.safetensors")
    return root


def test_ablation_driver_writes_one_table(ablation_runs, capsys):
    driver = _load_driver()
    out = ablation_runs / "docs"
    code = driver.main(["--runs", str(ablation_runs / "runs"), "--data", str(ablation_runs / "pong"), "--out", str(out),
                        "--episodes", "2", "--starts", "2", "--horizon", "16", "--long-steps", "12",
                        "--teacher-starts", "1", "--teacher-long-steps", "10", "--teacher-steps", "4"])
    assert code == 0
    report = json.loads((out / "ablation.json").read_text())
    rows = {r["folder"]: r for r in report["rows"]}
    assert list(rows) == ["teacher-causal", "dmd-causal-forcing", "dmd-self-forcing"]
    skipped = {s["folder"] for s in report["skipped"]}
    assert {"teacher-diffusion-forcing", "ode-causal", "cd-causal"} <= skipped and not skipped & set(rows)
    keys = [k for k, _, _ in driver.COLUMNS]
    for folder, row in rows.items():
        assert list(row["columns"]) == keys
        finite = {k: v for k, v in row["columns"].items() if v is not None and math.isfinite(v)}
        # horizon 16; few paddle moves; at 32 px a paddle held against a wall is hidden, so no real separation
        assert set(keys) - set(finite) <= {"psnr@64", "follow", "follow/real", "keys/real"}, folder
    teacher, cf = rows["teacher-causal"], rows["dmd-causal-forcing"]
    assert teacher["results"]["replays"] == 2 and cf["results"]["replays"] == 4  # 1 vs 2 per episode
    assert teacher["results"]["noise_seeds"] == cf["results"]["noise_seeds"][::2]  # the same draws, a prefix per episode
    assert teacher["columns"]["calls/frame"] == 5.0 and cf["columns"]["calls/frame"] == 2.5  # (4 + 1) x 2 / 2 vs 5 / 2
    assert set(teacher["results"]["drift"]) == {"10"} and set(cf["results"]["drift"]) == {"10", "12"}
    goals = {g["goal"]: g["status"] for g in report["goals"]}
    assert len(goals) == 6 and set(goals.values()) <= {"pass", "miss", "n/a"}
    assert goals["the 4-step student keeps >= 90% of the AR teacher's fidelity (PSNR@16 or SSIM@16) with >= 8x fewer model calls"] == "miss"
    controls = report["controls"]
    assert set(controls) == {"ceiling", "floor"} and all(list(c) == keys for c in controls.values())
    assert controls["ceiling"]["follow/real"] == 1.0 and controls["ceiling"]["drift@10"] < controls["floor"]["drift@10"]
    assert controls["floor"]["follow"] == cf["results"]["action_following"]["blind"]
    table = (out / "ablation.md").read_text()
    assert table.count("\n| ") >= 1 + 3 + 2 + 5 and "Causal Forcing (causal ODE + DMD)" in table
    assert "*real frames (ceiling)*" in table and "*action-blind (floor)*" in table
    assert "Teacher rows: sampled with a 4-step Euler PF-ODE, CFG 6" in table and "No row for `ode-causal`" in table
    assert (out / "ablation.png").stat().st_size > 0
    assert json.loads(json.dumps(report)) == report  # strict JSON (NaN written as null) round trips
    assert "## Goals" in capsys.readouterr().out


def test_goal_checks_on_a_made_up_table():
    driver = _load_driver()

    def row(folder, **columns):
        base = dict.fromkeys([k for k, _, _ in driver.COLUMNS], 1.0)
        base.update(columns)
        results = {"long_steps": 1000, "objects_in_replays": {"autoencoder_ball_recall": 0.85}, "game": "pong"}
        return {"folder": folder, "label": folder, "teacher": folder.startswith("teacher"), "columns": base, "results": results}

    report = {"rows": [row("teacher-causal", **{"psnr@16": 20.0, "calls/frame": 49.0}),
                       row("dmd-causal-forcing", **{"follow": 0.8, "follow/real": 0.95, "motion": 3.0, "psnr@16": 19.0,
                                                    "calls/frame": 2.5, "drift@10": 0.1, "drift@end": 0.15,
                                                    "drift end/10": 1.5, "ball_recall": 0.7}),
                       row("dmd-self-forcing", **{"follow": 0.6, "motion": 2.0, "keys/real": 0.8})]}
    status = [g["status"] for g in driver.goal_checks(report, {"ball_recall/pong": 0.845})]
    # keys: 100% of trials at 1.0x the real separation; vs Self Forcing 1.0 / 0.8 on keys, 3.0 / 2.0 on motion
    assert status == ["pass", "pass", "pass", "pass", "pass", "miss"]  # recall 70% vs the autoencoder's 85%
    report["rows"][2]["columns"]["motion"] = 2.9  # within 15% of Causal Forcing's motion: the comparison misses
    assert [g["status"] for g in driver.goal_checks(report)][2] == "miss"
    report["rows"][1]["columns"].update(keys=0.9)  # 90% of trials: the keys goal misses
    assert [g["status"] for g in driver.goal_checks(report)][1] == "miss"
    report["rows"] = report["rows"][1:2]
    assert [g["status"] for g in driver.goal_checks(report)] == ["pass", "miss", "n/a", "n/a", "pass", "miss"]


def test_ball_goal_needs_few_false_positives():
    """A frame of noise "shows" a ball everywhere: full recall with false positives everywhere is a miss."""
    driver = _load_driver()
    base = dict.fromkeys([k for k, _, _ in driver.COLUMNS], 1.0)
    results = {"long_steps": 1000, "objects_in_replays": {"autoencoder_ball_recall": 0.85}, "game": "pong"}

    def ball_status(recall, fp):
        columns = dict(base, ball_recall=recall, ball_fp=fp)
        report = {"rows": [{"folder": "dmd-causal-forcing", "label": "cf", "teacher": False, "columns": columns,
                            "results": results}]}
        return driver.goal_checks(report)[-1]["status"]

    assert ball_status(0.80, 0.05) == "pass"
    assert ball_status(0.98, 0.90) == "miss"
    assert ball_status(0.70, 0.00) == "miss"
