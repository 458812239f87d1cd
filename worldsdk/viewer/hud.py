"""What the viewer measures and draws over the frames: the HUD, the help overlay and the prompt box.

Measured (perf_counter seconds throughout):
- display frames/s: new world frames shown per second over the last second (stall repeats not counted);
- generation frames/s: frames one step makes divided by its latency, i.e. what generation could sustain;
- step latency: from submitting a step to its frames being back;
- input-to-frame latency: from a key or mouse event to the first shown frame of the first chunk
  generated with an action sampled after it;
- stalls: display ticks that found no new frame while playing (generation not keeping up).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

WINDOW_S = 1.0  # rate meters average over this window
TEXT = (235, 235, 235)
WARN = (255, 90, 70)
OK = (120, 220, 120)
PANEL = (0, 0, 0, 150)
HELP_PANEL = (0, 0, 0, 225)


class RateMeter:
    """Events per second over the last WINDOW_S seconds."""

    def __init__(self, window: float = WINDOW_S):
        self.window = window
        self._events: deque[tuple[float, int]] = deque()

    def add(self, t: float, n: int = 1) -> None:
        self._events.append((t, n))

    def rate(self, now: float) -> float:
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()
        return sum(n for _, n in self._events) / self.window


@dataclass
class ViewerStats:
    """Counters and latencies of one viewer run; `summary()` is what the benchmark reports."""

    display: RateMeter = field(default_factory=RateMeter)
    stall_meter: RateMeter = field(default_factory=RateMeter)
    frames_shown: int = 0
    stalls: int = 0
    step_latencies: list[float] = field(default_factory=list)
    input_latencies: list[float] = field(default_factory=list)
    chunk_frames: int = 0
    started: float | None = None
    ended: float | None = None

    def shown(self, t: float) -> None:
        self.display.add(t)
        self.frames_shown += 1
        if self.started is None:
            self.started = t
        self.ended = t

    def stalled(self, t: float) -> None:
        self.stalls += 1
        self.stall_meter.add(t)

    def stepped(self, latency: float, chunk_frames: int) -> None:
        self.step_latencies.append(latency)
        self.chunk_frames = chunk_frames

    @property
    def generation_fps(self) -> float:
        """Frames per second generation sustains, from the mean of the last 8 step latencies."""
        recent = self.step_latencies[-8:]
        return self.chunk_frames / float(np.mean(recent)) if recent else 0.0

    def summary(self) -> dict:
        span = (self.ended - self.started) if self.started is not None and self.ended > self.started else 0.0
        steps = np.asarray(self.step_latencies or [np.nan])
        inputs = np.asarray(self.input_latencies or [np.nan])
        return {
            "display_fps": (self.frames_shown - 1) / span if span else 0.0,
            "generation_fps": self.generation_fps,
            "step_latency_ms_mean": 1000 * float(np.mean(steps)),
            "input_latency_ms_mean": 1000 * float(np.mean(inputs)),
            "input_latency_ms_p50": 1000 * float(np.median(inputs)),
            "input_latency_ms_p95": 1000 * float(np.percentile(inputs, 95)),
            "input_events_measured": len(self.input_latencies),
            "frames_shown": self.frames_shown,
            "stalls": self.stalls,
        }


def font(size: int):
    import pygame

    if not pygame.font.get_init():
        pygame.font.init()
    return pygame.font.Font(None, size)


def font_size(surface) -> int:
    """Text height for a window: readable at 256 px, not huge at 1024 px."""
    return int(np.clip(surface.get_height() // 22, 14, 24))


def _panel(surface, rect) -> None:
    import pygame

    shade = pygame.Surface(rect.size, pygame.SRCALPHA)
    shade.fill(PANEL)
    surface.blit(shade, rect.topleft)


def _fit(f, text: str, width: int) -> str:
    """Cut `text` with an ellipsis so it renders within `width` pixels."""
    if f.size(text)[0] <= width:
        return text
    while text and f.size(text + "...")[0] > width:
        text = text[:-1]
    return text + "..."


def draw_lines(surface, lines: list[tuple[str, tuple]], top_left=(4, 4), width: int | None = None) -> None:
    """Coloured text lines on a translucent panel."""
    import pygame

    f = font(font_size(surface))
    width = width or surface.get_width() - 2 * top_left[0]
    rendered = [f.render(_fit(f, text, width - 8), True, colour) for text, colour in lines]
    height = sum(r.get_height() for r in rendered) + 6
    panel_width = max((r.get_width() for r in rendered), default=0) + 8
    _panel(surface, pygame.Rect(top_left, (panel_width, height)))
    y = top_left[1] + 3
    for r in rendered:
        surface.blit(r, (top_left[0] + 4, y))
        y += r.get_height()


def hud_lines(stats: ViewerStats, now: float, fps: float, prompt: str, action: str,
              paused: bool, recording: bool, replay: str | None) -> list[tuple[str, tuple]]:
    """The HUD's lines: rates, latencies, prompt, action, and the state flags."""
    display = stats.display.rate(now)
    gen = stats.generation_fps
    behind = stats.stall_meter.rate(now) > 0
    step_ms = f"{1000 * stats.step_latencies[-1]:4.0f}" if stats.step_latencies else "   -"
    input_ms = f"{1000 * stats.input_latencies[-1]:4.0f}" if stats.input_latencies else "   -"
    lines = [
        (f"display {display:4.1f} / {fps:g} fps", WARN if behind else TEXT),
        (f"generation {gen:5.1f} fps   step {step_ms} ms", WARN if gen and gen < fps else OK),
        (f"input->frame {input_ms} ms", TEXT),
        (f"prompt: {prompt}", TEXT),
        (f"action: {action}", TEXT),
    ]
    flags = [s for s, on in (("PAUSED", paused), ("REC", recording), (f"REPLAY {replay}" if replay else "", bool(replay))) if on]
    if behind:
        flags.append("GENERATION BEHIND")
    if flags:
        lines.append(("  ".join(flags), WARN))
    return lines


