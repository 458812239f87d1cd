"""The pygame game: shows a session's frames at the world's fps and turns keys and mouse into its actions.

Two threads. The generation thread (worker.py) runs reset / set_prompt / step on the session; this,
the display thread, polls input, shows one frame per 1/fps, and submits the next step just in time:
when the buffered frames will run out within LEAD_MARGIN recent step latencies. So the chunk on
screen plays out while the next one is generated, and the action is sampled as late as smooth play
allows (the lower the input-to-frame latency). At most one step is in flight; when generation is
slower than the display that means "submit as soon as the last step is back", the last frame stays
up while waiting, the tick counts as a stall and the HUD says so.

Keys a world binds are held/released into a set; a key pressed and released between two steps still
counts for the next step. Mouse motion accumulates between steps. `realtime=False` drops the
display clock (each tick shows the next frame, waiting for generation when none is ready): tests
and headless replays use it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsdk.viewer import hud
from worldsdk.viewer.keymap import Controls, KeyMap
from worldsdk.viewer.recording import Recorder, Recording, action_from_json, action_to_json, frames_digest
from worldsdk.viewer.textbox import TextBox
from worldsdk.viewer.worker import StepWorker

log = logging.getLogger(__name__)

POLL_S = 0.005  # input is polled at least this often between frames
TARGET_WINDOW_PX = 512  # the default scale makes the window's longer side about this size
LEAD_MARGIN = 1.3  # submit a step this many (recent, worst) step latencies before its frames are needed
LEAD_SLACK_S = 0.010  # plus this, for the poll interval and scheduling jitter
NOTICE_S = 2.5


def default_scale(height: int, width: int) -> int:
    return max(1, TARGET_WINDOW_PX // max(height, width))


@dataclass(frozen=True)
class GameConfig:
    scale: int = 0  # integer upscale of the frames; 0 picks one for a ~512 px window
    seed: int = 0  # seed of the first reset; each later reset uses the next integer
    prompt: str | None = None  # first prompt; None: the world's default prompt
    record_dir: str = "recordings"  # where recordings and screenshots go
    record: bool = False  # start recording at once
    realtime: bool = True
    max_steps: int | None = None  # stop after this many steps (headless runs)
    show_hud: bool = True
    mouse_range: float = 100.0  # pixels of motion per step that give a full mouse action
    final_screenshot: str | None = None  # save the window here when the run ends
    controls: Controls = field(default_factory=Controls)


@dataclass
class _Ticket:
    """What the display thread remembers about a submitted reset or step."""

    event: dict  # the episode-log event (its digest is filled in when the frames arrive)
    inputs: list[float]  # times of the input events first sampled into this action
    label: str  # the action as the HUD shows it
    expected: "_Expected | None" = None  # replay: what the recording says this chunk was


@dataclass(frozen=True)
class _Expected:
    index: int  # of the event in the recording
    digest: str | None


class Game:
    """Play one session. `run()` until quit, or drive it with `start()`, `tick()` and `close()`."""

    def __init__(self, session, config: GameConfig = GameConfig(), replay: Recording | None = None):
        self.session = session
        self.config = config
        self.spec = session.spec
        self.keymap = KeyMap.from_spec(self.spec, config.mouse_range, config.controls)
        self.control_keys = config.controls.codes()
        self.scale = config.scale or default_scale(self.spec.height, self.spec.width)
        self.fps = float(self.spec.fps)
        self.textbox = TextBox(self.spec.prompts)
        self.stats = hud.ViewerStats()
        self.replay = replay
        self.replay_pos = 0
        self.replay_checked = 0  # replayed chunks compared with the recording
        self.replay_mismatches: list[int] = []  # indices of replayed events whose frames differ
        self.screenshots: list[Path] = []
        self.recordings: list[Path] = []
        self.running = False
        # input since the last step
        self.held: set[int] = set()
        self.tapped: set[int] = set()
        self.pressed_at: dict[int, float] = {}  # key -> when last pressed: the latest of rival keys wins
        self.mouse = np.zeros(2)
        self.pending_inputs: list[float] = []
        self.mouse_captured = False
        # episode
        self.prompt = config.prompt if config.prompt is not None else self.spec.default_prompt
        self.next_seed = config.seed
        self.episode: list[dict] = []
        self.buffer: deque[tuple[np.ndarray, _Ticket, bool]] = deque()
        self.awaiting_reset = False
        self.steps_submitted = 0
        self.chunk_frames = 0
        # display
        self.paused = False
        self.frames_allowed = 0  # while paused: frames single-stepping may still show
        self.show_hud = config.show_hud
        self.show_help = False
        self.frame: np.ndarray | None = None
        self.shown_label = ""
        self.next_due = 0.0
        self.dirty = True
        self.notice: tuple[str, float] | None = None
        self.recorder: Recorder | None = None
        self.worker: StepWorker | None = None
        self.screen = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def run(self) -> hud.ViewerStats:
        self.start()
        try:
            while self.tick():
                pass
        finally:
            self.close()
        return self.stats

    def start(self) -> None:
        import pygame

        pygame.display.init()
        pygame.font.init()
        size = (self.spec.width * self.scale, self.spec.height * self.scale)
        self.screen = pygame.display.set_mode(size)
        pygame.display.set_caption(f"worldsdk - {self.spec.name}")
        pygame.key.stop_text_input()  # on only while the prompt box is open
        self.worker = StepWorker(self.session)
        if self.keymap.uses_mouse:
            self._capture_mouse(True)
        if self.replay is None:
            self._reset()
        if self.config.record:
            self._toggle_record()
        self.running = True
        self.next_due = time.perf_counter()

    def close(self) -> None:
        import pygame

        try:
            if self.config.final_screenshot and self.screen is not None:
                self.screenshot(self.config.final_screenshot)
        finally:
            if self.recorder is not None:
                self._toggle_record()
            if self.worker is not None:
                self.worker.close()
                self.worker = None
        if self.replay is not None:
            if self.replay_mismatches:
                log.warning("replay diverged: %d of %d chunks differ from the recording, the first at event %d",
                            len(self.replay_mismatches), self.replay_checked, self.replay_mismatches[0])
            else:
                log.info("replay matched the recording: %d chunks identical", self.replay_checked)
        pygame.display.quit()
        self.running = False

    def tick(self) -> bool:
        """One pass of the loop: input, finished chunks, maybe a new step, maybe a frame. False once over."""
        import pygame

        now = time.perf_counter()
        for event in pygame.event.get():
            self.handle_event(event, now)
        self._collect(self.worker.poll())
        self._advance(time.perf_counter())
        if self.config.realtime:
            now = time.perf_counter()
            if now >= self.next_due:
                self._present(now)
                self.next_due += 1.0 / self.fps
                if self.next_due <= now:  # fell behind (a slow tick): restart the clock, no burst
                    self.next_due = now + 1.0 / self.fps
        else:
            if not self.buffer and self._generating():
                self._collect(self.worker.poll(timeout=60.0))
            self._present(time.perf_counter())
        if self.dirty:
            self._draw(time.perf_counter())
        if self._finished():
            self.running = False
        if self.running and self.config.realtime:
            wait = min(POLL_S, self.next_due - time.perf_counter())
            if wait > 0:
                self._collect(self.worker.poll(timeout=wait))
        return self.running

    # -- input ----------------------------------------------------------------------------------------------
    def handle_event(self, event, now: float) -> None:
        import pygame

        if event.type == pygame.QUIT:
            self.running = False
        elif self.textbox.is_open:
            if event.type in (pygame.KEYDOWN, pygame.TEXTINPUT):
                sent = self.textbox.handle(event)
                if sent is not None:
                    self.set_prompt(sent)
                if not self.textbox.is_open:
                    pygame.key.stop_text_input()
                self.dirty = True
        elif event.type == pygame.KEYDOWN:
            control = self.control_keys.get(event.key)
            if control is not None:
                self._control(control)
            elif event.key in self.keymap.keys and self.replay is None:
                self.held.add(event.key)
                self.tapped.add(event.key)
                self.pressed_at[event.key] = now
                self.pending_inputs.append(now)
        elif event.type == pygame.KEYUP:
            self.held.discard(event.key)
        elif event.type == pygame.MOUSEMOTION and self.mouse_captured and self.replay is None:
            if not self.mouse.any():
                self.pending_inputs.append(now)
            self.mouse += event.rel
        elif event.type == pygame.MOUSEBUTTONDOWN and self.keymap.uses_mouse and not self.mouse_captured:
            self._capture_mouse(True)
        elif event.type == getattr(pygame, "WINDOWFOCUSLOST", -1):
            self.held.clear()  # no stuck keys after alt-tab

    def _control(self, name: str) -> None:
        import pygame

        self.dirty = True
        if name == "quit":
            self.running = False
        elif name == "help":
            self.show_help = not self.show_help
        elif name == "hud":
            self.show_hud = not self.show_hud
        elif name == "prompt" and self.replay is None:
            self.held.clear()
            self.textbox.suggestions = tuple(dict.fromkeys((self.prompt, *self.spec.prompts)))
            self.textbox.open()
            pygame.key.start_text_input()
        elif name == "reset" and self.replay is None:
            self._reset()
        elif name == "pause":
            self.paused, self.frames_allowed = not self.paused, 0
        elif name == "single_step" and self.paused:
            self.frames_allowed += max(self.chunk_frames, 1)
        elif name == "mouse_capture" and self.keymap.uses_mouse:
            self._capture_mouse(not self.mouse_captured)
        elif name == "record":
            self._toggle_record()
        elif name == "screenshot":
            self.screenshot()

    def _capture_mouse(self, on: bool) -> None:
        """Hide and grab the pointer so motion is relative and unbounded (SDL relative mouse mode)."""
        import pygame

        self.mouse_captured = on
        pygame.mouse.set_visible(not on)
        pygame.event.set_grab(on)

    def _sample_action(self) -> tuple[Any, list[float]]:
        keys = self.held | self.tapped
        action = self.keymap.action(keys, (float(self.mouse[0]), float(self.mouse[1])), self.pressed_at)
        inputs = self.pending_inputs
        self.tapped, self.mouse, self.pending_inputs = set(), np.zeros(2), []
        return action, inputs

    # -- talking to the world --------------------------------------------------------------------------------
    def set_prompt(self, text: str) -> None:
        """Send a new prompt; it applies from the next step on."""
        self.prompt = text
        self._log({"type": "prompt", "text": text})
        self.worker.set_prompt(text)
        self._notify(f"prompt: {text}")

    def _reset(self, prompt: str | None = None, seed: int | None = None, expected: _Expected | None = None) -> None:
        prompt = self.prompt if prompt is None else prompt
        if seed is None:
            seed, self.next_seed = self.next_seed, self.next_seed + 1
        self.prompt = prompt
        event = {"type": "reset", "prompt": prompt, "seed": int(seed)}
        self.episode = []
        self._log(event)
        self.buffer.clear()
        self.awaiting_reset = True
        self.worker.reset(prompt, seed, _Ticket(event, [], "reset", expected))

    def _log(self, event: dict) -> None:
        self.episode.append(event)
        if self.recorder is not None:
            self.recorder.add_event(event)

    def _generating(self) -> bool:
        return self.worker.busy or self.awaiting_reset

    def _advance(self, now: float) -> None:
        """Submit the next step when it is time to (see the module docstring)."""
        if self._generating():
            return
        if self.config.max_steps is not None and self.steps_submitted >= self.config.max_steps:
            return
        if self.paused:
            if len(self.buffer) >= self.frames_allowed:
                return
        elif self.config.realtime:
            recent = self.stats.step_latencies[-4:]
            lead = LEAD_MARGIN * max(recent) + LEAD_SLACK_S if recent else float("inf")
            needed_at = max(self.next_due, now) + len(self.buffer) / self.fps  # when the buffer runs dry
            if needed_at - now > lead:
                return
        elif self.buffer:
            return
        if self.replay is not None:
            self._advance_replay()
            return
        action, inputs = self._sample_action()
        event = {"type": "step", "action": action_to_json(action)}
        self._submit(action, _Ticket(event, inputs, self.keymap.label(action)))

    def _submit(self, action, ticket: _Ticket) -> None:
        self._log(ticket.event)
        self.steps_submitted += 1
        self.worker.step(action, ticket)

    def _advance_replay(self) -> None:
        """Send the recording's next calls up to and including its next step; a reset waits for the screen to empty."""
        events = self.replay.events
        while self.replay_pos < len(events):
            event = events[self.replay_pos]
            kind = event.get("type")
            if kind == "reset":
                if self.buffer:
                    return
                self.replay_pos += 1
                self._reset(event["prompt"], event["seed"], _Expected(self.replay_pos - 1, event.get("frames_sha256")))
                return
            self.replay_pos += 1
            if kind == "prompt":
                self.set_prompt(event["text"])
            elif kind == "step":
                action = action_from_json(self.spec.action, event["action"])
                ticket = _Ticket({"type": "step", "action": event["action"]}, [], self.keymap.label(action),
                                 _Expected(self.replay_pos - 1, event.get("frames_sha256")))
                self._submit(action, ticket)
                return
            else:
                raise ValueError(f"recording event {self.replay_pos - 1} has unknown type {kind!r}")

    def _collect(self, chunks) -> None:
        """Queue the frames of finished chunks for display."""
        for chunk in chunks:
            ticket: _Ticket = chunk.ticket
            digest = frames_digest(chunk.frames)
            ticket.event["frames_sha256"] = digest
            if ticket.expected is not None:
                self.replay_checked += 1
                if digest != ticket.expected.digest:
                    self.replay_mismatches.append(ticket.expected.index)
            if chunk.kind == "reset":
                self.awaiting_reset = False
            self.stats.stepped(chunk.latency, len(chunk.frames))
            self.chunk_frames = len(chunk.frames)
            for i, frame in enumerate(chunk.frames):
                self.buffer.append((frame, ticket, i == 0))

    def _finished(self) -> bool:
        if not self.running:
            return True
        idle = not self.buffer and not self._generating()
        if self.replay is not None:
            return idle and self.replay_pos >= len(self.replay.events)
        return idle and self.config.max_steps is not None and self.steps_submitted >= self.config.max_steps

    # -- display ----------------------------------------------------------------------------------------------
    def _present(self, now: float) -> None:
        """Show the next frame if one is due and ready; otherwise keep the last one (a stall if we wait on generation)."""
        self.dirty = True  # the HUD's numbers move even when the frame does not
        if self.paused and self.frames_allowed <= 0:
            return
        if not self.buffer:
            if self._generating() and self.frame is not None:
                self.stats.stalled(now)
            return
        frame, ticket, first = self.buffer.popleft()
        if self.paused:
            self.frames_allowed -= 1
        self.frame = frame
        self.shown_label = ticket.label
        if first:
            self.stats.input_latencies.extend(now - t for t in ticket.inputs)
        self.stats.shown(now)
        if self.recorder is not None:
            self.recorder.add_frame(frame, ticket.event)

    def _draw(self, now: float) -> None:
        import pygame

        self.dirty = False
        if self.frame is None:
            self.screen.fill((0, 0, 0))
        else:
            h, w = self.frame.shape[:2]
            image = pygame.image.frombuffer(np.ascontiguousarray(self.frame), (w, h), "RGB")
            self.screen.blit(pygame.transform.scale(image, self.screen.get_size()), (0, 0))  # nearest: crisp pixels
        if self.show_hud and not self.show_help:
            lines = hud.hud_lines(self.stats, now, self.fps, self.prompt, self.shown_label, self.paused,
                                  self.recorder is not None, self._replay_label())
            if self.frame is None:
                lines.append(("generating the first chunk...", hud.TEXT))
            hud.draw_lines(self.screen, lines)
        if self.show_help:
            hud.draw_help(self.screen, [("viewer", self.config.controls.help_lines()), ("world", self.keymap.help_lines())])
        if self.textbox.is_open:
            hud.draw_textbox(self.screen, self.textbox.text, blink_on=int(now * 2) % 2 == 0)
        elif self.notice is not None and self.show_hud:  # notices are HUD: hiding it gives a clean picture
            if now < self.notice[1]:
                hud.draw_lines(self.screen, [(self.notice[0], hud.OK)], top_left=(4, self.screen.get_height() - 30))
            else:
                self.notice = None
        pygame.display.flip()

    def _replay_label(self) -> str | None:
        if self.replay is None:
            return None
        steps = sum(1 for e in self.replay.events if e.get("type") == "step")
        done = sum(1 for e in self.replay.events[: self.replay_pos] if e.get("type") == "step")
        return f"{done}/{steps}" + (" DIVERGED" if self.replay_mismatches else "")

    def _notify(self, text: str) -> None:
        self.notice = (text, time.perf_counter() + NOTICE_S)
        self.dirty = True

    # -- files -------------------------------------------------------------------------------------------------
    def screenshot(self, path: str | Path | None = None) -> Path:
        """Save the window as shown (HUD and overlays included) as PNG."""
        import pygame

        if path is None:
            directory = Path(self.config.record_dir)
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{self.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{len(self.screenshots)}.png"
        self._draw(time.perf_counter())
        pygame.image.save(self.screen, str(path))
        self.screenshots.append(Path(path))
        log.info("screenshot saved to %s", path)
        self._notify(f"screenshot: {path}")
        return Path(path)

    def _toggle_record(self) -> None:
        if self.recorder is None:
            self.recorder = Recorder(self.config.record_dir, self.session.source, self.spec, self.episode, self.scale)
            self._notify(f"recording to {self.recorder.json_path}")
        else:
            path = self.recorder.close()
            self.recordings.append(path)
            self.recorder = None
            self._notify(f"saved {path}")
