"""`worldsdk play` end to end, headless: local worlds, recordings, replays, remote worlds, no display."""

import json
import logging

import numpy as np
import pytest

pytest.importorskip("pygame")

from worldsdk.cli import main  # noqa: E402
from worldsdk.config import WORLD_PRESETS  # noqa: E402
from worldsdk.viewer.game import Game, GameConfig  # noqa: E402
from worldsdk.viewer.session import RemoteSession  # noqa: E402
from worldsdk.viewer.testing import key_events, post  # noqa: E402


@pytest.fixture(autouse=True)
def headless(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")


def test_play_records_and_replays(tmp_path):
    rec, shot = tmp_path / "rec", tmp_path / "shot.png"
    assert main(["play", "--world", "tiny", "--headless", "--max-steps", "4", "--record", str(rec),
                 "--screenshot", str(shot), "--seed", "3"]) == 0
    assert shot.stat().st_size > 0
    [recording] = rec.glob("*.json")
    assert recording.with_suffix(".mp4").stat().st_size > 0
    data = json.loads(recording.read_text())
    assert data["source"] == {"world": "tiny", "weights_seed": 3} and data["events"][0]["seed"] == 3
    assert [e["type"] for e in data["events"]] == ["reset"] + ["step"] * 4

    assert main(["play", "--replay", str(recording), "--headless", "--fast"]) == 0
    data["events"][0]["seed"] = 4
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    assert main(["play", "--replay", str(tampered), "--headless", "--fast"]) == 1


def test_no_display_gives_a_clear_message(monkeypatch, caplog):
    for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    with caplog.at_level(logging.ERROR):
        assert main(["play", "--world", "tiny"]) == 2
    assert "no display available" in caplog.text and "--headless" in caplog.text


class FakeClient:
    """Follows the bridge client contract: hello() gives the spec, reset/step give frames."""

    def __init__(self):
        self.calls = []

    def hello(self):
        return {"world_spec": WORLD_PRESETS["tiny"].to_dict(), "chunk_frames": 2}

    def reset(self, prompt=None, seed=None):
        self.calls.append(("reset", prompt, seed))
        return np.zeros((2, 32, 32, 3), np.uint8)

    def step(self, action):
        self.calls.append(("step", action))
        return np.full((2, 32, 32, 3), len(self.calls), np.uint8)

    def set_prompt(self, text):
        self.calls.append(("set_prompt", text))

    def close(self):
        self.calls.append(("close",))


def test_remote_session_wraps_a_client(tmp_path):
    client = FakeClient()
    session = RemoteSession(client, "tcp://example:5555")
    assert session.spec == WORLD_PRESETS["tiny"] and session.source == {"connect": "tcp://example:5555"}
    game = Game(session, GameConfig(realtime=False, max_steps=2, record_dir=str(tmp_path)))
    game.start()
    post(key_events("left"))
    while game.tick():
        pass
    game.close()
    session.close()
    assert [c[0] for c in client.calls] == ["reset", "step", "step", "close"]
    assert client.calls[1] == ("step", 3)


def test_play_connects_to_a_served_world(tmp_path):
    from tests.conftest import reactive_world
    from worldsdk.bridge import Server

    with Server(reactive_world(), "tcp://127.0.0.1:*").start() as server:  # a replay that lost its actions would diverge
        rec = tmp_path / "rec"
        assert main(["play", "--connect", server.address, "--headless", "--fast", "--max-steps", "3",
                     "--record", str(rec)]) == 0
        [recording] = rec.glob("*.json")
        data = json.loads(recording.read_text())
        assert data["source"] == {"connect": server.address}
        assert main(["play", "--replay", str(recording), "--headless", "--fast"]) == 0  # replays over the bridge
