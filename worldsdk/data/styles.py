"""Visual styles: deterministic palette transforms that a prompt names ("pong, neon style").

A style is an affine colour map, out = clip(M @ rgb + b), applied per pixel to uint8 frames after
they are resized, so `apply_style(classic_frames, s)` reproduces exactly what the recorder stores.
Every registered style keeps the games' palette colours apart and keeps a partly covered ball
visible against the background (tests check both): a grey or a high-contrast map would merge a
paddle with a half-covered ball, or clip a small ball to the background colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_NEON = np.array([[0.51, -0.11, 0.96], [-1.28, 0.78, 1.31], [-0.23, 1.13, 1.08]])
_NIGHT = np.array([[0.50, 0.05, 0.05], [0.05, 0.55, 0.10], [0.25, 0.25, 0.75]])
_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])  # the usual sepia tone matrix


@dataclass(frozen=True)
class Style:
    """An affine palette transform: `matrix` (3, 3) and `bias` (3,) in 0..255 units."""

    name: str
    matrix: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float]

    @staticmethod
    def affine(name: str, matrix: np.ndarray, bias) -> "Style":
        m = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
        return Style(name, tuple(tuple(float(v) for v in row) for row in m), tuple(float(v) for v in np.reshape(bias, 3)))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return apply_style(frames, self)


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style.affine("classic", np.eye(3), np.zeros(3)),
        # dark purple / teal grounds, magenta and cyan objects; found by a small random search for a map
        # that darkens Pong's ground while keeping every palette colour distinct and every blend visible
        Style.affine("neon", _NEON, np.array([2.0, 27.0, 28.0])),
        Style.affine("inverted", -np.eye(3), np.full(3, 255.0)),
        # dimmed and cooled; no channel clips at black, so a half-covered ball stays distinguishable
        Style.affine("night", _NIGHT, np.array([0.0, 5.0, 30.0])),
        # sepia blended with identity (pure sepia is nearly rank 1 and merges colours)
        Style.affine("sepia", 0.6 * _SEPIA + 0.4 * np.eye(3), np.array([48.0, 32.0, 12.0])),
    )
}


def get_style(style: str | Style) -> Style:
    """The registered style of that name (or the style itself); KeyError lists the known names."""
    if isinstance(style, Style):
        return style
    try:
        return STYLES[style]
    except KeyError:
        raise KeyError(f"unknown style {style!r}; known styles: {sorted(STYLES)}") from None


def register_style(style: Style) -> None:
    """Add a style (e.g. for a custom game); names are unique."""
    if style.name in STYLES and STYLES[style.name] != style:
        raise ValueError(f"a different style named {style.name!r} is already registered")
    STYLES[style.name] = style


def apply_style(frames: np.ndarray, style: str | Style) -> np.ndarray:
    """uint8 frames (..., 3) -> the same frames in `style`, uint8 (..., 3). Deterministic; classic is identity."""
    style = get_style(style)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"apply_style expects uint8 RGB frames (..., 3), got {frames.dtype} {frames.shape}")
    matrix = np.asarray(style.matrix, dtype=np.float32)
    if np.array_equal(matrix, np.eye(3, dtype=np.float32)) and not any(style.bias):
        return frames.copy()
    out = frames.astype(np.float32) @ matrix.T + np.asarray(style.bias, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def style_colour(colour, style: str | Style) -> np.ndarray:
    """One RGB colour in `style`, as float32 (3,): what a pixel of exactly that colour becomes."""
    return apply_style(np.asarray(colour, dtype=np.uint8).reshape(1, 3), style)[0].astype(np.float32)


def prompt_for(game: str, style: str) -> str:
    """The text prompt of an episode: "pong, neon style"."""
    return f"{game}, {style} style"
