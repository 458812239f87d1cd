"""Finding the ball and the player's paddle in Pong and Breakout frames, in any style and resolution.

Used to measure whether an autoencoder or a generated world keeps the ball (ball recall) and moves
the paddle the way the actions say (paddle motion direction).

How: the frames were area-resized before styling, so a pixel that a small object partly covers is
style(background + alpha * (X - background)) for the object's classic colour X. Each distinct colour
of a frame is matched to the nearest entry of a table of such styled blends (every palette colour,
alpha in steps of 0.05), which labels the pixel with a palette colour and says how much of the pixel
it covers; the table is built through the style itself, so clipping styles are handled exactly.
Ball evidence is the alpha of ball-labelled pixels inside the region the ball can be in, minus each
row's median (which removes walls of the ball's colour that half-cover a border row); pixels that no
two-colour blend explains, and ball colour beside another object in a border row, do not count;
the ball is the 3x3 window with the most evidence, if that holds at least a third of a ball.
The paddle is the centroid of paddle-labelled alpha inside the paddle's lane. The style is given,
or detected per frame as the style whose palette best explains the frame.

Limits: Breakout's ball has the colour of the top brick row and of the paddle, so it is not searched
for among the bricks (raw rows 57..92) nor in the paddle's rows; a ball touching a paddle can blend
into it. Frames
from a generated world that leave the palette are judged by the nearest blend.
Coordinates are (row, column) in pixels of the given frame; pixel (0, 0)'s centre is (0.0, 0.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from worldsdk.data.styles import STYLES, Style, apply_style, get_style

RAW_HEIGHT, RAW_WIDTH = 210, 160  # Atari 2600 frames
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class GameObjects:
    """A game's classic palette and where its ball and paddle can be, in raw 210x160 coordinates."""

    background: RGB
    ball: RGB
    paddle: RGB
    others: tuple[RGB, ...]  # the other colours that share the playfield (walls, bricks, opponent)
    ball_rows: tuple[tuple[int, int], ...]  # [start, stop) bands the ball is searched in
    ball_cols: tuple[int, int]
    ball_excluded_rows: tuple[tuple[int, int], ...]  # bands where ball-coloured pixels are not the ball
    ball_size: tuple[int, int]  # (height, width)
    paddle_rows: tuple[int, int]
    paddle_cols: tuple[int, int]
    paddle_size: tuple[int, int]
    paddle_axis: int  # 0: moves up/down (Pong), 1: left/right (Breakout)
    # Pong's scoring: the score digits' rows, and the columns the ball has passed a paddle beyond
    # (point_events). None: the game scores otherwise (Breakout: bricks).
    score_rows: tuple[int, int] | None = None
    goal_cols: tuple[int, int] | None = None
    # Breakout's wall of bricks: the raw [start, stop) rows and columns it fills (wall_mask). None: no wall (Pong).
    wall_rows: tuple[int, int] | None = None
    wall_cols: tuple[int, int] | None = None

    @property
    def palette(self) -> tuple[RGB, ...]:
        """Distinct non-background colours, ball first."""
        out: list[RGB] = []
        for c in (self.ball, self.paddle, *self.others):
            if c not in out:
                out.append(c)
        return tuple(out)


