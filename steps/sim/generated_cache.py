"""Where a simulator-generated dataset (``metaworld://``, ``libero://``, ``maniskill://``) lives in the cache,
and how it gets there exactly once.

A dataset is named by its spec: every parameter and the generator's version go into the folder name's digest,
so changing either generates anew and an unchanged spec is found again. Generation writes into a private
staging folder that is renamed into place, so a crash never leaves a half-written dataset under the key and
two processes asking at once do not clash (the second rename loses, and the finished winner is used).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path


def spec_cache_key(prefix: str, spec: Mapping, generator: int) -> str:
    """``<prefix>-<n>tasks-<e>ep-<r>px-<digest>``: readable, and determined by ``spec`` and ``generator``."""
    payload = json.dumps({**spec, "generator": generator}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return f"{prefix}-{len(spec['tasks'])}tasks-{spec['episodes']}ep-{spec['resolution']}px-{digest}"


def generate_once(cache: Path, key: str, done_file: str, generate: Callable[[Path], object], *,
                  label: str, log=print) -> Path:  # fmt: skip
    """``cache / key``, made by ``generate(folder)`` unless a finished one (holding ``done_file``) is there."""
    target = cache / key
    if (target / done_file).is_file():
        log(f"[{label}] cached: {target}")
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{key}-", dir=cache))
    try:
        generate(staging / "dataset")
        try:
            os.rename(staging / "dataset", target)
        except OSError:
            if not (target / done_file).is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
