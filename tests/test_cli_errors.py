"""User mistakes on the command line: one clear line on stderr, a non-zero exit, no traceback
(`--debug` shows it); the recipe checks recordings against the preset and finds their rewards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from worldsdk.data.recorder import record

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def worldsdk(*args):
    return subprocess.run([sys.executable, "-m", "worldsdk.cli", *args], capture_output=True, text=True, timeout=180, env=ENV)


def one_line_error(out, *fragments):
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    record("ALE/Pong-v5", root / "pong64", episodes=1, policy="scripted", size=(64, 64), max_steps=6, seed=0, progress=False)
    return root / "pong64"


def test_unknown_world_is_one_line():
    one_line_error(worldsdk("play", "--headless", "--world", "no-such-world"), "worldsdk play: error: no world 'no-such-world'")
    out = worldsdk("--debug", "play", "--headless", "--world", "no-such-world")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_bad_data_folder_is_one_line(tmp_path):
    one_line_error(worldsdk("eval", "--world", "tiny", "--data", str(tmp_path / "missing")), "is not a worldsdk dataset")


def test_corrupt_index_names_the_file(recording, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(recording, broken)
    (broken / "index.json").write_text('{"episodes": [')
    one_line_error(worldsdk("eval", "--world", "tiny", "--data", str(broken)), str(broken / "index.json"), "corrupt")


def test_recipe_checks_the_frame_size_before_training(recording, tmp_path):
    out = subprocess.run([sys.executable, "-m", "trainers.recipe", "--data", str(recording), "--out", str(tmp_path / "run"),
                          "--preset", "tiny"], capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "64x64 frames but --preset tiny makes 32x32 worlds: record with `worldsdk record --size 32" in out.stderr
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


@pytest.fixture
def fake_recipe(monkeypatch):
    """trainers.recipe with its stages stubbed: each 'trains' by writing its folder name as its world; returns the
    module and the list of (folder, stage) it was asked to train."""
    from trainers import recipe

    trained = []

    def fake_train(self, folder, stage, steps, batch_size=None):
        trained.append((folder, stage))
        (self.out / folder).mkdir(parents=True, exist_ok=True)
        (self.out / folder / "world.safetensors").write_bytes(folder.encode())
        (self.out / folder / "autoencoder.safetensors").write_bytes(b"")
        return self.out / folder

    monkeypatch.setattr(recipe.Recipe, "train", fake_train)
    monkeypatch.setattr(recipe, "build_latents", lambda r, ae: r.out / "latents")
    monkeypatch.setattr(recipe, "check_data", lambda data, preset: None)
    return recipe, trained


def test_recipe_trains_a_reward_model_when_the_recordings_carry_rewards(recording, tmp_path, fake_recipe):
    from worldsdk.data.store import EpisodeStore

    recipe, trained = fake_recipe

    assert not recipe.recordings_have_rewards(str(recording))  # 6 frames of scripted Pong: no point scored
    rewarded = tmp_path / "rewarded"
    import shutil

    shutil.copytree(recording, rewarded)
    store = EpisodeStore(rewarded)
    (rec,) = store.records()
    episode = store.read(rec)
    episode.rewards = np.zeros_like(episode.rewards)
    episode.rewards[3] = 1.0
    with store.writing(store.meta()):
        store.append(episode, store.meta())
    assert recipe.recordings_have_rewards(str(rewarded))

    assert recipe.main(["--data", str(rewarded), "--out", str(tmp_path / "run"), "--preset", "small"]) == 0
    folders = [f for f, _ in trained]
    assert folders[-1] == "reward" and trained[-1][1]["world"].endswith("dmd-causal-forcing/world.safetensors")
    assert (tmp_path / "run" / "world.safetensors").read_bytes() == b"reward"  # the final world carries the reward model
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["reward_model"] is True
    trained.clear()
    assert recipe.main(["--data", str(recording), "--out", str(tmp_path / "plain"), "--preset", "small"]) == 0
    assert "reward" not in [f for f, _ in trained]


def test_recipe_summary_names_a_teacher_given_from_elsewhere(recording, tmp_path, fake_recipe):
    """A teacher copied in from a long run (with a FROM file) is "given" in recipe.json, not "trained"."""
    recipe, trained = fake_recipe
    out = tmp_path / "run"
    (out / "teacher-causal").mkdir(parents=True)
    (out / "teacher-causal" / "world.safetensors").write_bytes(b"teacher")
    (out / "teacher-causal" / "FROM").write_text("runs/long/teacher-map/snapshots/step_00008698\n")
    ae = tmp_path / "ae.safetensors"
    ae.write_bytes(b"")
    assert recipe.main(["--data", str(recording), "--out", str(out), "--preset", "small", "--autoencoder", str(ae),
                        "--reward", "no", "--only", "ode-causal"]) == 0
    summary = json.loads((out / "recipe.json").read_text())
    assert summary["given"] == {"teacher-causal": "runs/long/teacher-map/snapshots/step_00008698"}
    assert summary["trained"] == ["ode-causal"] and [f for f, _ in trained] == ["ode-causal"]
