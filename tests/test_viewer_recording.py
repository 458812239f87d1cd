"""Recording: a run with the tiny world is written as mp4 + JSON and replays to the same frames."""

import json

import numpy as np
import pytest

pygame = pytest.importorskip("pygame")

from worldsdk.config import ActionSpec  # noqa: E402
from worldsdk.viewer.game import Game, GameConfig  # noqa: E402
from worldsdk.viewer.recording import Recording, action_from_json, action_to_json, frames_digest  # noqa: E402
from worldsdk.viewer.session import LocalSession  # noqa: E402
from worldsdk.viewer.testing import key_events, post, text_events  # noqa: E402


@pytest.fixture(autouse=True)
def headless(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")


FIRST_PROMPT = "pong, neon style"  # not the world's default: a replay must take it from the recording


def tiny_session() -> LocalSession:
    """The tiny preset with its zero-initialised layers perturbed, so actions and prompts change the frames."""
    from tests.conftest import reactive_world

    return LocalSession(reactive_world(), {"world": "tiny", "weights_seed": 0})


class FrameTap:
    """Collects every frame a game shows."""

    def __init__(self, game: Game):
        self.frames = []
        present = game._present

        def tapped(now):
            before = game.stats.frames_shown
            present(now)
            if game.stats.frames_shown > before:
                self.frames.append(game.frame.copy())

        game._present = tapped


def tick_until(game: Game, done, max_ticks: int = 200) -> None:
    for _ in range(max_ticks):
        if done():
            return
        game.tick()
    raise AssertionError("condition not reached")


def play_scripted(tmp_path) -> tuple[Game, list[np.ndarray]]:
    """Keys, a prompt change, recording switched on mid-episode, a reset, more keys; recording stops at the end."""
    game = Game(tiny_session(), GameConfig(realtime=False, record_dir=str(tmp_path / "rec"), seed=5, prompt=FIRST_PROMPT))
    tap = FrameTap(game)
    game.start()
    script = [key_events("right"), [], key_events("f9"), key_events("right", up=True) + key_events("space"),
              key_events("space", up=True) + key_events("return") + text_events("pong at night") + key_events("return"),
              key_events("left"), key_events("f5"), key_events("left", up=True), key_events("up")]
    for events in script:
        n = game.steps_submitted
        post(events)
        tick_until(game, lambda: game.steps_submitted > n)
    tick_until(game, lambda: not game.buffer and not game._generating())
    game.close()
    return game, tap.frames


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    return play_scripted(tmp_path_factory.mktemp("played"))


def test_recording_is_written_and_replays_to_the_same_frames(played, tmp_path):
    game, shown = played
    assert len(game.recordings) == 1
    rec = Recording.load(game.recordings[0])
    kinds = [e["type"] for e in rec.events]
    assert kinds[0] == "reset" and kinds.count("reset") == 2 and "prompt" in kinds
    assert rec.events[0]["seed"] == 5 and kinds.count("step") == 9
    assert rec.events[0]["prompt"] == FIRST_PROMPT and tiny_session().world.spec.default_prompt != FIRST_PROMPT
    assert {"type": "prompt", "text": "pong at night"} in rec.events
    assert all("frames_sha256" in e for e in rec.events if e["type"] != "prompt")
    assert rec.video_start > 0  # recording began mid-episode: the events still start at its reset
    video = game.recordings[0].with_name(rec.video)
    assert video.stat().st_size > 0

    import imageio.v3 as iio

    recorded_video = iio.imread(video)
    assert recorded_video.shape[1:] == (512, 512, 3)

    replay = Game(tiny_session(), GameConfig(realtime=False, record_dir=str(tmp_path / "replay")), replay=rec)
    tap = FrameTap(replay)
    replay.run()
    assert replay.replay_mismatches == []
    # every chunk, regenerated, is bit-identical to the one generated while playing
    digests = [e["frames_sha256"] for e in rec.events if "frames_sha256" in e]
    assert replay.replay_checked == len(digests)
    assert len(tap.frames) == 2 * len(digests)  # tiny: 2 frames per chunk; a replay shows every frame
    replayed = [frames_digest(np.stack(tap.frames[i:i + 2])) for i in range(0, len(tap.frames), 2)]
    assert replayed == digests
    np.testing.assert_array_equal(np.stack(tap.frames[:10]), np.stack(shown[:10]))  # before the reset cut in


def test_a_tampered_recording_is_reported_as_diverged(played, tmp_path):
    game, _ = played
    data = json.loads(game.recordings[0].read_text())
    step = next(i for i, e in enumerate(data["events"]) if e["type"] == "step" and e["action"] == 3)
    data["events"][step]["action"] = 1  # FIRE instead of LEFT: the world must show something else
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(data))
    replay = Game(tiny_session(), GameConfig(realtime=False, record_dir=str(tmp_path)), replay=Recording.load(path))
    replay.run()
    assert replay.replay_mismatches and replay.replay_mismatches[0] == step


def test_a_recording_with_another_reset_prompt_diverges_at_once(played, tmp_path):
    # the prompt recorded at reset reaches the world: changing it changes the very first chunk
    game, _ = played
    data = json.loads(game.recordings[0].read_text())
    data["events"][0]["prompt"] = "breakout, grey"
    path = tmp_path / "other_prompt.json"
    path.write_text(json.dumps(data))
    replay = Game(tiny_session(), GameConfig(realtime=False, record_dir=str(tmp_path)), replay=Recording.load(path))
    replay.run()
    assert replay.replay_mismatches and replay.replay_mismatches[0] == 0


@pytest.mark.parametrize("spec, action", [
    (ActionSpec.discrete(4), 3),
    (ActionSpec.multi_binary(3), np.array([1, 0, 1], np.int8)),
    (ActionSpec.dict(keyboard=ActionSpec.multi_binary(2), mouse=ActionSpec.box((2,))),
     {"keyboard": np.array([0, 1], np.int8), "mouse": np.array([0.25, -1.0], np.float32)}),
])
def test_actions_round_trip_through_json(spec, action):
    back = action_from_json(spec, json.loads(json.dumps(action_to_json(action))))
    spec.validate(back)
    np.testing.assert_equal(back, action)


def test_load_refuses_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a worldsdk recording"):
        Recording.load(path)
