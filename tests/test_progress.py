"""steps/progress.py: one complete line at most every N seconds (deterministic with an injected clock), the
closing line, ETA, and the Hub progress bars printed as lines in a pipe."""

from __future__ import annotations

import io

from steps.progress import Progress, format_seconds, hub_progress_class, stage


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_at_most_every_interval_with_eta_and_a_closing_line():
    clock, lines = ManualClock(), []
    progress = Progress("offline eval", 10, unit="frames", every_s=10, clock=clock, log=lines.append)
    for _ in range(10):  # each batch of one frame takes 4 s
        clock.now += 4
        progress.advance(1)
    # Lines when 10 s passed since the last one: at 12 s (3 done), 24 s (6), 36 s (9).
    assert len(lines) == 3
    assert lines[0] == "offline eval: 3/10 frames (30%) · 00:00:12 elapsed · ETA 00:00:28"
    assert lines[1].startswith("offline eval: 6/10 frames (60%) · 00:00:24 elapsed · ETA 00:00:16")
    progress.finish("2 held-out episodes")
    assert lines[-1] == "offline eval: 10/10 frames (100%) · 00:00:40 elapsed · 2 held-out episodes"


def test_every_call_with_zero_interval_and_no_total():
    clock, lines = ManualClock(), []
    progress = Progress("export", every_s=0, clock=clock, log=lines.append)
    progress.advance(1.5, "weights")
    clock.now = 3725
    progress.advance(2)
    assert lines == ["export: 1.5 · 00:00:00 elapsed · weights", "export: 3.5 · 01:02:05 elapsed"]
    assert format_seconds(59.6) == "00:01:00" and format_seconds(-1) == "00:00:00"


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_hub_bars_become_lines_in_a_pipe(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    out = Pipe()
    bar_class = hub_progress_class(0.0, stream=out)
    # What huggingface_hub does with it: a bar per download, updated as bytes arrive, closed at the end.
    with bar_class(total=300, desc="Downloading", unit="B", unit_scale=True, name="huggingface_hub.x") as bar:
        for _ in range(3):
            bar.update(100)
    lines = out.getvalue().split("\n")
    assert lines[-1] == ""  # every write is a complete line, no carriage-return redraws
    lines = lines[:-1]
    assert all("\r" not in line and line for line in lines)
    assert lines[0].startswith("Downloading:   0%") and lines[-1].startswith("Downloading: 100%")
    assert "300/300" in lines[-1]


def test_hub_bars_left_to_the_hub_in_a_terminal_or_when_turned_off(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert hub_progress_class(stream=Terminal()) is None  # the Hub's own bars show there
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    assert hub_progress_class(stream=Pipe()) is None  # the user asked for none


def test_stage_says_what_started_and_how_long_it_took():
    clock, lines = ManualClock(), []
    with stage("export", "writing the model of step 40 to /x", log=lines.append, clock=clock):
        clock.now = 75
    assert lines == ["export: writing the model of step 40 to /x", "export: done in 00:01:15"]
