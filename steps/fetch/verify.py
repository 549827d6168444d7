"""``fetch_data``'s proof that every data and video file of the dataset opens and is long enough
(``data_adapters.dataset_check``), before any model is built.

A file that passed is remembered under a key of its identity (``data_adapters.file_identity``: inode,
size, mtime_ns, ctime_ns, footer/tail digest) and of what was asked of it, in
``$VLA_SFT_CACHE/verified_files``: the next run over the same files checks nothing again, and any write
to a file makes it be checked anew.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from steps.cache import atomic_write_text, cache_dir_for, cache_key

CHECK_VERSION = 1  # bump when the checks change: every file is checked again


@dataclass(frozen=True)
class FilesChecked:
    data_files: int
    videos: int
    from_cache: int
    seconds: float

    def line(self) -> str:
        return (f"checked {self.data_files} data file(s) and {self.videos} video(s) "
                f"({self.from_cache} unchanged since a previous check) in {self.seconds:.1f} s")  # fmt: skip


def verify_dataset_files(
    meta, episodes: Iterable[int] | None = None, *, cache_dir: str | os.PathLike | None = None
) -> FilesChecked:
    """Check every file ``episodes`` (default: all) need; raise ``DatasetFormatError`` naming the first bad one."""
    from data_adapters.dataset_check import check_file, needs
    from data_adapters.file_identity import file_identity

    started = time.perf_counter()
    cache = cache_dir_for("verified_files", cache_dir)
    root = Path(meta.root)
    todo = needs(meta, meta.select(episodes))
    hits = 0
    for need in todo:
        path = root / need.path
        if not path.is_file():
            check_file(root, need, meta.fps)  # raises, naming the missing file
        identity = file_identity(path)  # taken before the check: a write during it changes the key
        key = cache_key({"version": CHECK_VERSION, "need": dataclasses.asdict(need), "fps": meta.fps,
                         "identity": identity})  # fmt: skip
        marker = cache / f"{key}.json"
        if marker.is_file():
            hits += 1
            continue
        found = check_file(root, need, meta.fps)
        atomic_write_text(marker, json.dumps({"path": str(path), **found}) + "\n")
    videos = sum(n.kind == "video" for n in todo)
    return FilesChecked(len(todo) - videos, videos, hits, time.perf_counter() - started)
