"""Where the LeRobot reference venvs' pythons are.

Each LeRobot release pins its own torch (0.4.4: torch 2.10 on Python 3.11; 0.6.1: torch 2.11 on
Python >= 3.12), so each lives in its own venv under ``~/.cache/vla-sft`` (built by ``.ci/run``).
"""

from __future__ import annotations

import os
from pathlib import Path

# LeRobot release -> (environment variable naming its venv, default venv folder under ~/.cache/vla-sft)
LEROBOT_VENVS = {
    "0.4.4": ("VLA_SFT_LEROBOT_VENV", "lerobot-venv"),
    "0.6.1": ("VLA_SFT_LEROBOT061_VENV", "lerobot061-venv"),
}


def lerobot_python(override: str | None = None, version: str = "0.4.4") -> str:
    """``override``, else the python of LeRobot ``version``'s venv (its environment variable, else the cache's)."""
    if override:
        return override
    if version not in LEROBOT_VENVS:
        raise ValueError(
            f"LeRobot version {version!r}: no reference venv known (have {', '.join(LEROBOT_VENVS)})"
        )
    variable, folder = LEROBOT_VENVS[version]
    venv = Path(os.environ.get(variable, Path.home() / ".cache/vla-sft" / folder))
    return str(venv / "bin/python")
