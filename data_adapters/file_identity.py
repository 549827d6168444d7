"""A cheap identity of a file on disk, for caches of results derived from it.

``file_identity`` is what a cache compares on reuse instead of reading the file again: device and inode
(the same file, not a copy or a replacement), size, modification and change times in nanoseconds, and a
digest of the file's tail (a parquet file's footer exactly: its schema, row groups and column statistics;
for other files the last 64 KiB, where an mp4 written without faststart keeps its index). Reading it
costs one ``stat`` and at most a few hundred KiB.

What changes it: any write to the file (the kernel updates mtime and ctime; ctime cannot be set back
from user space, unlike mtime with ``touch``), replacing it (new inode), copying or moving the dataset
(another path or inode), a re-export (new file), truncation. What does not: a change made while the
clock does not advance (file times have the kernel's tick resolution, a few ms) and then hidden by also
restoring the times, which only a raw write to the block device could do. A cache keyed by this treats
an unchanged copy as new, which costs a recomputation, never a wrong result.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

_TAIL_BYTES = 64 << 10
_MAX_FOOTER_BYTES = 64 << 20  # a footer larger than this is not read whole (the tail is hashed instead)
PARQUET_MAGIC = b"PAR1"


def file_identity(path: str | os.PathLike) -> dict:
    """``{"dev", "ino", "size", "mtime_ns", "ctime_ns", "tail"}`` of ``path`` (following symlinks)."""
    path = Path(path)
    st = path.stat()
    return {
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "tail": tail_digest(path, st.st_size),
    }


def tail_digest(path: Path, size: int) -> str:
    """sha256 of a parquet file's footer (metadata + length + magic), else of the last 64 KiB."""
    with open(path, "rb") as handle:
        count = min(size, _TAIL_BYTES)
        if size >= 12:
            handle.seek(size - 8)
            length_and_magic = handle.read(8)
            if length_and_magic[4:] == PARQUET_MAGIC:
                (footer,) = struct.unpack("<I", length_and_magic[:4])
                if footer + 8 <= min(size, _MAX_FOOTER_BYTES):
                    count = footer + 8
        handle.seek(size - count)
        return hashlib.sha256(handle.read(count)).hexdigest()
