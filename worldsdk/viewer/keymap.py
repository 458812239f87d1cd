"""Keys and mouse -> the world's actions, through the key map stored in its world spec.

Key names are pygame's key constants without the `K_` prefix, case-insensitive for named keys:
"left", "space", "return", "lshift", "w", "1". A binding may name a chord, "space+right", which is
active only while all of its keys are held. The name "none" gives the action taken when no binding
is active, as a whole action of the keyboard part (an index, or n bits), otherwise the no-op.

What a key map's values mean, by action kind (docs/viewer.md has the full table):
- discrete: binding -> action index. Of the active bindings, the one with the most keys wins; among
  equally long ones the most recently pressed wins (the viewer knows press order), else the one listed
  first in the key map (`keys_to_action`, which has no press order).
- multi_binary: binding -> bit index (or a list of them). Every active binding sets its bits.
- box of shape (2,): no keys; relative mouse motion (dx, dy) since the last step becomes the action.
- dict: the "keyboard" sub-space (discrete or multi_binary) is bound as above, the "mouse" sub-space
  (box (2,)) takes mouse motion; any other sub-space stays at its no-op.

Mouse motion m (pixels per step) becomes n = clip(m / mouse_range, -1, 1), then n * high for n > 0 and
-n * low for n < 0, so no motion is the box's no-op and `mouse_range` pixels give full deflection.

`keys_to_action(spec)` turns the same map into the table `gymnasium.utils.play.play` expects.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from typing import AbstractSet, Any, Mapping

import numpy as np

from worldsdk.spec import ActionSpec, WorldSpec

IDLE = "none"  # key-map name of the action taken when nothing is held
MAX_TABLE_KEYS = 10  # keys_to_action lists every chord of up to this many keys, else chords of <= 3 keys


def key_code(name: str) -> int:
    """A key name ("left", "space", "w", "lshift") -> its pygame key code."""
    import pygame

    for attr in (f"K_{name}", f"K_{name.upper()}", f"K_{name.lower()}"):
        code = getattr(pygame, attr, None)
        if isinstance(code, int):
            return code
    raise ValueError(f"unknown key name {name!r}: use pygame key constant names without K_, e.g. 'left', 'space', 'w'")


def key_label(code: int) -> str:
    """A pygame key code -> a short readable name, as the help overlay shows it."""
    import pygame

    names = {v: k[2:] for k, v in vars(pygame).items() if k.startswith("K_") and isinstance(v, int)}
    name = names.get(code, str(code))
    return name if len(name) == 1 else name.lower()


def parse_chord(binding: str) -> frozenset[int]:
    """"space+right" -> the set of its pygame key codes."""
    parts = [p.strip() for p in binding.split("+")]
    if not all(parts):
        raise ValueError(f"bad key binding {binding!r}: expected names joined by '+', e.g. 'space+right'")
    return frozenset(key_code(p) for p in parts)


@dataclass(frozen=True)
class Controls:
    """The viewer's own keys (pygame key names). World key maps may not bind them."""

    quit: str = "escape"
    help: str = "f1"
    hud: str = "f2"
    prompt: str = "return"
    reset: str = "f5"
    pause: str = "f6"
    single_step: str = "f7"
    mouse_capture: str = "f8"
    record: str = "f9"
    screenshot: str = "f12"

    def codes(self) -> dict[int, str]:
        """pygame key code -> control name."""
        return {key_code(getattr(self, f.name)): f.name for f in fields(self)}

    def help_lines(self) -> list[tuple[str, str]]:
        what = {
            "quit": "quit (closes the prompt box first)", "help": "this help", "hud": "HUD on/off",
            "prompt": "type a new prompt; Enter sends it", "reset": "reset the episode", "pause": "pause / resume",
            "single_step": "one chunk while paused", "mouse_capture": "capture / release the mouse",
            "record": "recording on/off", "screenshot": "save a screenshot",
        }
        return [(getattr(self, f.name), what[f.name]) for f in fields(self)]


@dataclass(frozen=True)
class _Binding:
    name: str  # as written in the key map
    keys: frozenset[int]
    value: Any  # discrete: action index; multi_binary: tuple of bit indices


