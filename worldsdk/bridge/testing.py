"""A stand-in world for testing an engine integration or measuring the bridge without a model.

`NoiseWorld` implements the World API the server uses (spec, chunk_frames, observation_shape,
reset/step and the batched sessions: init_state, empty_state, reset_sessions, step_state, prompt_state,
and the state's view/absorb of slots) and returns random uint8 frames of any
size, deterministically from the seed, prompt and actions. `step_seconds` emulates the compute of one
batched forward, so the batching gain of the server can be measured without a model.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from worldsdk.spec import ActionSpec, WorldSpec
from worldsdk.world import StepResult


@dataclass
class NoiseState:
    """Batched session state: one history code and one step count per item (a stand-in for the KV cache)."""

    codes: list[int]
    steps: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.codes = list(self.codes)
        self.steps = list(self.steps) or [0] * len(self.codes)

    @property
    def batch_size(self) -> int:
        return len(self.codes)

    @staticmethod
    def stack(states: list["NoiseState"]) -> "NoiseState":
        return NoiseState([c for s in states for c in s.codes], [n for s in states for n in s.steps])

    def split(self) -> list["NoiseState"]:
        return [self.view(b, b + 1) for b in range(self.batch_size)]

    def view(self, start: int, stop: int) -> "NoiseState":
        return NoiseState(self.codes[start:stop], self.steps[start:stop])

    def absorb(self, start: int, part: "NoiseState") -> None:
        stop = start + part.batch_size
        self.codes[start:stop], self.steps[start:stop] = part.codes, part.steps


class NoiseWorld:
    """Random frames (chunk_frames, height, width, 3) from a bank of `bank_size` random chunks."""

    def __init__(
        self,
        height: int = 64,
        width: int = 64,
        chunk_frames: int = 4,
        action: ActionSpec | None = None,
        step_seconds: float = 0.0,
        bank_size: int = 8,
        fps: float = 15.0,
    ):
        action = action or ActionSpec.discrete(6)
        self.spec = WorldSpec(
            name=f"noise-{width}x{height}x{chunk_frames}", height=height, width=width, fps=fps, action=action,
            key_map={"none": _noop_wire(action)}, prompts=("noise",), default_prompt="noise",
            description="random frames, for tests and benchmarks of the bridge",
        )
        self.chunk_frames = chunk_frames
        self.observation_shape = (chunk_frames, height, width, 3)
        self.step_seconds = step_seconds
        self.reward_model = None  # no rewards and no real starts, like an untrained world
        self.num_starts = 0
        rng = np.random.default_rng(0)
        self._bank = rng.integers(0, 256, size=(bank_size, *self.observation_shape), dtype=np.uint8)
        self._state: NoiseState | None = None

    @property
    def action_space(self):
        return self.spec.action.to_space()

    # -- batched sessions --------------------------------------------------------------------------
    def init_state(self, batch_size=1, prompts=None, seeds=None, contexts=None):
        state = self.empty_state(batch_size)
        return self.reset_sessions(state, range(batch_size), prompts, seeds, contexts), state

    def empty_state(self, batch_size=1):
        return NoiseState([0] * batch_size)

    def reset_sessions(self, state: NoiseState, indices, prompts=None, seeds=None, contexts=None):
        indices = list(indices)
        prompts = [self.spec.default_prompt if p is None else p for p in (prompts or [None] * len(indices))]
        seeds = [0 if s is None else int(s) for s in (seeds or [None] * len(indices))]
        for b, seed, p in zip(indices, seeds, prompts):
            state.codes[b], state.steps[b] = _mix(seed, zlib.crc32(p.encode())), 0
        return self._frames([state.codes[b] for b in indices])

    def step_state(self, state: NoiseState, actions):
        if len(actions) != state.batch_size:
            raise ValueError(f"{len(actions)} actions for a batch of {state.batch_size}")
        for a in actions:
            self.spec.action.validate(a)
        codes = [_mix(c, zlib.crc32(repr(np.asarray(a).tolist()).encode())) for c, a in zip(state.codes, actions)]
        if self.step_seconds:
            time.sleep(self.step_seconds)
        return StepResult(self._frames(codes), NoiseState(codes, [n + 1 for n in state.steps]))

    def prompt_state(self, state: NoiseState, prompts, indices=None):
        indices = range(state.batch_size) if indices is None else indices
        for i, p in zip(indices, prompts):
            state.codes[i] = _mix(state.codes[i], zlib.crc32(p.encode()))
        return state

    def _frames(self, codes) -> np.ndarray:
        """(B, chunk, H, W, 3): a bank chunk per item, its history code written into the first bytes
        of every frame, so frames of different histories always differ."""
        frames = np.stack([self._bank[c % len(self._bank)] for c in codes])
        stamps = np.array(codes, dtype="<u8").view(np.uint8).reshape(len(codes), 1, 8)
        flat = frames.reshape(len(codes), self.chunk_frames, -1)
        n = min(8, flat.shape[-1])
        flat[:, :, :n] = stamps[:, :, :n]
        return frames

    # -- the default single session ----------------------------------------------------------------
    def reset(self, prompt=None, seed=None, context=None) -> np.ndarray:
        frames, self._state = self.init_state(1, [prompt or self.spec.default_prompt], [seed or 0])
        return frames[0]

    def step(self, action) -> np.ndarray:
        result = self.step_state(self._state, [action])
        self._state = result.state
        return result.frames[0]

    def set_prompt(self, text: str) -> None:
        self._state = self.prompt_state(self._state, [text])


def _mix(a: int, b: int) -> int:
    return (a * 0x9E3779B1 + b + 0x7F4A7C15) % (2**61 - 1)


def _noop_wire(action: ActionSpec):
    from .protocol import action_to_wire

    return action_to_wire(action.noop_action())
