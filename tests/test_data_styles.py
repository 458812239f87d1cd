"""Styles: deterministic, distinct, and they keep every object of Pong and Breakout visible."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from worldsdk.data import STYLES, apply_style, prompt_for
from worldsdk.data.objects import GAMES
from worldsdk.data.styles import Style, get_style, register_style


def _frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)


def test_at_least_three_styles_and_classic_is_identity():
    assert len(STYLES) >= 3 and "classic" in STYLES
    frames = _frames()
    np.testing.assert_array_equal(apply_style(frames, "classic"), frames)


@pytest.mark.parametrize("name", list(STYLES))
def test_styles_are_deterministic_and_per_pixel(name):
    frames = _frames()
    out = apply_style(frames, name)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    np.testing.assert_array_equal(out, apply_style(frames.copy(), name))
    # a per-pixel map: styling a sub-array gives the same pixels
    np.testing.assert_array_equal(apply_style(frames[1:3, 2:5], name), out[1:3, 2:5])


def test_styles_are_distinct_on_every_game():
    for objects in GAMES.values():
        palette = np.array([objects.background, *objects.palette], dtype=np.uint8)
        for a, b in itertools.combinations(STYLES, 2):
            difference = np.abs(apply_style(palette, a).astype(int) - apply_style(palette, b).astype(int)).mean()
            assert difference > 30, (a, b)


@pytest.mark.parametrize("name", list(STYLES))
@pytest.mark.parametrize("game", list(GAMES))
def test_styles_keep_palette_colours_apart_and_small_objects_visible(name, game):
    objects = GAMES[game]
    palette = np.array([objects.background, *objects.palette], dtype=np.uint8)
    styled = apply_style(palette, name).astype(float)
    distances = np.linalg.norm(styled[:, None] - styled[None], axis=-1) + np.eye(len(styled)) * 1e9
    assert distances.min() > 8
    background = np.asarray(objects.background, dtype=float)
    styled_background = apply_style(palette[:1], name)[0].astype(float)
    for colour in objects.palette[:2]:  # ball and paddle
        for alpha in (0.25, 0.5, 1.0):  # a pixel they cover partly
            blend = np.rint(background + alpha * (np.asarray(colour) - background)).astype(np.uint8)
            shown = np.linalg.norm(apply_style(blend[None], name)[0] - styled_background)
            assert shown >= 0.5 * alpha * np.linalg.norm(np.asarray(colour) - background), (colour, alpha)


def test_prompt_names_game_and_style():
    assert prompt_for("pong", "neon") == "pong, neon style"


def test_unknown_style_lists_known_ones():
    with pytest.raises(KeyError, match="classic"):
        get_style("plaid")


def test_register_custom_style():
    style = Style.affine("test-swap", np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]), [0, 0, 0])
    register_style(style)
    try:
        assert apply_style(np.array([[1, 2, 3]], np.uint8), "test-swap").tolist() == [[3, 2, 1]]
        with pytest.raises(ValueError):
            register_style(Style.affine("test-swap", np.eye(3), [0, 0, 0]))
    finally:
        del STYLES["test-swap"]