GAMES: dict[str, GameObjects] = {
    "pong": GameObjects(
        background=(144, 72, 17),
        ball=(236, 236, 236),  # also the walls' colour
        paddle=(92, 186, 92),  # the player's, on the right
        others=((213, 130, 74),),  # the opponent's paddle
        ball_rows=((34, 194),),
        ball_cols=(0, 160),
        ball_excluded_rows=(),
        ball_size=(4, 2),
        paddle_rows=(34, 194),
        paddle_cols=(140, 144),
        paddle_size=(16, 4),
        paddle_axis=0,
        score_rows=(0, 23),  # above the top wall
        goal_cols=(20, 140),  # the opponent's paddle ends at 20, the player's starts at 140
    ),
    "breakout": GameObjects(
        background=(0, 0, 0),
        ball=(200, 72, 72),  # also the paddle's and the top brick row's colour
        paddle=(200, 72, 72),
        others=((142, 142, 142), (198, 108, 58), (180, 122, 48), (162, 162, 42), (72, 160, 72), (66, 72, 200), (66, 158, 130)),
        ball_rows=((32, 189),),
        ball_cols=(8, 152),
        # the bricks (the top row has the ball's colour, and a blend of two brick rows can pass for a
        # half-covered ball) and the paddle (the ball's colour too)
        ball_excluded_rows=((57, 93), (189, 193)),
        ball_size=(4, 2),
        paddle_rows=(189, 193),
        paddle_cols=(8, 152),
        paddle_size=(4, 16),
        paddle_axis=1,
        wall_rows=(57, 93),  # six rows of bricks, 6 raw pixels each
        wall_cols=(8, 152),  # eighteen bricks of 8 raw pixels between the side walls
    ),
}


def get_game(game: str) -> GameObjects:
    try:
        return GAMES[game]
    except KeyError:
        raise KeyError(f"no object finder for game {game!r}; known games: {sorted(GAMES)}") from None


# ----------------------------------------------------------------------------------------------
# Pixel unmixing
# ----------------------------------------------------------------------------------------------


_ALPHAS = np.linspace(0.0, 1.0, 21)[1:]  # coverage levels a pixel is matched against


def _blend_table(objects: GameObjects, style: Style) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every styled blend of background and a palette colour: colours (M, 3), labels (M,), alphas (M,).

    Label -1 is the background. A recorded pixel is style(round(blend of classic colours)), so the
    table is built the same way and is exact for any per-pixel style, clipping included.
    """
    background = np.asarray(objects.background, dtype=np.float64)
    blends = [background[None]]
    labels, alphas = [np.array([-1])], [np.array([0.0])]
    for k, colour in enumerate(objects.palette):
        blends.append(background + _ALPHAS[:, None] * (np.asarray(colour, dtype=np.float64) - background))
        labels.append(np.full(len(_ALPHAS), k))
        alphas.append(_ALPHAS)
    classic = np.clip(np.rint(np.concatenate(blends)), 0, 255).astype(np.uint8)
    styled = apply_style(classic, style).astype(np.float32)
    return styled, np.concatenate(labels), np.concatenate(alphas).astype(np.float32)


def _unmix(frames: np.ndarray, objects: GameObjects, style: Style) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: the palette label (-1: background), coverage alpha and distance of the nearest blend.

    frames uint8 (N, H, W, 3) -> labels int (N, H, W), alpha float32 (N, H, W), distance float32 (N, H, W).
    """
    table, labels, alphas = _blend_table(objects, style)
    flat = frames.reshape(-1, 3).astype(np.int32)
    # game frames hold few distinct colours: match each distinct colour once
    packed, inverse = np.unique((flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2], return_inverse=True)
    colours = np.stack([packed >> 16, (packed >> 8) & 255, packed & 255], 1).astype(np.float32)  # (U, 3)
    d2 = (colours * colours).sum(1, keepdims=True) - 2.0 * colours @ table.T + (table * table).sum(1)  # (U, M)
    nearest = d2.argmin(1)
    distance = np.sqrt(np.maximum(d2[np.arange(len(colours)), nearest], 0.0)).astype(np.float32)
    shape = frames.shape[:-1]
    inverse = inverse.reshape(-1)
    return labels[nearest][inverse].reshape(shape), alphas[nearest][inverse].reshape(shape), distance[inverse].reshape(shape)


def detect_style(frames: np.ndarray, game: str, styles: list[str] | None = None) -> list[str]:
    """Per frame, the style (of `styles`, default all registered) whose palette best explains it."""
    objects = get_game(game)
    frames = _as_batch(frames)[:, ::2, ::2]  # every other pixel is plenty
    names = list(STYLES) if styles is None else list(styles)
    errors = []
    for name in names:
        _, _, distance = _unmix(frames, objects, get_style(name))
        errors.append(distance.mean(axis=(1, 2)))
    best = np.argmin(np.stack(errors), axis=0)
    return [names[i] for i in best]


