"""Fast reading of LeRobot datasets (v2.0, v2.1, v3.0): numeric columns and training frames.

`read_numeric` loads state/action-like columns of whole episodes (parquet only, no images).
`LeRobotFrames` is the map-style dataset the trainer samples from. Its memory model:

- At construction it reads the numeric columns it needs (state keys, action keys, timestamp, frame and
  task indices) of every selected episode into flat arrays: about ``4 * (Ds + Da) + 33`` bytes per frame.
  This is the only memory that grows with the dataset.
- Image-dtype cameras are served from a memory-mapped Arrow file of the encoded bytes
  (:mod:`data_adapters.image_column_cache`, built once, before any worker starts); video cameras from
  the mp4 files through :class:`data_adapters.video.VideoFrameReader`. Either way an item decodes only
  the current frame of each camera, never the ``horizon`` frames of the action chunk.
- File handles (video containers, the mapping) are opened lazily inside each DataLoader worker, so
  nothing is decoded or opened before the fork. Use :func:`loader_worker_init` as ``worker_init_fn``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from data_adapters.image_column_cache import ImageColumnCache
from data_adapters.lerobot_format import (
    CAMERA_DTYPES,
    DatasetFormatError,
    DatasetMeta,
    EpisodeMeta,
    read_meta,
)
from data_adapters.video import VideoDecodeError, VideoFrameReader

_INDEX_COLUMNS = ("timestamp", "frame_index", "task_index")


def read_numeric(
    root: str | Path | DatasetMeta, keys: Sequence[str], episodes: Iterable[int] | None = None
) -> dict[int, np.ndarray]:
    """Numeric columns of whole episodes, concatenated in ``keys`` order.

    Args:
        root: dataset folder (or an already read :class:`DatasetMeta`).
        keys: numeric feature names, e.g. ``["observation.state"]``; their flattened dims are concatenated.
        episodes: episode indices to read (default: all).

    Returns:
        ``{episode_index: float64 [length, sum of dims]}`` in episode order.

    Raises:
        DatasetFormatError: a key is missing (the message lists the existing ones) or not numeric, a data
            file is corrupt (the message names file and episodes), or a value is NaN/inf (the message
            names key, episode and frame).
    """
    meta = root if isinstance(root, DatasetMeta) else read_meta(root)
    keys = list(keys)
    if not keys:
        raise ValueError("read_numeric: no keys given")
    meta.require_keys(keys, role="numeric")
    return {
        ep.index: np.concatenate([cols[k] for k in keys], axis=1)
        for ep, cols in _iter_episode_columns(meta, meta.select(episodes), keys, extra=())
    }


def loader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders over :class:`LeRobotFrames`.

    One intra-op thread per worker: the workers already occupy the cores, and oversubscription (each
    worker's torch and FFmpeg threads fighting) slowed loading down several times on a 2-core machine.
    """
    del worker_id
    torch.set_num_threads(1)


