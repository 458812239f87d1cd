"""The generation thread: runs a session's reset / set_prompt / step calls in order, off the display thread.

The display thread submits commands and polls for finished chunks; it keeps at most one step in
flight, so the worker never runs ahead of the player's input. A session is not thread-safe, so every
call to it happens on this one thread, in submission order: a prompt submitted while a step runs
applies from the next step on. After `reset` the results of commands submitted before it are dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Chunk:
    """A finished reset or step: its frames and when it was submitted and finished (perf_counter s)."""

    kind: str  # "reset" or "step"
    frames: np.ndarray  # (chunk, H, W, 3) uint8
    ticket: Any  # whatever the submitter attached
    submitted: float
    finished: float

    @property
    def latency(self) -> float:
        return self.finished - self.submitted


class WorkerError(RuntimeError):
    """The session raised on the generation thread; the original exception is the cause."""


class StepWorker:
    """One background thread that owns all calls to a session."""

    def __init__(self, session):
        self.session = session
        self._commands: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._epoch = 0  # bumped by reset; results of older epochs are dropped
        self._steps_in_flight = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="worldsdk-generation", daemon=True)
        self._thread.start()

    # -- display-thread side ---------------------------------------------------------------------------
    def reset(self, prompt: str | None, seed: int | None, ticket: Any = None) -> None:
        with self._lock:
            self._epoch += 1
            self._commands.put(("reset", (prompt, seed), ticket, self._epoch, time.perf_counter()))

    def set_prompt(self, text: str) -> None:
        self._commands.put(("set_prompt", (text,), None, self._epoch, time.perf_counter()))

    def step(self, action: Any, ticket: Any = None) -> None:
        with self._lock:
            self._steps_in_flight += 1
        self._commands.put(("step", (action,), ticket, self._epoch, time.perf_counter()))

    @property
    def busy(self) -> bool:
        """A step is queued or running."""
        return self._steps_in_flight > 0

    def poll(self, timeout: float | None = 0.0) -> list[Chunk]:
        """Finished chunks of the current episode, oldest first; waits up to `timeout` s for the first one."""
        out = []
        try:
            item = self._results.get(timeout=timeout) if timeout else self._results.get_nowait()
            while True:
                self._deliver(item, out)
                item = self._results.get_nowait()
        except queue.Empty:
            return out

    def close(self) -> None:
        self._commands.put(None)
        self._thread.join(timeout=30.0)
        if self._thread.is_alive():
            log.warning("the generation thread did not stop within 30 s")

    def _deliver(self, item, out: list) -> None:
        kind, result, ticket, epoch, submitted, finished = item
        if kind == "step":
            with self._lock:
                self._steps_in_flight -= 1
        if isinstance(result, BaseException):
            raise WorkerError(f"the world raised during {kind}: {result}") from result
        if epoch == self._epoch and kind != "set_prompt":
            out.append(Chunk(kind, result, ticket, submitted, finished))

    # -- generation-thread side ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            command = self._commands.get()
            if command is None:
                return
            kind, args, ticket, epoch, submitted = command
            stale = epoch != self._epoch  # submitted before a later reset: skip the work
            try:
                if kind == "set_prompt":
                    result = self.session.set_prompt(*args)
                elif stale:
                    result = None
                else:
                    fn = self.session.reset if kind == "reset" else self.session.step
                    result = fn(*args) if kind == "step" else fn(prompt=args[0], seed=args[1])
            except Exception as exc:  # handed to the display thread, which raises it there
                result = exc
            self._results.put((kind, result, ticket, epoch, submitted, time.perf_counter()))
