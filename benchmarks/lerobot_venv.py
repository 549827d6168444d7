"""Where the LeRobot reference venv's python is (LeRobot 0.4.4 needs its own torch, so its own venv)."""

from __future__ import annotations

import os
from pathlib import Path


def lerobot_python(override: str | None = None) -> str:
    """``override``, else ``$VLA_SFT_LEROBOT_VENV/bin/python``, else ``~/.cache/vla-sft/lerobot-venv``'s."""
    if override:
        return override
    venv = Path(os.environ.get("VLA_SFT_LEROBOT_VENV", Path.home() / ".cache/vla-sft/lerobot-venv"))
    return str(venv / "bin/python")