class KeyMap:
    """Turns the set of held keys and the mouse motion since the last step into one action."""

    def __init__(self, action: ActionSpec, key_map: Mapping[str, Any], mouse_range: float = 100.0,
                 controls: Controls | None = None):
        if mouse_range <= 0:
            raise ValueError(f"mouse_range must be > 0 pixels, got {mouse_range}")
        self.action_spec = action
        self.mouse_range = float(mouse_range)
        self.keyboard, self.mouse = _input_spaces(action)
        self.idle = None
        bindings = []
        for name, value in key_map.items():
            if name == IDLE:
                self.idle = self._check_idle(value)
                continue
            if self.keyboard is None:
                raise ValueError(f"key map binds {name!r} but the action space {action.to_space()} has no keyboard part")
            bindings.append(_Binding(name, parse_chord(name), self._check_value(name, value)))
        self.bindings: tuple[_Binding, ...] = tuple(bindings)
        self.keys: frozenset[int] = frozenset().union(*(b.keys for b in bindings)) if bindings else frozenset()
        clashes = set(self.keys) & set((controls or Controls()).codes())
        if clashes:
            raise ValueError(
                f"the world's key map binds viewer control keys {sorted(key_label(c) for c in clashes)}; "
                "rebind them in the world spec or pass other Controls"
            )

    @classmethod
    def from_spec(cls, spec: WorldSpec, mouse_range: float = 100.0, controls: Controls | None = None) -> "KeyMap":
        return cls(spec.action, spec.key_map, mouse_range, controls)

    @property
    def uses_mouse(self) -> bool:
        return self.mouse is not None

    # -- actions ------------------------------------------------------------------------------------
    def action(self, held: AbstractSet[int], mouse: tuple[float, float] = (0.0, 0.0),
               pressed_at: Mapping[int, float] | None = None):
        """The action for these held key codes and this relative mouse motion (pixels since the last step).

        `pressed_at` (key code -> when it was last pressed) breaks ties between equally long discrete chords.
        """
        spec = self.action_spec
        if spec.kind == "dict":
            out = spec.noop_action()
            for name, _ in spec.spaces:
                if name == "keyboard":
                    out[name] = self._keyboard_action(held, pressed_at)
                elif name == "mouse":
                    out[name] = self._mouse_action(mouse)
            return out
        if spec.kind == "box":
            return self._mouse_action(mouse)
        return self._keyboard_action(held, pressed_at)

    def _keyboard_action(self, held: AbstractSet[int], pressed_at: Mapping[int, float] | None):
        active = [b for b in self.bindings if b.keys <= held]
        if self.keyboard.kind == "discrete":
            if not active:
                return self.keyboard.noop_action() if self.idle is None else self.idle
            when = pressed_at or {}
            # max() keeps the first of equal keys, so key-map order breaks the last ties
            return max(active, key=lambda b: (len(b.keys), max(when.get(k, float("-inf")) for k in b.keys))).value
        bits = np.zeros(self.keyboard.n, dtype=np.int8)
        if not active and self.idle is not None:
            bits[:] = self.idle
        for b in active:
            bits[list(b.value)] = 1
        return bits

    def _mouse_action(self, motion: tuple[float, float]) -> np.ndarray:
        box = self.mouse
        n = np.clip(np.asarray(motion, dtype=np.float64) / self.mouse_range, -1.0, 1.0)
        value = np.where(n > 0, n * box.high, -n * box.low)
        return np.clip(value, box.low, box.high).astype(np.float32)

    # -- descriptions --------------------------------------------------------------------------------
    def label(self, action) -> str:
        """A short readable form of an action for the HUD: "2 (right)", "[0 1 0 0] (w)", "mouse (+0.20, -0.10)"."""
        spec = self.action_spec
        if spec.kind == "dict":
            return " ".join(f"{name}={self._label_one(sub, action[name])}" for name, sub in spec.spaces)
        return self._label_one(spec, action)

    def _label_one(self, spec: ActionSpec, value) -> str:
        if spec.kind == "discrete":
            names = [IDLE] if self.idle is not None and self.idle == int(value) else []
            names += [b.name for b in self.bindings if b.value == int(value)]
            return f"{int(value)}" + (f" ({'/'.join(names)})" if names else "")
        if spec.kind == "multi_binary":
            bits = np.asarray(value).astype(int)
            names = [b.name for b in self.bindings if bits[list(b.value)].all()]
            return "".join(map(str, bits)) + (f" ({'/'.join(names)})" if names else "")
        if spec.kind == "box":
            return "(" + ", ".join(f"{v:+.2f}" for v in np.asarray(value).reshape(-1)) + ")"
        return repr(value)

    def help_lines(self) -> list[tuple[str, str]]:
        """(key, what it does) for every binding, for the help overlay."""
        lines = [(b.name, f"action {self._label_value(b.value)}") for b in self.bindings]
        if self.uses_mouse:
            lines.append(("mouse", f"motion -> {self.mouse.to_space()} (full at {self.mouse_range:g} px/step)"))
        return lines

    def _label_value(self, value) -> str:
        if self.keyboard is not None and self.keyboard.kind == "multi_binary":
            return "bit " + ",".join(map(str, value))
        return str(value)

    # -- validation ----------------------------------------------------------------------------------
    def _check_idle(self, value):
        """"none" -> a whole keyboard action (an index, or n bits); a whole Dict action gives its keyboard part."""
        kb = self.keyboard
        if isinstance(value, Mapping):
            value = value.get("keyboard")
        if kb is None or value is None:
            return None  # a mouse-only world may name its idle action; motion decides anyway
        if kb.kind == "discrete":
            return self._check_value(IDLE, value)
        bits = np.asarray(value)
        if bits.shape != (kb.n,) or not np.isin(bits, (0, 1)).all():
            raise ValueError(f"key map 'none' -> {value!r}: a MultiBinary({kb.n}) idle action needs {kb.n} bits of 0/1")
        return bits.astype(np.int8)

    def _check_value(self, name: str, value):
        kb = self.keyboard
        if kb is None:
            raise ValueError(f"key map binds {name!r} but the action space has no keyboard part")
        if kb.kind == "discrete":
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < kb.n:
                raise ValueError(f"key map {name!r} -> {value!r}: Discrete({kb.n}) bindings need an action index in [0, {kb.n})")
            return int(value)
        bits = [value] if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
        try:
            bits = tuple(int(b) for b in bits)
        except (TypeError, ValueError):
            bits = None
        if bits is None or not all(0 <= b < kb.n for b in bits):
            raise ValueError(f"key map {name!r} -> {value!r}: MultiBinary({kb.n}) bindings need bit indices in [0, {kb.n})")
        return bits


