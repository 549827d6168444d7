"""LIBERO demonstrations written as a LeRobot dataset in the physical-intelligence/libero schema."""

from __future__ import annotations

import json
from pathlib import Path

META_FILE = "meta/libero.json"


def generated_tasks(root: str | Path) -> list[str] | None:
    """The tasks a dataset made by this module was rendered from (None for any other dataset)."""
    path = Path(root) / META_FILE
    if not path.is_file():
        return None
    return list(json.loads(path.read_text())["spec"]["tasks"])