def draw_help(surface, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
    """A near-opaque overlay listing keys in two columns: [(section title, [(key, what it does)])]."""
    import pygame

    f = font(font_size(surface))
    line_h = f.get_linesize()
    key_w = max((f.size(key)[0] for _, rows in sections for key, _ in rows), default=0)
    margin, gap = 8, 12
    text_w = surface.get_width() - 2 * margin - key_w - gap - 16
    height = line_h * sum(1 + len(rows) for _, rows in sections) + 8
    shade = pygame.Surface((surface.get_width() - 2 * margin, min(height, surface.get_height() - 2 * margin)), pygame.SRCALPHA)
    shade.fill(HELP_PANEL)
    surface.blit(shade, (margin, margin))
    y = margin + 4
    for title, rows in sections:
        surface.blit(f.render(title, True, OK), (margin + 6, y))
        y += line_h
        for key, what in rows:
            surface.blit(f.render(key, True, TEXT), (margin + 14, y))
            surface.blit(f.render(_fit(f, what, text_w), True, TEXT), (margin + 14 + key_w + gap, y))
            y += line_h


def draw_textbox(surface, text: str, blink_on: bool) -> None:
    """The prompt box along the bottom edge; a long prompt shows its end, where the cursor is."""
    f = font(font_size(surface))
    line = text + ("_" if blink_on else " ")
    while len(line) > 1 and f.size("prompt> ..." + line)[0] > surface.get_width() - 16:
        line = line[1:]
    line = "prompt> " + ("..." if len(line) < len(text) + 1 else "") + line
    h = f.get_height() + 6
    draw_lines(surface, [(line, TEXT)], top_left=(4, surface.get_height() - h - 4), width=surface.get_width() - 8)