class LeRobotFrames(torch.utils.data.Dataset):
    """Map-style dataset of raw training items (robot units), one per frame of the selected episodes.

    Item ``i`` (frame ``t`` of episode ``e``)::

        {"state": float32[Ds],            # state_keys concatenated, at t
         "actions": float32[H, Da],       # action_keys concatenated, at t .. t+H-1; past the episode end
         "action_is_pad": bool[H],        #   the last frame repeats and action_is_pad is True
         "images": {camera_key: uint8[H_img, W_img, 3]},   # current frame only
         "task": str, "episode_index": int, "frame_index": int, "index": int}

    Args:
        root: dataset folder.
        state_keys, action_keys: numeric features concatenated into state and actions.
        camera_keys: image or video features to decode (may be empty).
        horizon: action chunk length H.
        episodes: episode indices to use (default: all).
        cache_dir: where image-dtype cameras are cached (see :mod:`data_adapters.image_column_cache`).
        video_threads: decoder threads per video file (keep 1 with DataLoader workers).

    Raises:
        DatasetFormatError: as :func:`read_numeric`, plus camera keys that are not image/video features;
            corrupt or truncated videos raise it from ``__getitem__`` naming file, key and episode.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        state_keys: Sequence[str],
        action_keys: Sequence[str],
        camera_keys: Sequence[str],
        horizon: int,
        episodes: Iterable[int] | None = None,
        cache_dir: str | Path | None = None,
        video_threads: int = 1,
    ):
        if horizon < 1:
            raise ValueError(f"LeRobotFrames: horizon must be >= 1, got {horizon}")
        self.meta = meta = read_meta(root)
        self.root = meta.root
        self.state_keys, self.action_keys = list(state_keys), list(action_keys)
        self.camera_keys = list(camera_keys)
        self.horizon = int(horizon)
        meta.require_keys(self.state_keys, role="state")
        meta.require_keys(self.action_keys, role="action")
        meta.require_keys(self.camera_keys, kinds=CAMERA_DTYPES, role="camera")
        self.episodes = meta.select(episodes)

        lengths = np.array([ep.length for ep in self.episodes], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])  # flat offset of each episode
        num_frames = int(self._starts[-1])
        dim_state = sum(meta.feature_dim(k) for k in self.state_keys)
        dim_action = sum(meta.feature_dim(k) for k in self.action_keys)
        self._state = np.empty((num_frames, dim_state), dtype=np.float32)
        self._actions = np.empty((num_frames, dim_action), dtype=np.float32)
        self._timestamp = np.empty(num_frames, dtype=np.float64)
        self._frame_index = np.empty(num_frames, dtype=np.int64)
        self._task_index = np.empty(num_frames, dtype=np.int64)
        numeric = list(dict.fromkeys(self.state_keys + self.action_keys))
        image_keys = [k for k in self.camera_keys if meta.features[k]["dtype"] == "image"]
        for pos, (_ep, cols) in enumerate(
            _iter_episode_columns(meta, self.episodes, numeric, extra=_INDEX_COLUMNS, check=image_keys)
        ):
            rows = slice(self._starts[pos], self._starts[pos + 1])
            self._state[rows] = np.concatenate([cols[k] for k in self.state_keys], axis=1)
            self._actions[rows] = np.concatenate([cols[k] for k in self.action_keys], axis=1)
            self._timestamp[rows] = cols["timestamp"]
            self._frame_index[rows] = cols["frame_index"]
            self._task_index[rows] = cols["task_index"]
        pa.default_memory_pool().release_unused()  # parquet read buffers: do not carry them into workers
        unknown = sorted(set(np.unique(self._task_index).tolist()) - set(meta.tasks))
        if unknown:
            raise DatasetFormatError(f"task_index values {unknown} of {self.root} are not in its task table")

        self._image_cache = (
            ImageColumnCache.build(meta, self.episodes, image_keys, cache_dir) if image_keys else None
        )
        # Created on first use; it notices forks itself and then opens its own files in each worker.
        self._videos: VideoFrameReader | None = None
        self._video_threads = video_threads

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} frames")
        i = int(i) % n
        pos = int(np.searchsorted(self._starts, i, side="right")) - 1
        start, stop = int(self._starts[pos]), int(self._starts[pos + 1])
        ep = self.episodes[pos]
        steps = i + np.arange(self.horizon)
        is_pad = steps >= stop
        return {
            "state": self._state[i].copy(),
            "actions": self._actions[np.minimum(steps, stop - 1)],
            "action_is_pad": is_pad,
            "images": {key: self._image(key, ep, i - start, i) for key in self.camera_keys},
            "task": self.meta.tasks[int(self._task_index[i])],
            "episode_index": ep.index,
            "frame_index": int(self._frame_index[i]),
            "index": ep.dataset_from_index + i - start,
        }

    @property
    def episode_lengths(self) -> dict[int, int]:
        return {ep.index: ep.length for ep in self.episodes}

    def _image(self, key: str, ep: EpisodeMeta, frame: int, flat: int) -> np.ndarray:
        if self.meta.features[key]["dtype"] == "image":
            data = self._image_cache.get(key, ep.index, frame)
            try:
                with Image.open(io.BytesIO(data)) as img:
                    return np.array(img.convert("RGB") if img.mode != "RGB" else img)
            except (OSError, ValueError) as err:
                raise DatasetFormatError(
                    f"corrupt image {key!r} in {self.root / ep.data_path} (episode {ep.index}, "
                    f"frame {frame}): {err}"
                ) from err
        if self._videos is None:
            self._videos = VideoFrameReader(threads=self._video_threads)
        span = ep.videos[key]
        path = self.root / span.path
        try:
            return self._videos.frame_at(path, span.from_timestamp + self._timestamp[flat])
        except VideoDecodeError as err:
            raise DatasetFormatError(
                f"corrupt or truncated video {path} (camera key {key!r}, episode {ep.index}, "
                f"frame {frame}): {err.reason}"
            ) from err

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_videos"] = None
        return state


# -- column reading ---------------------------------------------------------------------------------


def _iter_episode_columns(
    meta: DatasetMeta,
    episodes: Sequence[EpisodeMeta],
    numeric_keys: Sequence[str],
    *,
    extra: Sequence[str],
    check: Sequence[str] = (),
) -> Iterator[tuple[EpisodeMeta, dict[str, np.ndarray]]]:
    """Yield ``(episode, {key: float64[T, d]} | {extra column: 1-D array})`` in the given episode order.

    Each data file is read once (only the needed columns). ``check`` lists further columns that must
    exist in the files (image cameras read later).
    """
    by_file: dict[str, list[EpisodeMeta]] = {}
    for ep in episodes:
        by_file.setdefault(ep.data_path, []).append(ep)
    # Read each file once, when its first episode is due, and drop episodes as soon as they are yielded,
    # so only about one file's columns are held in float64 at a time.
    loaded: dict[int, dict[str, np.ndarray]] = {}
    for ep in episodes:
        if ep.index not in loaded:
            loaded.update(
                _read_file(meta, ep.data_path, by_file.pop(ep.data_path), numeric_keys, extra, check)
            )
        yield ep, loaded.pop(ep.index)


def _read_file(
    meta: DatasetMeta,
    rel: str,
    eps: list[EpisodeMeta],
    numeric_keys: Sequence[str],
    extra: Sequence[str],
    check: Sequence[str],
) -> dict[int, dict[str, np.ndarray]]:
    path = meta.root / rel
    names = ", ".join(str(e.index) for e in eps)
    where = f"episode {names}" if len(eps) == 1 else f"episodes {names}"
    if not path.is_file():
        raise DatasetFormatError(f"missing data file {path} ({where})")
    try:
        schema = pq.read_schema(path)
        present = set(schema.names)
        for key in [*numeric_keys, *check]:
            if key not in present:
                raise DatasetFormatError(
                    f"column {key!r} missing from data file {path} ({where}); columns: {sorted(present)}"
                )
        columns = [c for c in ("episode_index", *extra) if c in present] + list(numeric_keys)
        table = pq.read_table(path, columns=list(dict.fromkeys(columns)))
    except (OSError, pa.ArrowException) as err:
        raise DatasetFormatError(f"corrupt parquet file {path} ({where}): {err}") from err
    out = {}
    for ep in eps:
        if ep.row_stop > table.num_rows:
            raise DatasetFormatError(
                f"data file {path} has {table.num_rows} rows but episode {ep.index} needs rows "
                f"{ep.row_start}..{ep.row_stop - 1} (truncated file or wrong episode metadata)"
            )
        part = table.slice(ep.row_start, ep.length)
        if "episode_index" in part.column_names:
            found = np.unique(part.column("episode_index").to_numpy())
            if found.tolist() != [ep.index]:
                raise DatasetFormatError(
                    f"rows {ep.row_start}..{ep.row_stop - 1} of {path} belong to episodes {found.tolist()}, "
                    f"not episode {ep.index} (episode metadata does not match the data file)"
                )
        cols = {
            key: _numeric_block(part.column(key), meta.feature_dim(key), path, key) for key in numeric_keys
        }
        frame_index = _column_or(part, "frame_index", np.arange(ep.length)).astype(np.int64)
        for key in numeric_keys:
            _check_finite(cols[key], key, ep, frame_index, path)
        if "frame_index" in extra:
            cols["frame_index"] = frame_index
        if "timestamp" in extra:
            cols["timestamp"] = _column_or(part, "timestamp", frame_index / meta.fps).astype(np.float64)
        if "task_index" in extra:
            task_index = _column_or(part, "task_index", None)
            cols["task_index"] = (task_index if task_index is not None else _task_of(meta, ep)).astype(
                np.int64
            )
        out[ep.index] = cols
    return out


def _column_or(table: pa.Table, name: str, default: np.ndarray | None) -> np.ndarray | None:
    """A 1-D column as numpy, or ``default`` when the file lacks it (old or hand-made datasets)."""
    return table.column(name).to_numpy() if name in table.column_names else default


def _task_of(meta: DatasetMeta, ep: EpisodeMeta) -> np.ndarray:
    by_text = {text: index for index, text in meta.tasks.items()}
    if not ep.tasks or ep.tasks[0] not in by_text:
        raise DatasetFormatError(
            f"episode {ep.index} of {meta.root} has no task_index column and no known task"
        )
    return np.full(ep.length, by_text[ep.tasks[0]])


def _numeric_block(column: pa.ChunkedArray, dim: int, path: Path, key: str) -> np.ndarray:
    """A (possibly list-typed) parquet column as float64 ``[rows, dim]``."""
    arr = column.combine_chunks()
    if arr.null_count:
        raise DatasetFormatError(f"column {key!r} of {path} has {arr.null_count} null values")
    rows = len(arr)
    values = arr
    while (
        pa.types.is_list(values.type)
        or pa.types.is_large_list(values.type)
        or pa.types.is_fixed_size_list(values.type)
    ):
        values = pc.list_flatten(values)
    flat = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if flat.size != rows * dim:
        raise DatasetFormatError(
            f"column {key!r} of {path} holds {flat.size} values for {rows} rows; info.json says {dim} per row"
        )
    return flat.reshape(rows, dim)


def _check_finite(x: np.ndarray, key: str, ep: EpisodeMeta, frame_index: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        row, dim = np.argwhere(bad)[0]
        raise DatasetFormatError(
            f"non-finite value {x[row, dim]} in {key!r}[{dim}] at episode {ep.index}, "
            f"frame {int(frame_index[row])} ({path})"
        )
