"""Folder writes that a reader never sees half-done: write into a temporary sibling, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_dir_atomically(
    out_dir: str | os.PathLike, write: Callable[[Path], None], *, replace: bool = True
) -> Path:
    """Call ``write(staging)`` on a fresh sibling folder of ``out_dir``, then move it into place.

    An existing ``out_dir`` is replaced (moved aside first, removed after the rename), or with
    ``replace=False`` kept and the new copy dropped (content-addressed folders: another process that
    finished first wrote the same thing). On any error the staging folder is removed and ``out_dir``
    is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; exports and checkpoints are meant to be shared
    try:
        write(staging)
        if out_dir.exists() and not replace:
            shutil.rmtree(staging, ignore_errors=True)
        elif out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
