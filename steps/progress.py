"""Progress lines for work that takes more than a few seconds: evaluation, statistics, downloads, export.

Every report is one complete line (``label: 12/32 frames (38%) · 00:00:21 elapsed · ETA 00:00:35``). A
Metaflow task's output is a pipe, not a terminal: a carriage-return progress bar shows nothing there until
it finishes, so this module never redraws a line, it prints a new one at most every ``every_s`` seconds.

- ``Progress``: counts work done against an optional total; ``advance`` prints when ``every_s`` seconds
  passed since the last line (``every_s=0``: every call), ``finish`` prints the closing line. The clock is
  a parameter, so tests are deterministic.
- ``stage``: a line when one long piece of work without a count starts (writing the export) and one when
  it ends, with its duration.
- ``hub_progress_class``: a ``tqdm`` class for ``huggingface_hub.snapshot_download`` that prints the Hub's
  own progress bars as such lines (in a pipe the Hub turns its bars off, since it sees no terminal).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable

DEFAULT_EVERY_S = 10.0


def format_seconds(seconds: float) -> str:
    """``HH:MM:SS`` (the trainer's ETA format)."""
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _print(line: str) -> None:
    print(line, flush=True)


class Progress:
    """Line-per-interval progress of one piece of work (see the module docstring)."""

    def __init__(
        self,
        label: str,
        total: int | float | None = None,
        *,
        unit: str = "",
        every_s: float = DEFAULT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = _print,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.every_s, self.clock, self.log = every_s, clock, log
        self.done: float = 0
        self.started = self.last = clock()
        self.lines: list[str] = []

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def line(self, note: str | None = None) -> str:
        elapsed = self.elapsed
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            count = f"{_num(self.done)}/{_num(self.total)}{unit} ({100 * self.done / self.total:.0f}%)"
        else:
            count = f"{_num(self.done)}{unit}"
        parts = [f"{self.label}: {count}", f"{format_seconds(elapsed)} elapsed"]
        if self.total and 0 < self.done < self.total:
            parts.append(f"ETA {format_seconds(elapsed * (self.total - self.done) / self.done)}")
        if note:
            parts.append(note)
        return " · ".join(parts)

    def emit(self, note: str | None = None) -> str:
        text = self.line(note)
        self.last = self.clock()
        self.lines.append(text)
        if self.log is not None:
            self.log(text)
        return text

    def advance(self, n: int | float = 1, note: str | None = None) -> str | None:
        """Count ``n`` more done; print a line when ``every_s`` seconds passed since the last one."""
        self.done += n
        if self.clock() - self.last >= self.every_s:
            return self.emit(note)
        return None

    def finish(self, note: str | None = None) -> str:
        """The closing line (always printed)."""
        return self.emit(note)


def _num(value: int | float) -> str:
    return f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"


@contextlib.contextmanager
def stage(label: str, what: str, *, log: Callable[[str], None] | None = _print,
          clock: Callable[[], float] = time.monotonic):  # fmt: skip
    """One line when a single long piece of work starts (``label: what``), one when it ends, with its time."""
    started = clock()
    if log is not None:
        log(f"{label}: {what}")
    yield
    if log is not None:
        log(f"{label}: done in {format_seconds(clock() - started)}")


def hub_progress_class(every_s: float = DEFAULT_EVERY_S, *, stream=None):
    """A tqdm class for ``snapshot_download(tqdm_class=...)`` that prints a line every ``every_s`` seconds,
    or None where the Hub's own bars already show (a terminal) or the user turned them off
    (``HF_HUB_DISABLE_PROGRESS_BARS``)."""
    stream = stream if stream is not None else sys.stderr
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    if hasattr(stream, "isatty") and stream.isatty():
        return None
    # Plain tqdm, not huggingface_hub's subclass: for the latter the Hub decides ``disable`` (off in a pipe).
    from tqdm.std import tqdm

    class LineTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = False
            kwargs["mininterval"] = every_s
            kwargs["file"] = _LinesOnly(kwargs.get("file") or stream)
            super().__init__(*args, **kwargs)

        def display(self, msg=None, pos=None):
            text = msg if msg is not None else str(self)
            if text:
                self.fp.write_line(text)
            return True

    return LineTqdm


class _LinesOnly:
    """A stream for tqdm that takes whole lines only: tqdm's own bare "\r" / "\n" redraw writes are dropped."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        if text.strip():
            self.write_line(text.strip("\r\n"))

    def write_line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.flush()

    def flush(self) -> None:
        if hasattr(self.stream, "flush"):
            self.stream.flush()
