"""Memory-mapped cache of encoded images, for random access to image-dtype LeRobot cameras.

Image-dtype cameras are PNG bytes inside the data parquet files. Parquet cannot hand out one row: the
smallest readable unit is a row group (one whole episode in files LeRobot writes), so a shuffled loader
reading frames straight from parquet would read and decompress hundreds of images to use one. Instead we
copy the selected episodes' encoded image bytes once into an uncompressed Arrow IPC file and memory-map
it in every worker: a frame is then one slice of a mapped file, and only the current frame's PNG is
decoded.

Cost and memory: the cache takes about as much disk as the image columns themselves (PNG is already
compressed); LeRobot's own reader makes the same kind of copy through `datasets`. Nothing is loaded into
process memory: pages of the mapping are file-backed, shared by all workers and reclaimable by the OS, so
resident memory does not grow with the dataset. The cache file name is a hash of the dataset path, the
selected episodes and the data files' identities (``data_adapters.file_identity``: inode, size, mtime_ns,
ctime_ns, parquet footer digest), so any write to a data file gets a new one.

Each new split, dataset version or camera set adds a file, so the folder is kept under a size budget
(``$VLA_SFT_IMAGE_CACHE_GB``, default 100): building or reusing a cache marks it used, then the least
recently used other caches are deleted until the folder fits. A cache in use is never deleted: every
:class:`ImageColumnCache` holds a shared ``flock`` on its file for its lifetime (inherited by forked
loader workers), and eviction skips any file it cannot lock exclusively.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_adapters.cache_root import default_cache_root
from data_adapters.file_identity import file_identity
from data_adapters.lerobot_format import DatasetFormatError, DatasetMeta, EpisodeMeta

_FORMAT_VERSION = 1
_READ_BATCH_ROWS = 64
BUDGET_ENV = "VLA_SFT_IMAGE_CACHE_GB"
DEFAULT_BUDGET_GB = 100.0
_CACHE_NAME = re.compile(r"^[0-9a-f]{32}\.arrow$")
_TMP_NAME = re.compile(r"^\.[0-9a-f]{32}\.arrow\.[0-9a-f]{8}\.tmp$")
_STALE_TMP_S = 24 * 3600  # a writer's temporary file this old belongs to a process that died


def default_cache_dir() -> Path:
    """``$VLA_SFT_CACHE/image_columns`` or ``~/.cache/vla-sft/image_columns`` (the flow's cache root)."""
    return default_cache_root() / "image_columns"


class ImageColumnCache:
    """Encoded image bytes of some episodes' image cameras, addressable by (key, episode, frame)."""

    def __init__(self, path: Path, keys: Sequence[str], episode_rows: dict[int, int]):
        self.path = Path(path)
        self.keys = list(keys)
        self.episode_rows = episode_rows  # episode index -> first row in the cache
        self._pid: int | None = None
        self._columns: dict[str, list[pa.Array]] = {}
        self._batch_starts = np.zeros(0, dtype=np.int64)
        # In use: a shared lock, released when this object goes (eviction needs an exclusive one).
        lease = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, lease)
        with contextlib.suppress(OSError):  # no flock on this filesystem: then nothing is evicted either
            fcntl.flock(lease, fcntl.LOCK_SH)

    @classmethod
    def build(
        cls,
        meta: DatasetMeta,
        episodes: Sequence[EpisodeMeta],
        keys: Sequence[str],
        cache_dir: str | Path | None = None,
    ) -> ImageColumnCache:
        """Return the cache for these episodes and keys, writing it first if it does not exist yet."""
        by_file = _episodes_by_file(episodes)
        episode_rows, row = {}, 0
        for eps in by_file.values():
            for ep in eps:
                episode_rows[ep.index] = row
                row += ep.length
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = cache_dir / f"{_cache_key(meta, by_file, keys)}.arrow"
        if not path.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            _write_cache(meta, by_file, keys, path)
        else:
            with contextlib.suppress(OSError):  # used now: the last to be evicted (unless read-only)
                os.utime(path)
        cache = cls(path, keys, episode_rows)
        evict_least_recently_used(cache_dir, budget_bytes(), keep=path)
        return cache

    def get(self, key: str, episode: int, frame: int) -> bytes:
        """Encoded bytes (PNG, or whatever the dataset stored) of one image."""
        if self._pid != os.getpid():
            self._open()
        row = self.episode_rows[episode] + frame
        batch = int(np.searchsorted(self._batch_starts, row, side="right")) - 1
        return self._columns[key][batch][row - int(self._batch_starts[batch])].as_py()

    def __getstate__(self) -> dict:
        # The mapping is per process; a spawned worker maps the file again on first use.
        state = self.__dict__.copy()
        state.update(_pid=None, _columns={}, _batch_starts=np.zeros(0, dtype=np.int64))
        return state

    def _open(self) -> None:
        reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        self._columns = {key: [b.column(key) for b in batches] for key in self.keys}
        self._batch_starts = np.cumsum([0] + [b.num_rows for b in batches[:-1]], dtype=np.int64)
        self._pid = os.getpid()


