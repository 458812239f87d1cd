"""The pygame viewer: play a world with keyboard, mouse and prompts (`worldsdk play`).

A thin client of the World API: it only calls reset / step / set_prompt on a `Session` (a local World
or a bridge client). pygame is imported when a game starts, not when this package is imported.
"""

from worldsdk.viewer.game import Game, GameConfig
from worldsdk.viewer.keymap import Controls, KeyMap, keys_to_action
from worldsdk.viewer.recording import Recording
from worldsdk.viewer.session import LocalSession, RemoteSession, Session, open_session

__all__ = [
    "Controls", "Game", "GameConfig", "KeyMap", "LocalSession", "Recording", "RemoteSession", "Session",
    "keys_to_action", "open_session",
]
