"""What a client of a world needs to know about it: its actions and what a player sees.

An `ActionSpec` declares what a world's actions are (Discrete, MultiBinary, Box or a Dict of those)
and how they become the per-latent-frame features the model is conditioned on; a `WorldSpec` says what
a player sees (resolution, fps, key map, prompts) and holds the world's noise schedule (its shift and
few-step timesteps: one home for those numbers). `WORLD_PRESETS` are the specs of the named presets.
Both round-trip through plain JSON-able dicts, which is how checkpoints and the bridge's hello carry them.

The viewer, the bridge and the Gymnasium envs read this module; the model's shapes (`ModelConfig`)
live in `worldsdk.config`, which re-exports everything here so that older imports keep working.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np


def dataclass_from_dict(cls, d: Mapping, tuple_fields: tuple[str, ...] = ()):
    """Build a frozen config dataclass from its JSON dict, refusing unknown fields (a config from a
    newer or different version must not be silently half-read); JSON lists become tuples."""
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    d = dict(d)
    for name in tuple_fields:
        if name in d:
            d[name] = tuple(d[name])
    return cls(**d)


PAPER_SHIFT = 5.0  # Wan2.1 / Causal Forcing's timestep shift, sized for 832x480 video (~32k tokens a clip)
PAPER_STEPS = (1000.0, 750.0, 500.0, 250.0)  # the few-step student's nominal timesteps (Causal Forcing App. D)
SMALL_WORLD_SHIFT = 1.0  # a 16x16 latent: SD3's resolution rule puts it near 1 (docs/worlds.md)


# ----------------------------------------------------------------------------------------------
# Action specs
# ----------------------------------------------------------------------------------------------

ACTION_KINDS = ("discrete", "multi_binary", "box", "dict")


@dataclass(frozen=True)
class ActionSpec:
    """A declared action space. `kind` is one of discrete, multi_binary, box, dict.

    discrete: `n` choices (the action is an int); multi_binary: `n` bits; box: a float array of
    `shape` within [low, high]; dict: named sub-specs in `spaces` (sorted by name when encoded).
    """

    kind: str
    n: int = 0
    shape: tuple[int, ...] = ()
    low: float = -1.0
    high: float = 1.0
    spaces: tuple[tuple[str, "ActionSpec"], ...] = ()
    noop: Any = None

    def __post_init__(self):
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"ActionSpec kind must be one of {ACTION_KINDS}, got {self.kind!r}")
        if self.kind in ("discrete", "multi_binary") and self.n < 1:
            raise ValueError(f"ActionSpec({self.kind}) needs n >= 1, got n={self.n}")
        if self.kind == "box" and (not self.shape or self.high <= self.low):
            raise ValueError(f"ActionSpec(box) needs a shape and low < high, got {self.shape}, [{self.low}, {self.high}]")
        if self.kind == "dict" and not self.spaces:
            raise ValueError("ActionSpec(dict) needs at least one sub-space")

    # -- constructors ----------------------------------------------------------------------------
    @staticmethod
    def discrete(n: int) -> "ActionSpec":
        return ActionSpec("discrete", n=n)

    @staticmethod
    def multi_binary(n: int) -> "ActionSpec":
        return ActionSpec("multi_binary", n=n)

    @staticmethod
    def box(shape, low: float = -1.0, high: float = 1.0) -> "ActionSpec":
        return ActionSpec("box", shape=tuple(int(s) for s in shape), low=float(low), high=float(high))

    @staticmethod
    def dict(**spaces: "ActionSpec") -> "ActionSpec":
        return ActionSpec("dict", spaces=tuple(sorted(spaces.items())))

    # -- sizes -----------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """Length of the float feature vector one action encodes to (without the presence flag)."""
        if self.kind == "discrete":
            return self.n
        if self.kind == "multi_binary":
            return self.n
        if self.kind == "box":
            return int(np.prod(self.shape))
        return sum(sub.feature_dim for _, sub in self.spaces)

    # -- gymnasium -------------------------------------------------------------------------------
    def to_space(self):
        """The gymnasium space this spec declares."""
        from gymnasium import spaces

        if self.kind == "discrete":
            return spaces.Discrete(self.n)
        if self.kind == "multi_binary":
            return spaces.MultiBinary(self.n)
        if self.kind == "box":
            return spaces.Box(self.low, self.high, shape=self.shape, dtype=np.float32)
        return spaces.Dict({name: sub.to_space() for name, sub in self.spaces})

    def noop_action(self):
        """The action that means "do nothing": discrete 0, no bits, zero motion."""
        if self.kind == "discrete":
            return 0
        if self.kind == "multi_binary":
            return np.zeros(self.n, dtype=np.int8)
        if self.kind == "box":
            return np.clip(np.zeros(self.shape, dtype=np.float32), self.low, self.high)
        return {name: sub.noop_action() for name, sub in self.spaces}

    def validate(self, action) -> None:
        """Raise ValueError naming the space and the value when `action` is outside this spec."""
        if not self._contains(action):
            raise ValueError(f"action {action!r} is not in the world's action space {self.to_space()}")

    def _contains(self, action) -> bool:
        if self.kind == "discrete":
            if isinstance(action, np.ndarray):
                if action.shape != () or not np.issubdtype(action.dtype, np.integer):
                    return False
                action = action.item()
            return isinstance(action, (int, np.integer)) and not isinstance(action, bool) and 0 <= action < self.n
        if self.kind == "multi_binary":
            a = np.asarray(action)
            return a.shape == (self.n,) and np.all((a == 0) | (a == 1))
        if self.kind == "box":
            try:
                a = np.asarray(action, dtype=np.float64)
            except (TypeError, ValueError):
                return False
            return a.shape == self.shape and bool(np.all(np.isfinite(a))) and bool(
                np.all((a >= self.low - 1e-6) & (a <= self.high + 1e-6))
            )
        if not isinstance(action, Mapping) or set(action.keys()) != {name for name, _ in self.spaces}:
            return False
        return all(sub._contains(action[name]) for name, sub in self.spaces)

    def encode(self, action) -> np.ndarray:
        """One action -> float32 features (feature_dim,): one-hot, bits, or box scaled to [-1, 1]."""
        self.validate(action)
        if self.kind == "discrete":
            out = np.zeros(self.n, dtype=np.float32)
            out[int(action)] = 1.0
            return out
        if self.kind == "multi_binary":
            return np.asarray(action, dtype=np.float32).reshape(self.n)
        if self.kind == "box":
            a = np.asarray(action, dtype=np.float32).reshape(-1)
            return (2.0 * (a - self.low) / (self.high - self.low) - 1.0).astype(np.float32)
        return np.concatenate([sub.encode(action[name]) for name, sub in self.spaces])

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        if self.kind == "discrete" or self.kind == "multi_binary":
            return {"kind": self.kind, "n": self.n}
        if self.kind == "box":
            return {"kind": "box", "shape": list(self.shape), "low": self.low, "high": self.high}
        return {"kind": "dict", "spaces": {name: sub.to_dict() for name, sub in self.spaces}}

    @staticmethod
    def from_dict(d: Mapping) -> "ActionSpec":
        kind = d.get("kind")
        if kind in ("discrete", "multi_binary"):
            return ActionSpec(kind, n=int(d["n"]))
        if kind == "box":
            return ActionSpec.box(d["shape"], d.get("low", -1.0), d.get("high", 1.0))
        if kind == "dict":
            return ActionSpec.dict(**{k: ActionSpec.from_dict(v) for k, v in d["spaces"].items()})
        raise ValueError(f"unknown action spec kind {kind!r} in {dict(d)!r}; expected one of {ACTION_KINDS}")


# ----------------------------------------------------------------------------------------------
# World spec
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldSpec:
    """What a player of the world sees: resolution, frame rate, chunking, actions, keys, prompts."""

    name: str = "world"
    height: int = 64
    width: int = 64
    fps: float = 15.0
    action: ActionSpec = field(default_factory=lambda: ActionSpec.discrete(1))
    key_map: dict = field(default_factory=dict)  # key name -> action (json-able)
    prompts: tuple[str, ...] = ()
    default_prompt: str = ""
    denoising_steps: tuple[float, ...] = PAPER_STEPS
    timestep_shift: float = PAPER_SHIFT  # read both through `schedule`
    sink_frames: int = 1
    # The noise level of the history the world commits (its chunks and real context frames), under that
    # timestep: for a world trained with noise on its history (stage.context_noise; GameNGen), where it
    # keeps long rollouts from drifting. 0: a clean history at t = 0 (every other world).
    context_noise: float = 0.0
    description: str = ""

    def __post_init__(self):
        if not 0.0 <= self.context_noise < 1.0:
            raise ValueError(f"context_noise must be in [0, 1) (a noise level), got {self.context_noise}")

    @property
    def schedule(self):
        """The world's noise schedule (`worldsdk.diffusion.Schedule`): what training and sampling read."""
        from worldsdk.diffusion import Schedule

        return Schedule(self.timestep_shift, tuple(self.denoising_steps))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["action"] = self.action.to_dict()
        d["prompts"] = list(self.prompts)
        d["denoising_steps"] = list(self.denoising_steps)
        return d

    @staticmethod
    def from_dict(d: Mapping) -> "WorldSpec":
        d = dict(d)
        d["action"] = ActionSpec.from_dict(d["action"])
        return dataclass_from_dict(WorldSpec, d, ("prompts", "denoising_steps"))


