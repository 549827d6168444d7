"""A small content-addressed cache for step results (JSON files), written atomically.

A result is stored under a key derived from everything it depends on (:func:`cache_key`); a reader
either finds the complete file or nothing, never a half-written one (:func:`atomic_write_text`
writes a temporary file in the same folder, then renames it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data_adapters.cache_root import default_cache_root


def cache_dir_for(kind: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` when given, else ``default_cache_root() / kind``."""
    return Path(cache_dir) if cache_dir is not None else default_cache_root() / kind


def cache_key(payload: Mapping[str, Any]) -> str:
    """Stable 24-hex-digit hash of a JSON-able mapping (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a file atomically (temporary file next to ``dst``, then rename)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
