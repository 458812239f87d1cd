"""Evaluation metrics (closed forms) and a smoke run of `worldsdk eval` on recorded Pong."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import reactive_world
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
    return root, reactive_world().save(root / "tiny.safetensors")


def test_eval_command_writes_json_markdown_and_plot(recorded):
    root, world = recorded
    out = root / "out"
    cmd = [sys.executable, "-m", "worldsdk.cli", "eval", "--world", str(world), "--data", str(root / "pong"),
           "--episodes", "2", "--starts", "1", "--horizon", "16", "--long-steps", "10", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "eval.json").read_text())
    assert set(results["fidelity"]) == {"1", "4", "16"} and results["replays"] == 2
    assert 0.0 <= results["action_following"]["real"] <= 1.0 and 0.0 <= results["action_following"]["blind"] <= 1.0
    assert {"psnr", "autoencoder_psnr", "blind_psnr", "ssim", "autoencoder_ssim", "blind_ssim"} <= set(results["fidelity"]["16"])
    assert results["motion"]["real"] >= 0 and results["cost"]["model_calls_per_frame"] == 2.5
    assert set(results["drift_controls"]) == {"real", "noise"} and set(results["objects"]) == {"world", "real", "noise"}
    assert "blind_ball_recall" in results["objects_in_replays"] and "blind_pass_rate" in results["action_test"]
    assert (out / "eval.md").read_text().startswith("# Evaluation") and (out / "eval.png").stat().st_size > 0


# -- the opposite-keys test, object counts, fresh recordings ------------------------------------------

PONG_BACKGROUND, PONG_PADDLE = (144, 72, 17), (92, 186, 92)


class KeyFollowingRollout:
    """A stand-in world that moves a drawn paddle 3 px per chunk the way each Pong key commands (a
    world that follows its keys), or not at all when `follow` is False (a world that ignores them)."""

    def __init__(self, follow: bool):
        self.row, self.follow = 30, follow

    def step(self, frame_actions):
        meaning = ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE")[frame_actions[0]]
        if self.follow:
            self.row += 3 * commanded_direction(meaning, "pong")
        frames = np.zeros((2, 64, 64, 3), np.uint8)
        frames[:] = PONG_BACKGROUND
        frames[:, self.row : self.row + 5, 56:58] = PONG_PADDLE
        return frames


class FakeSampler:
    def __init__(self, follow: bool):
        self.follow = follow

    def resolve(self, world):
        return self

    def start(self, world, prompt, seed, context, context_actions=None):
        assert context.shape[1:] == (64, 64, 3) and len(context) == world.model.config.latent_frames_max - 2
        # the actions that played the context: one per frame, of the game's action set
        assert len(context_actions) == len(context) and all(0 <= a < 6 for a in context_actions)
        return KeyFollowingRollout(self.follow)


def test_opposite_keys_test_passes_a_world_that_follows_keys_and_fails_one_that_ignores_them():
    from worldsdk.evaluation import action_test, opposite_actions

    assert opposite_actions(("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"), "pong") == (2, 3)
    world = World.from_preset("small")  # only its shapes are used by the fake samplers
    follows = action_test(world, "ALE/Pong-v5", trials=3, chunks=6, sampler=FakeSampler(True))
    ignores = action_test(world, "ALE/Pong-v5", trials=3, chunks=6, sampler=FakeSampler(False))
    # the real game, restored to the same moments, moves its paddle wall to wall under held keys
    assert follows["real_pass_rate"] == 1.0 and follows["real_separation_px"] > 30
    assert follows["world_pass_rate"] == 1.0 and follows["world_separation_px"] == pytest.approx(36.0, abs=0.5)
    assert 0.5 < follows["distance_ratio"] < 1.5
    assert ignores["world_pass_rate"] == 0.0 and ignores["world_separation_px"] == 0.0
    # the floor (one key in both arms) of a key-following world is no separation at all
    assert follows["blind_pass_rate"] == 0.0 and follows["blind_separation_px"] == 0.0


def test_every_eval_metric_separates_its_ceiling_from_its_action_blind_floor(pong_recording):
    # On real Pong frames and the shipped pong world's autoencoder, each metric must score the ceiling
    # control (real frames, or their reconstruction) clearly above the action-blind floor (the real clip
    # one horizon away, or noise); else a world's figure beside them would say nothing.
    from worldsdk.evaluation import evaluate

    r = evaluate(World.load("pong"), str(pong_recording), episodes=4, starts_per_episode=2, horizon=16, long_steps=4,
                 action_trials=0, split="all")
    assert r["replays"] == 8
    for h, v in r["fidelity"].items():
        assert v["autoencoder_psnr"] > v["blind_psnr"] + 3 and v["autoencoder_ssim"] > v["blind_ssim"], h
    a = r["action_following"]
    assert a["real"] > a["blind"] + 0.15 and a["samples"] > 50
    b = r["objects_in_replays"]
    assert b["autoencoder_ball_recall"] > b["blind_ball_recall"] + 0.3
    assert b["autoencoder_paddle_within_2px"] > b["blind_paddle_within_2px"] + 0.3
    assert r["drift_controls"]["real"] < r["drift_controls"]["noise"] - 0.1
    o = r["objects"]
    assert o["real"]["no_doubled_objects"] > o["noise"]["no_doubled_objects"] + 0.5
    assert o["real"]["ball_at_most_one"] > o["noise"]["ball_at_most_one"] + 0.5
    # motion is not an action metric: the shifted real clip moves as much as the real one
    assert 0.5 < r["motion"]["blind"] / r["motion"]["real"] < 2


def test_opposite_keys_test_fails_an_untrained_world():
    from worldsdk.evaluation import action_test

    result = action_test(World.from_preset("small"), "ALE/Pong-v5", trials=2, chunks=3)
    assert result["world_pass_rate"] == 0.0 and result["real_pass_rate"] == 1.0


@pytest.mark.parametrize("name, env_id", [("pong", "ALE/Pong-v5"), ("breakout", "ALE/Breakout-v5")])
def test_the_shipped_worlds_move_their_paddle_where_the_keys_send_it(name, env_id):
    # The goal's key test on the files in the package (docs/worlds.md: 8 of 8 trials at 0.98x / 0.84x the game's
    # distance): an export that loses the action pathway, or a world that ignores its keys (the first breakout:
    # 12% of trials at 0.00x), fails.
    from worldsdk.evaluation import action_test

    result = action_test(World.load(name), env_id, trials=4, chunks=6)
    assert result["real_pass_rate"] == 1.0
    assert result["world_pass_rate"] >= 0.75 and result["distance_ratio"] > 0.5, result


def test_object_counts_on_real_frames_and_on_doubled_or_scattered_objects():
    from worldsdk.data.objects import count_objects
    from worldsdk.data.recorder import record
    from worldsdk.data.store import EpisodeStore
    from worldsdk.evaluation import object_rates

    import tempfile

    with tempfile.TemporaryDirectory() as root:
        record("ALE/Pong-v5", root, episodes=1, policy="scripted", max_steps=120, seed=3, styles=("classic",))
        store = EpisodeStore(root)
        frames = store.read(store.records()[0]).frames[20:]
    real = object_rates(frames, "pong")
    assert real["no_doubled_objects"] >= 0.95 and real["player_paddle_present"] >= 0.95
    doubled = frames.copy()
    doubled[:, 10:15, 56:58] = PONG_PADDLE  # a second player paddle
    doubled[:, 45:47, 30:31] = (236, 236, 236)  # and a second ball
    counts = count_objects(doubled, "pong", "classic")
    assert (counts["paddle"] >= 2).mean() > 0.9
    assert object_rates(doubled, "pong")["no_doubled_objects"] < 0.1
    blank = np.zeros_like(frames)
    blank[:] = PONG_BACKGROUND
    assert object_rates(blank, "pong")["player_paddle_present"] == 0.0


def test_points_change_the_score_in_the_real_game_and_not_in_worlds_that_break_the_rule(tmp_path):
    from worldsdk.data.objects import point_events, point_scores
    from worldsdk.data.recorder import record
    from worldsdk.data.store import EpisodeStore

    record("ALE/Pong-v5", tmp_path, episodes=1, policy="random", max_steps=400, seed=5, styles=("classic",))
    store = EpisodeStore(tmp_path)
    episode = store.read(store.records()[0])
    frames, rewards = episode.frames, np.nonzero(episode.rewards)[0]
    rewards = rewards[rewards < len(frames) - 4]  # a point needs 3 frames after it to be seen
    assert len(rewards) >= 2  # the random player loses a point about every 35 frames
    points, changes = point_events(frames, "pong", "classic")
    assert len(points) == len(rewards) and all(abs(p - r) <= 2 for p, r in zip(points, rewards))
    assert changes == points  # the score changes in the frame the ball leaves
    assert point_events(frames, "pong", ["classic"] * len(frames)) == (points, changes)  # a style per frame
    with pytest.raises(ValueError, match="styles for"):
        point_events(frames, "pong", ["classic"] * 3)
    real = point_scores([frames], "pong", "classic")
    assert real["points_scored"] == 1.0 and real["changes_on_points"] == 1.0
    frozen = frames.copy()
    frozen[:, :7] = frames[0, :7]  # a world that never changes the score
    assert point_scores([frozen], "pong", "classic")["points_scored"] == 0.0
    restless = frames.copy()  # a world whose score changes at other moments: the score rows 60 frames late
    restless[60:, :7] = frames[:-60, :7]
    late = point_scores([restless], "pong", "classic")
    assert late["score_changes"] >= 2 and late["points_scored"] == 0.0 and late["changes_on_points"] == 0.0
    noise = np.random.default_rng(0).integers(0, 256, (60, *frames.shape[1:]), dtype=np.uint8)
    blank = point_scores([noise], "pong", "classic")  # nothing holds still, no ball leaves: nothing to judge
    assert blank["points"] == blank["score_changes"] == 0 and np.isnan(blank["points_scored"])
    with pytest.raises(ValueError, match="points are defined for"):
        point_events(frames, "breakout")


def test_eval_works_on_a_fresh_recording_of_a_few_episodes(tmp_path):
    from worldsdk.data.recorder import record
    from worldsdk.data.store import EpisodeStore
    from worldsdk.evaluation import evaluation_episodes

    record("ALE/Pong-v5", tmp_path / "fresh", episodes=2, policy="random", size=(32, 32), max_steps=40, seed=11)
    store = EpisodeStore(tmp_path / "fresh")
    assert evaluation_episodes(store, "auto")[1] == "all"
    with pytest.raises(ValueError, match="--split all"):
        evaluation_episodes(store, "test")
    world = World.from_preset("tiny").save(tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "worldsdk.cli", "eval", "--world", str(world), "--data", str(tmp_path / "fresh"),
           "--episodes", "2", "--starts", "1", "--horizon", "16", "--long-steps", "5", "--action-trials", "1", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "eval.json").read_text())
    assert results["split"] == "all" and results["test_episodes"] == 2
    assert results["action_test"]["world_pass_rate"] == 0.0  # the untrained tiny world ignores its keys
    assert set(results["points"]) == {"world", "real"}  # the 5-step rollout and the 40-frame episodes: no point yet
    assert results["points"]["real"]["points"] == 0 and "Points in that rollout" in (out / "eval.md").read_text()


def test_replays_objects_are_also_scored_on_the_goals_first_16_frames(pong_recording, monkeypatch):
    # A stand-in world that replays the real frames for 16 frames, then a frozen copy of the 16th: the
    # first-16 window scores it as the real game, the whole horizon does not.
    import worldsdk.evaluation as E

    def replay(world, frames, actions, prompt, start, length, seed, sampler):
        clip = frames[start : start + length].copy()
        clip[E.GOAL_HORIZON :] = clip[E.GOAL_HORIZON - 1]
        return clip

    monkeypatch.setattr(E, "replay", replay)
    r = E.evaluate(World.load("pong"), str(pong_recording), episodes=4, starts_per_episode=2, horizon=24, long_steps=0,
                   action_trials=0, split="all")
    first, whole = r["objects_in_replays"]["first_16"], r["objects_in_replays"]
    assert r["replays"] > 0 and first["ball_frames"] > 0
    assert first["ball_recall"] == 1.0 and first["paddle_within_2px"] == 1.0
    assert first["no_ball_frames"] == 0 or first["ball_false_positive"] == 0.0
    assert first["ball_frames"] + first["no_ball_frames"] == 16 * r["replays"]
    assert whole["ball_recall"] < 0.9  # the frozen frames lose the moving ball
    assert r["wall"] == {}  # Pong has no wall of bricks to score
    assert "first 16 frames" in E.markdown(r)


@pytest.fixture(scope="module")
def breakout_recording(tmp_path_factory):
    from worldsdk.data.recorder import record

    root = tmp_path_factory.mktemp("breakout")
    record("ALE/Breakout-v5", root, episodes=2, policy="scripted", max_steps=400, seed=4, styles=("classic",))
    return root


def test_wall_scores_follow_the_bricks_the_game_clears(breakout_recording):
    # On real Breakout frames: the game itself clears and keeps every wall pixel it changes and leaves; a
    # wall that stands still clears nothing; noise scores near nothing on both; a world whose wall is the
    # real one from 32 frames before is behind on the bricks.
    from worldsdk.data.objects import wall_mask
    from worldsdk.data.store import EpisodeStore
    from worldsdk.evaluation import wall_scores

    store = EpisodeStore(breakout_recording)
    frames = [store.read(r).frames for r in store.records()]
    starts = [(f, s) for f in frames for s in range(40, len(f) - 64, 32)]
    befores, reals = [f[s - 1] for f, s in starts], [f[s : s + 64] for f, s in starts]
    real = wall_scores(befores, reals, reals, "breakout", 64)
    assert real["changed_pixels"] > 50 and real["cleared"] == 1.0 and real["kept"] == 1.0
    still = wall_scores(befores, reals, [np.repeat(b[None], 64, 0) for b in befores], "breakout", 64)
    assert still["cleared"] == 0.0 and still["kept"] == 1.0
    noise = wall_scores(befores, reals, list(np.random.default_rng(0).integers(0, 256, (len(reals), 64, *reals[0].shape[1:]),
                                                                             dtype=np.uint8)), "breakout", 64)
    assert noise["cleared"] < 0.1 and noise["kept"] < 0.1
    colours, counts = np.unique(reals[0][0].reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]  # the most common colour
    blank = wall_scores(befores, reals, [np.broadcast_to(background, r.shape) for r in reals], "breakout", 64)
    # a world without a wall keeps nothing; it clears the pixels the game cleared of whole bricks (a 64-px pixel
    # can straddle two bricks, one of them still standing)
    assert blank["kept"] < 0.1 and 0.2 < blank["cleared"] < 1.0
    mask = wall_mask(reals[0].shape[1:3], "breakout")
    late = []
    for (f, s), clip in zip(starts, reals):
        behind = clip.copy()
        behind[:, mask] = f[s - 32 : s + 32][:, mask]  # everything else is the game's
        late.append(behind)
    assert wall_scores(befores, reals, late, "breakout", 64)["cleared"] < 0.6
    # a replay skipped for a style switch counts nowhere
    skipped = wall_scores([None] * len(befores), reals, reals, "breakout", 64)
    assert skipped["changed_pixels"] == 0 and np.isnan(skipped["cleared"])
    with pytest.raises(ValueError, match="no wall of bricks"):
        wall_mask((64, 64), "pong")


def test_eval_scores_the_wall_on_breakout_replays(breakout_recording, monkeypatch):
    # A stand-in world that replays the real frames: the wall rows read the game's own figures, beside a
    # still wall that clears nothing and the action-blind clip, which is behind on the bricks.
    import worldsdk.evaluation as E

    monkeypatch.setattr(E, "replay", lambda world, frames, actions, prompt, start, length, seed, sampler: frames[start : start + length])
    r = E.evaluate(World.load("breakout"), str(breakout_recording), episodes=2, starts_per_episode=3, horizon=32, long_steps=0,
                   action_trials=0, split="all")
    assert set(r["wall"]) == {"16", "32"}
    w = r["wall"]["32"]
    assert w["world"]["changed_pixels"] > 0 and w["world"]["cleared"] == 1.0 and w["world"]["kept"] == 1.0
    assert w["still"]["cleared"] == 0.0 and w["blind"]["cleared"] < 0.5
    assert "The wall of bricks" in E.markdown(r)