# ----------------------------------------------------------------------------------------------
# Regions in frame coordinates
# ----------------------------------------------------------------------------------------------


def _band_mask(n: int, raw_n: int, bands: tuple[tuple[int, int], ...], inside: bool = False) -> np.ndarray:
    """Frame pixels (of n) whose raw span [i, i + 1) * raw_n / n overlaps any band (inside: lies within one)."""
    scale = raw_n / n
    lo, hi = np.arange(n) * scale, (np.arange(n) + 1) * scale
    mask = np.zeros(n, dtype=bool)
    for a, b in bands:
        mask |= ((lo >= a - 1e-9) & (hi <= b + 1e-9)) if inside else ((hi > a) & (lo < b))
    return mask


def _to_frame(raw: float, raw_n: int, n: int) -> float:
    return (raw + 0.5) * n / raw_n - 0.5


def _as_batch(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (N, H, W, 3) or (H, W, 3), got {frames.shape}")
    return frames


def _styles_for(frames: np.ndarray, game: str, style: str | Style | list[str] | None) -> list[Style]:
    """Each frame's style: detected (None), one for all, or one per frame (a list, e.g. detected once
    by the caller for several finders)."""
    if style is None:
        return [get_style(s) for s in detect_style(frames, game)]
    if isinstance(style, list):
        if len(style) != len(frames):
            raise ValueError(f"{len(style)} styles for {len(frames)} frames")
        return [get_style(s) for s in style]
    return [get_style(style)] * len(frames)


def _batch_style(style, i: int):
    """The `style` argument of frames[i : i + _BATCH]."""
    return style[i : i + _BATCH] if isinstance(style, list) else style


def _box_sum3(x: np.ndarray) -> np.ndarray:
    """Sum over each pixel's 3x3 neighbourhood, (N, H, W) -> (N, H, W)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]
    return sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3))


# ----------------------------------------------------------------------------------------------
# Finders
# ----------------------------------------------------------------------------------------------


_BATCH = 256  # frames processed at once
_MAX_BLEND_DISTANCE = 12.0  # colour units (0..255 RGB): farther than this from every blend is a mix of 3 colours


def find_balls(frames: np.ndarray, game: str, style: str | Style | list[str] | None = None) -> np.ndarray:
    """Ball centres (N, 2) float32 as (row, col) in frame pixels; NaN where there is no ball. `style`:
    one for all frames, one per frame (a list), or None (detected per frame)."""
    frames = _as_batch(frames)
    if len(frames) > _BATCH:
        return np.concatenate([find_balls(frames[i : i + _BATCH], game, _batch_style(style, i)) for i in range(0, len(frames), _BATCH)])
    objects = get_game(game)
    n, h, w, _ = frames.shape
    out = np.full((n, 2), np.nan, dtype=np.float32)
    rows = _band_mask(h, RAW_HEIGHT, objects.ball_rows) & ~_band_mask(h, RAW_HEIGHT, objects.ball_excluded_rows)
    cols = _band_mask(w, RAW_WIDTH, (objects.ball_cols,))
    region = np.outer(rows, cols)
    # rows only partly inside the playfield also show a wall or brick beside it
    border = rows & ~_band_mask(h, RAW_HEIGHT, objects.ball_rows, inside=True)
    mass = objects.ball_size[0] * objects.ball_size[1] * (h / RAW_HEIGHT) * (w / RAW_WIDTH)  # ball area in pixels
    styles = _styles_for(frames, game, style)
    for s in dict.fromkeys(styles):
        idx = np.array([i for i, t in enumerate(styles) if t == s])
        labels, alpha, distance = _unmix(frames[idx], objects, s)
        # label 0 is the ball's colour; a pixel no two-colour blend explains (a paddle against a wall
        # in a border row) is not evidence
        evidence = np.where((labels == 0) & (distance <= _MAX_BLEND_DISTANCE) & region, alpha, 0.0)
        # in a border row, ball colour next to another object is that object against the wall
        other = _box_sum3(((labels > 0) & (alpha >= 0.25)).astype(np.float32)) > 0
        evidence[:, border] *= ~other[:, border]
        evidence[:, rows] -= np.median(evidence[:, rows][:, :, cols], axis=2, keepdims=True)
        evidence = np.clip(evidence, 0.0, None) * region
        window = _box_sum3(evidence)
        flat = window.reshape(len(idx), -1).argmax(1)
        for k, (i, f) in enumerate(zip(idx, flat)):
            y, x = divmod(int(f), w)
            if window[k, y, x] < max(mass / 3.0, 0.1):
                continue
            y0, x0 = max(y - 1, 0), max(x - 1, 0)
            patch = evidence[k, y0 : y + 2, x0 : x + 2]
            yy, xx = np.mgrid[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]]
            out[i] = ((patch * yy).sum() / patch.sum(), (patch * xx).sum() / patch.sum())
    return out


def find_paddles(frames: np.ndarray, game: str, style: str | Style | list[str] | None = None,
                 min_fraction: float = 1 / 3) -> np.ndarray:
    """The player's paddle centre (N, 2) float32 as (row, col) in frame pixels; NaN where less than
    `min_fraction` of a paddle is visible (Pong's paddle slides under the walls: the centre is then
    that of its visible part). `style` as in `find_balls`."""
    frames = _as_batch(frames)
    if len(frames) > _BATCH:
        return np.concatenate([find_paddles(frames[i : i + _BATCH], game, _batch_style(style, i), min_fraction)
                               for i in range(0, len(frames), _BATCH)])
    objects = get_game(game)
    n, h, w, _ = frames.shape
    out = np.full((n, 2), np.nan, dtype=np.float32)
    region = np.outer(_band_mask(h, RAW_HEIGHT, (objects.paddle_rows,)), _band_mask(w, RAW_WIDTH, (objects.paddle_cols,)))
    mass = objects.paddle_size[0] * objects.paddle_size[1] * (h / RAW_HEIGHT) * (w / RAW_WIDTH)
    label = objects.palette.index(objects.paddle)
    yy, xx = np.mgrid[0:h, 0:w]
    styles = _styles_for(frames, game, style)
    for s in dict.fromkeys(styles):
        idx = np.array([i for i, t in enumerate(styles) if t == s])
        labels, alpha, _ = _unmix(frames[idx], objects, s)
        evidence = np.where((labels == label) & region, alpha, 0.0)
        total = evidence.sum(axis=(1, 2))
        found = total >= mass * min_fraction
        safe = np.maximum(total, 1e-9)
        centres = np.stack([(evidence * yy).sum(axis=(1, 2)) / safe, (evidence * xx).sum(axis=(1, 2)) / safe], 1)
        out[idx[found]] = centres[found]
    return out


def count_objects(frames: np.ndarray, game: str, style: str | Style | None = None, min_alpha: float = 0.3) -> dict[str, np.ndarray]:
    """How many of each object a frame shows, (N,) int arrays keyed by palette colour name: "ball",
    "paddle" (the player's) and "other_<k>" (the other colours: Pong's opponent paddle; Breakout's bricks).

    A frame of the real game shows one player paddle, one opponent paddle and at most one ball; a world
    that doubles a paddle, leaves fragments, or scatters balls shows more. Objects are the 8-connected
    blobs of pixels labelled with the colour (covered >= `min_alpha`) inside the playfield rows, whose
    summed coverage reaches a third of the ball's area or an eighth of a paddle's (a paddle can slide
    under Pong's walls), so a stray dim pixel is not an object. The ball's colour is searched in the ball's rows only (Pong's walls share it).
    """
    from scipy import ndimage

    frames = _as_batch(frames)
    objects = get_game(game)
    n, h, w, _ = frames.shape
    scale = (h / RAW_HEIGHT) * (w / RAW_WIDTH)
    # rows wholly inside the ball's bands (a border row blends the ball's colour with a wall's)
    ball_rows = _band_mask(h, RAW_HEIGHT, objects.ball_rows, inside=True) & ~_band_mask(h, RAW_HEIGHT, objects.ball_excluded_rows)
    field_rows = _band_mask(h, RAW_HEIGHT, (objects.paddle_rows,) + objects.ball_rows)
    # a ball counts from a third of its area; a paddle from an eighth (it slides under Pong's walls)
    thresholds = {0: objects.ball_size[0] * objects.ball_size[1] * scale / 3.0}
    names = ["ball", "paddle"] + [f"other_{k}" for k in range(len(objects.palette) - 2)]
    counts = {name: np.zeros(n, dtype=np.int64) for name in names}
    structure = np.ones((3, 3), dtype=bool)
    styles = _styles_for(frames, game, style)
    for s in dict.fromkeys(styles):
        idx = np.array([i for i, t in enumerate(styles) if t == s])
        labels, alpha, distance = _unmix(frames[idx], objects, s)
        for k, name in enumerate(names):
            rows = ball_rows if k == 0 else field_rows
            threshold = thresholds.get(k, objects.paddle_size[0] * objects.paddle_size[1] * scale / 8.0)
            covered = (labels == k) & (alpha >= min_alpha) & (distance <= _MAX_BLEND_DISTANCE) & rows[None, :, None]
            for j, i in enumerate(idx):
                blobs, found = ndimage.label(covered[j], structure=structure)
                if found:
                    sums = ndimage.sum(alpha[j], blobs, index=np.arange(1, found + 1))
                    counts[name][i] = int((np.asarray(sums) >= threshold).sum())
    return counts


def wall_mask(size: tuple[int, int], game: str) -> np.ndarray:
    """The pixels of a frame of `size` (height, width) wholly inside the game's wall of bricks, (H, W) bool
    (a border row also shows what passes beside the wall: the ball)."""
    objects = get_game(game)
    if objects.wall_rows is None or objects.wall_cols is None:
        raise ValueError(f"{game} has no wall of bricks; walls are defined for {[g for g, o in GAMES.items() if o.wall_rows]}")
    h, w = size
    return np.outer(_band_mask(h, RAW_HEIGHT, (objects.wall_rows,), inside=True),
                    _band_mask(w, RAW_WIDTH, (objects.wall_cols,), inside=True))


def find_ball(frame: np.ndarray, game: str, style: str | Style | None = None) -> tuple[float, float] | None:
    """The ball's (row, col) in one frame (H, W, 3), or None."""
    y, x = find_balls(frame[None], game, style)[0]
    return None if math.isnan(y) else (float(y), float(x))


def find_paddle(frame: np.ndarray, game: str, style: str | Style | None = None) -> tuple[float, float] | None:
    """The player's paddle (row, col) in one frame (H, W, 3), or None."""
    y, x = find_paddles(frame[None], game, style)[0]
    return None if math.isnan(y) else (float(y), float(x))


def paddle_motion(frames: np.ndarray, game: str, style: str | Style | None = None, still: float = 0.25) -> np.ndarray:
    """Direction the paddle moved between consecutive frames along its axis, (N - 1,) float32:
    +1 down (Pong) / right (Breakout), -1 up / left, 0 within `still` pixels, NaN if not seen in both."""
    axis = get_game(game).paddle_axis
    position = find_paddles(frames, game, style)[:, axis]
    delta = np.diff(position)
    return np.where(np.isnan(delta), np.nan, np.where(np.abs(delta) < still, 0.0, np.sign(delta))).astype(np.float32)


def ball_recall(reference: np.ndarray, candidate: np.ndarray, game: str, style: str | Style | None = None, radius: float = 1.5) -> float:
    """Of the frames where `reference` shows a ball, the fraction where `candidate` shows it within
    `radius` pixels (e.g. originals vs autoencoder reconstructions). NaN if no reference ball."""
    ref, cand = find_balls(reference, game, style), find_balls(candidate, game, style)
    seen = ~np.isnan(ref[:, 0])
    if not seen.any():
        return float("nan")
    distance = np.linalg.norm(ref[seen] - cand[seen], axis=1)
    return float(np.mean(np.nan_to_num(distance, nan=np.inf) <= radius))


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()))


