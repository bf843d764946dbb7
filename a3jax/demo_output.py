"""What the demos print: the time since the start on every message, and a held-out line with its
masked span shown as [...] or as a fill."""

from __future__ import annotations

import time


def minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Clock:
    """The demo's messages, each with the time since the start."""

    def __init__(self):
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def say(self, message: str) -> None:
        print(f"[a3jax {minutes(self.elapsed())}] {message}", flush=True)


def snippet_line(tokenizer, window, start, stop, fill: str | None = None) -> str:
    """The line(s) holding the span, with the span shown as [...] or as the fill."""
    text_before = tokenizer.decode(window[:start])
    text_after = tokenizer.decode(window[stop:])
    head = text_before[text_before.rfind("\n", 0, max(len(text_before) - 1, 0)) + 1:]
    tail = text_after.split("\n", 1)[0]
    middle = "[...]" if fill is None else f"[{fill}]"
    return (head + middle + tail).replace("\n", "\\n ")