def budget_bytes() -> int:
    """The cache folder's size budget: ``$VLA_SFT_IMAGE_CACHE_GB`` (GB, may be fractional), default 100."""
    raw = os.environ.get(BUDGET_ENV)
    try:
        gb = float(raw) if raw else DEFAULT_BUDGET_GB
    except ValueError:
        raise ValueError(f"{BUDGET_ENV}={raw!r}: expected a number of GB") from None
    if gb < 0:
        raise ValueError(f"{BUDGET_ENV}={raw!r}: expected a number of GB >= 0")
    return int(gb * 1e9)


def evict_least_recently_used(cache_dir: Path, budget: int, keep: Path) -> list[Path]:
    """Delete the least recently used cache files until the folder fits ``budget`` bytes.

    Never ``keep``, nor a file some process holds (see :class:`ImageColumnCache`). Only files named like
    caches are counted or deleted; writers' temporary files are deleted once a day old (their process
    died). Files another process deletes or replaces meanwhile, or that cannot be deleted (a read-only
    shared cache), are skipped.
    """
    caches, removed = [], []
    for entry in os.scandir(cache_dir):
        try:
            stat = entry.stat()
        except FileNotFoundError:
            continue
        if _CACHE_NAME.match(entry.name):
            caches.append((stat.st_mtime_ns, stat.st_size, Path(entry.path)))
        elif _TMP_NAME.match(entry.name) and time.time() - stat.st_mtime > _STALE_TMP_S:
            with contextlib.suppress(OSError):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    total = sum(size for _, size, _ in caches)
    for _, size, path in sorted(caches):  # oldest use first
        if total <= budget:
            break
        if path != keep and _delete_unless_held(path):
            removed.append(path)
            total -= size
    return removed


def _delete_unless_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a reader holds it (or the filesystem has no flock: keep it)
    else:
        try:
            path.unlink(missing_ok=True)  # while locked: no reader can take it up in between
        except OSError:
            return False
        return True
    finally:
        os.close(fd)


def _episodes_by_file(episodes: Sequence[EpisodeMeta]) -> dict[str, list[EpisodeMeta]]:
    by_file: dict[str, list[EpisodeMeta]] = {}
    for ep in episodes:
        by_file.setdefault(ep.data_path, []).append(ep)
    return {path: sorted(eps, key=lambda e: e.row_start) for path, eps in by_file.items()}