def point_events(frames: np.ndarray, game: str, style: str | Style | None = None, hold: int = 3) -> tuple[list[int], list[int]]:
    """Pong's points and score changes in one continuous sequence of frames (N, H, W, 3).

    A point: the ball, last seen beyond a paddle (GameObjects.goal_cols), is gone for the next `hold`
    frames; its frame index is the first frame without it. A score change: the score rows change
    (at least 3 pixels by more than 32 levels) in one or two consecutive frames between two stretches
    of `hold` frames where they hold still; its index is the first changed frame. Changes where the
    style changes are not counted. In the real game each point changes the score within a frame.
    """
    objects = get_game(game)
    if objects.score_rows is None or objects.goal_cols is None:
        raise ValueError(f"{game}: no score rows or goal columns: points are defined for {[g for g, o in GAMES.items() if o.goal_cols]}")
    frames = _as_batch(frames)
    n, h, w, _ = frames.shape
    styles = [s.name for s in _styles_for(frames, game, style)]  # detected once, for the ball finder too
    band = frames[:, _band_mask(h, RAW_HEIGHT, (objects.score_rows,), inside=True)].astype(np.int16)
    changed = np.zeros(n, dtype=bool)  # changed[t]: frame t's score rows differ from frame t - 1's
    changed[1:] = (np.abs(np.diff(band, axis=0)).max(-1) > 32).sum(axis=(1, 2)) >= 3
    changes = [a for a, b in _runs(changed)
               if b - a <= 2 and a - hold >= 1 and b + hold <= n
               and not changed[a - hold : a].any() and not changed[b : b + hold].any()
               and len(set(styles[a - 1 : b + 1])) == 1]
    balls = find_balls(frames, game, styles)
    present = ~np.isnan(balls[:, 1])
    col = (balls[:, 1] + 0.5) * RAW_WIDTH / w - 0.5  # raw columns
    lo, hi = objects.goal_cols
    points = [t for t in range(1, n - hold + 1)
              if present[t - 1] and not present[t : t + hold].any() and (col[t - 1] < lo or col[t - 1] > hi)]
    return points, changes


def point_scores(sequences, game: str, style: str | Style | None = None, window: int = 3) -> dict:
    """Whether the score changes when, and only when, the ball passes a paddle, pooled over continuous
    sequences of frames (point_events on each): `points_scored`, the share of points with a score
    change within `window` frames; `changes_on_points`, the share of score changes with a point
    within `window` frames (NaN where there is no event to judge). The real game: 1 and 1."""
    points = changes = scored = explained = 0
    for frames in sequences:
        p, c = point_events(frames, game, style)
        points, changes = points + len(p), changes + len(c)
        scored += sum(any(abs(a - b) <= window for b in c) for a in p)
        explained += sum(any(abs(a - b) <= window for b in p) for a in c)
    return {"points": points, "score_changes": changes,
            "points_scored": scored / points if points else float("nan"),
            "changes_on_points": explained / changes if changes else float("nan")}


def raw_to_frame(point: tuple[float, float], size: tuple[int, int]) -> tuple[float, float]:
    """A raw 210x160 Atari (row, col) in the coordinates of a frame of `size` (height, width)."""
    return _to_frame(point[0], RAW_HEIGHT, size[0]), _to_frame(point[1], RAW_WIDTH, size[1])
