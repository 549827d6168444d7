"""Appending a benchmark's entry to its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def append_to_section(section: str, text: str, path: Path = RESULTS) -> None:
    """Add ``text`` at the end of the ``## {section}`` section (created at the end of the file if new)."""
    content = path.read_text() if path.exists() else "# Benchmark results\n"
    heading = f"\n## {section}\n"
    if heading not in content:
        content = content.rstrip("\n") + f"\n{heading}"
    start = content.index(heading) + len(heading)
    # The section ends at the next "## " heading, if any.
    nxt = content.find("\n## ", start)
    end = len(content) if nxt < 0 else nxt
    path.write_text(content[:end].rstrip("\n") + "\n" + text.rstrip("\n") + "\n" + content[end:])