# ----------------------------------------------------------------------------------------------
# Presets: what each named preset looks like to a player (its DiT's shapes: worldsdk.config.MODEL_PRESETS)
# ----------------------------------------------------------------------------------------------

# Pong-like six-action default (ALE minimal set: NOOP, FIRE, RIGHT, LEFT, RIGHTFIRE, LEFTFIRE).
GAME_ACTION = ActionSpec.discrete(6)
GAME_KEYS = {"none": 0, "space": 1, "right": 2, "up": 2, "left": 3, "down": 3}

WORLD_PRESETS: dict[str, WorldSpec] = {
    "tiny": WorldSpec(
        name="tiny", height=32, width=32, fps=15.0, action=GAME_ACTION, key_map=GAME_KEYS,
        prompts=("pong, classic colours",), default_prompt="pong, classic colours",
        description="random weights, for tests",
    ),
    "small": WorldSpec(
        name="small", timestep_shift=SMALL_WORLD_SHIFT, height=64, width=64, fps=15.0, action=GAME_ACTION, key_map=GAME_KEYS,
        prompts=("pong, classic colours",), default_prompt="pong, classic colours",
        description="random weights at the size of the default worlds",
    ),
    "small-ctx": WorldSpec(
        name="small-ctx", timestep_shift=SMALL_WORLD_SHIFT, height=64, width=64, fps=15.0, action=GAME_ACTION, key_map=GAME_KEYS,
        prompts=("pong, classic colours",), default_prompt="pong, classic colours",
        description="random weights at the size of the default worlds, with context frames",
    ),
    "wan-1.3b": WorldSpec(
        name="wan-1.3b", height=480, width=832, fps=16.0, action=ActionSpec.discrete(1), key_map={"none": 0},
        prompts=("a cinematic shot of a mountain lake at dawn",),
        default_prompt="a cinematic shot of a mountain lake at dawn",
        description="Wan2.1-T2V-1.3B shapes, prompt-only",
    ),
}
