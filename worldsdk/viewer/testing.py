"""Helpers for testing code that drives the viewer: a scripted session and synthetic input events."""

from __future__ import annotations

import threading
import time

import numpy as np

from worldsdk.spec import WORLD_PRESETS, WorldSpec


class FakeSession:
    """A session that records every call and answers with frames that encode the step count.

    Frame values: reset n of an episode -> 10 * resets; each step adds 1 (mod 256). `delay` seconds
    are slept in reset and step, to imitate a slow world.
    """

    def __init__(self, spec: WorldSpec | None = None, chunk_frames: int = 2, delay: float = 0.0):
        self.spec = spec or WORLD_PRESETS["tiny"]
        self.source = {"world": "fake"}
        self.chunk_frames = chunk_frames
        self.delay = delay
        self.calls: list[tuple] = []
        self._value = 0
        self._resets = 0
        self._lock = threading.Lock()

    @property
    def actions(self) -> list:
        return [c[1] for c in self.calls if c[0] == "step"]

    def _frames(self) -> np.ndarray:
        if self.delay:
            time.sleep(self.delay)
        shape = (self.chunk_frames, self.spec.height, self.spec.width, 3)
        return np.full(shape, self._value % 256, dtype=np.uint8)

    def reset(self, prompt=None, seed=None) -> np.ndarray:
        with self._lock:
            self.calls.append(("reset", prompt, seed))
            self._resets += 1
            self._value = 10 * self._resets
        return self._frames()

    def step(self, action) -> np.ndarray:
        self.spec.action.validate(action)
        with self._lock:
            self.calls.append(("step", action))
            self._value += 1
        return self._frames()

    def set_prompt(self, text: str) -> None:
        with self._lock:
            self.calls.append(("set_prompt", text))

    def close(self) -> None:
        self.calls.append(("close",))


def key_events(*names: str, up: bool = False) -> list:
    """KEYDOWN (or KEYUP) events for key names, as pygame would send them."""
    import pygame

    from worldsdk.viewer.keymap import key_code

    kind = pygame.KEYUP if up else pygame.KEYDOWN
    return [pygame.event.Event(kind, key=key_code(n), mod=0, unicode="", scancode=0) for n in names]


def text_events(text: str) -> list:
    """TEXTINPUT events typing `text`."""
    import pygame

    return [pygame.event.Event(pygame.TEXTINPUT, text=ch) for ch in text]


def post(events) -> None:
    import pygame

    for e in events:
        pygame.event.post(e)
