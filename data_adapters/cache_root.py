"""The one root folder of every vla-sft cache, here so that data_adapters can use it without steps."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_root() -> Path:
    """``$VLA_SFT_CACHE`` or ``~/.cache/vla-sft`` (the same root the flow uses)."""
    return Path(os.environ.get("VLA_SFT_CACHE") or Path.home() / ".cache" / "vla-sft")
