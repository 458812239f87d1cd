"""The prompt box: a one-line text field the player types a new prompt into.

It only keeps state and reacts to pygame events; hud.py draws it. Characters come from TEXTINPUT
events (so keyboard layouts and dead keys work), editing keys from KEYDOWN. Up and Down walk through
the world's suggested prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_PROMPT_CHARS = 500


@dataclass
class TextBox:
    """Open: `open(text)`; feed events with `handle(event)`, which returns the text when Enter sends it."""

    suggestions: tuple[str, ...] = ()
    text: str = ""
    is_open: bool = False
    _choice: int = field(default=-1, repr=False)

    def open(self, text: str = "") -> None:
        self.text, self.is_open, self._choice = text, True, -1

    def close(self) -> None:
        self.is_open = False

    def handle(self, event) -> str | None:
        """Consume one event. Returns the prompt when Enter sends a non-blank one, else None."""
        import pygame

        if event.type == pygame.TEXTINPUT:
            self.text = (self.text + event.text)[:MAX_PROMPT_CHARS]
        elif event.type == pygame.KEYDOWN:
            if event.key in (pygame.K_RETURN, pygame.K_KP_ENTER):
                sent = self.text.strip()
                self.close()
                return sent or None
            if event.key == pygame.K_ESCAPE:
                self.close()
            elif event.key == pygame.K_BACKSPACE:
                self.text = self.text[:-1]
            elif event.key in (pygame.K_UP, pygame.K_DOWN) and self.suggestions:
                step = -1 if event.key == pygame.K_UP else 1
                self._choice = (self._choice + step) % len(self.suggestions)
                self.text = self.suggestions[self._choice]
        return None