def _input_spaces(action: ActionSpec) -> tuple[ActionSpec | None, ActionSpec | None]:
    """(keyboard part, mouse part) of an action space, either None when absent."""
    def mouse_box(spec: ActionSpec, where: str) -> ActionSpec:
        if spec.kind != "box" or spec.shape != (2,):
            raise ValueError(f"{where} must be a Box of shape (2,) (mouse dx, dy) to be played, got {spec.to_space()}")
        return spec

    if action.kind in ("discrete", "multi_binary"):
        return action, None
    if action.kind == "box":
        return None, mouse_box(action, "a Box action space")
    spaces = dict(action.spaces)
    keyboard = spaces.get("keyboard")
    if keyboard is not None and keyboard.kind not in ("discrete", "multi_binary"):
        raise ValueError(f"the 'keyboard' action must be Discrete or MultiBinary, got {keyboard.to_space()}")
    mouse = mouse_box(spaces["mouse"], "the 'mouse' action") if "mouse" in spaces else None
    return keyboard, mouse


def keys_to_action(spec: WorldSpec) -> dict[tuple[int, ...], Any]:
    """The world's key map as `gymnasium.utils.play.play` wants it: sorted key-code tuples -> action.

    Every chord of the bound keys is listed with the action the viewer would take for it (all chords
    up to MAX_TABLE_KEYS bound keys, else chords of at most 3 keys), mouse parts at their no-op.
    A mouse-only world has no keys and gives an empty table.
    """
    keymap = KeyMap.from_spec(spec)
    keys = sorted(keymap.keys)
    longest = len(keys) if len(keys) <= MAX_TABLE_KEYS else 3
    table = {}
    for size in range(1, longest + 1):
        for chord in itertools.combinations(keys, size):
            table[chord] = keymap.action(frozenset(chord))
    return table