def _cache_key(meta: DatasetMeta, by_file: dict[str, list[EpisodeMeta]], keys: Sequence[str]) -> str:
    files = {}
    for rel in by_file:
        try:
            files[rel] = file_identity(meta.root / rel)
        except OSError as err:
            eps = [e.index for e in by_file[rel]]
            raise DatasetFormatError(f"missing data file {meta.root / rel} ({_episodes_text(eps)})") from err
    spec = {
        "format": _FORMAT_VERSION,
        "root": str(meta.root.resolve()),
        "keys": list(keys),
        "episodes": [[e.index, e.data_path, e.row_start, e.length] for eps in by_file.values() for e in eps],
        "files": files,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def _write_cache(
    meta: DatasetMeta, by_file: dict[str, list[EpisodeMeta]], keys: Sequence[str], path: Path
) -> None:
    schema = pa.schema([pa.field(key, pa.large_binary(), nullable=False) for key in keys])
    # Write to a unique temporary name and rename: concurrent builders (several ranks) never see a
    # half-written cache, and the last rename wins with identical content.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for rel, eps in by_file.items():
                for arrays in _iter_episode_images(meta, rel, eps, keys):
                    writer.write_batch(pa.record_batch(arrays, schema=schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        # Arrow's allocator keeps freed read buffers for reuse; hand them back so that building the
        # cache does not leave this process (and every worker forked from it) larger.
        pa.default_memory_pool().release_unused()


def _iter_episode_images(meta: DatasetMeta, rel: str, eps: list[EpisodeMeta], keys: Sequence[str]):
    """Yield, in row order, lists of large_binary arrays (one per key) for the episodes' rows."""
    file_path = meta.root / rel
    names = _episodes_text([e.index for e in eps])
    try:
        # Streamed reads (buffer_size) keep only a page or so per column in memory, not whole row groups.
        parquet = pq.ParquetFile(file_path, buffer_size=1 << 20, pre_buffer=False)
        wanted = [(ep.row_start, ep.row_stop, ep) for ep in eps]
        offset = 0
        for batch in parquet.iter_batches(batch_size=_READ_BATCH_ROWS, columns=list(keys), use_threads=False):
            batch_stop = offset + batch.num_rows
            for start, stop, ep in wanted:
                lo, hi = max(start, offset), min(stop, batch_stop)
                if lo < hi:
                    part = batch.slice(lo - offset, hi - lo)
                    yield [
                        _image_bytes(part.column(key), meta, ep, key, lo - start, file_path) for key in keys
                    ]
            offset = batch_stop
    except (OSError, pa.ArrowException) as err:
        raise DatasetFormatError(f"corrupt parquet file {file_path} ({names}): {err}") from err
    last = max(stop for _, stop, _ in wanted)
    if offset < last:
        raise DatasetFormatError(
            f"data file {file_path} has {offset} rows but {names} need {last} (truncated file?)"
        )


def _image_bytes(
    column: pa.Array, meta: DatasetMeta, ep: EpisodeMeta, key: str, first_frame: int, file_path: Path
) -> pa.Array:
    if pa.types.is_struct(column.type):
        data = column.field("bytes")
        paths = column.field("path") if column.type.get_field_index("path") >= 0 else None
    else:
        data, paths = column, None
    if data.null_count == 0:
        return data.cast(pa.large_binary())
    # Datasets recorded but never pushed may keep image paths instead of bytes.
    values = []
    for i, (blob, rel) in enumerate(
        zip(data.to_pylist(), paths.to_pylist() if paths else [None] * len(data))
    ):
        if blob is None and rel:
            candidate = Path(rel) if Path(rel).is_absolute() else meta.root / rel
            if candidate.is_file():
                blob = candidate.read_bytes()
        if blob is None:
            raise DatasetFormatError(
                f"image {key!r} of episode {ep.index}, frame {first_frame + i} in {file_path} has no bytes"
            )
        values.append(blob)
    return pa.array(values, type=pa.large_binary())


def _episodes_text(indices: list[int]) -> str:
    """``episode 4`` or ``episodes 1, 2, 3``, for messages."""
    return f"episode {indices[0]}" if len(indices) == 1 else "episodes " + ", ".join(str(i) for i in indices)
