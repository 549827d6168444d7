"""LeRobot dataset layout: metadata of codebase versions v2.0, v2.1 and v3.0.

Layouts (paths relative to the dataset root, as LeRobot writes them):

- v3.0: ``meta/info.json``, ``meta/stats.json``, ``meta/tasks.parquet`` (task strings as the pandas
  index, column ``task_index``), ``meta/episodes/chunk-*/file-*.parquet`` (one row per episode:
  ``episode_index``, ``tasks``, ``length``, ``data/chunk_index``, ``data/file_index``,
  ``dataset_from_index``, ``dataset_to_index``, ``videos/<key>/{chunk_index,file_index,from_timestamp,
  to_timestamp}``, ``stats/<key>/<stat>``), ``data/chunk-*/file-*.parquet`` holding many episodes each,
  ``videos/<key>/chunk-*/file-*.mp4`` holding episodes one after the other.
- v2.1: one parquet file and one mp4 per episode (``data/chunk-{c:03d}/episode_{e:06d}.parquet``,
  ``videos/chunk-{c:03d}/<key>/episode_{e:06d}.mp4``, chunk ``c = e // chunks_size``),
  ``meta/episodes.jsonl``, ``meta/tasks.jsonl``, ``meta/episodes_stats.jsonl``.
- v2.0: as v2.1 without ``episodes_stats.jsonl`` (and with ``meta/stats.json``).

Only metadata is read here; frames are read by :mod:`data_adapters.lerobot_reader`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
V3_TASKS_PATH = "meta/tasks.parquet"
V3_EPISODES_DIR = "meta/episodes"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES_PATH = V3_EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V2_EPISODES_PATH = "meta/episodes.jsonl"
V2_TASKS_PATH = "meta/tasks.jsonl"
V21_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"
DEFAULT_CHUNKS_SIZE = 1000

# Columns every LeRobot frame carries besides the user's features.
DEFAULT_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
CAMERA_DTYPES = ("image", "video")


class DatasetFormatError(ValueError):
    """The dataset on disk is not a readable LeRobot dataset (message names file, key and episode)."""


@dataclass(frozen=True)
class VideoSpan:
    """Where one episode of one camera lives: a file and the time range inside it."""

    path: str  # relative to the dataset root
    from_timestamp: float
    to_timestamp: float


@dataclass(frozen=True)
class EpisodeMeta:
    """One episode: its frames are rows ``row_start .. row_start + length - 1`` of ``data_path``."""

    index: int
    length: int
    tasks: tuple[str, ...]
    data_path: str  # relative to the dataset root
    row_start: int  # first row of the episode inside data_path
    dataset_from_index: int  # global frame index (column ``index``) of the first frame
    videos: Mapping[str, VideoSpan] = field(default_factory=dict)

    @property
    def row_stop(self) -> int:
        return self.row_start + self.length


@dataclass(frozen=True)
class DatasetMeta:
    """Everything :func:`read_meta` learns from ``meta/``; episodes are sorted by index."""

    root: Path
    version: str
    fps: float
    info: dict
    features: dict[str, dict]
    episodes: dict[int, EpisodeMeta]
    tasks: dict[int, str]

    @property
    def total_frames(self) -> int:
        return sum(ep.length for ep in self.episodes.values())

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "image"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] in CAMERA_DTYPES]

    def feature_dim(self, key: str) -> int:
        """Flat size of a numeric feature (``prod(shape)``)."""
        return int(math.prod(self.features[key]["shape"]))

    def select(self, episodes: Iterable[int] | None = None) -> list[EpisodeMeta]:
        """Episodes by index (all when None), sorted; unknown indices raise a clear error."""
        if episodes is None:
            return list(self.episodes.values())
        wanted = sorted({int(e) for e in episodes})
        missing = [e for e in wanted if e not in self.episodes]
        if missing:
            known = list(self.episodes)
            raise DatasetFormatError(
                f"episodes {missing} are not in dataset {self.root} "
                f"({len(known)} episodes, indices {known[0]}..{known[-1]})"
            )
        if not wanted:
            raise DatasetFormatError(f"empty episode selection for dataset {self.root}")
        return [self.episodes[e] for e in wanted]

    def require_keys(self, keys: Sequence[str], *, kinds: tuple[str, ...] | None = None, role: str) -> None:
        """Raise if a mapped key is absent (listing the existing ones) or of the wrong kind."""
        for key in keys:
            if key not in self.features:
                raise DatasetFormatError(
                    f"{role} key {key!r} is not a feature of dataset {self.root}; "
                    f"existing keys: {sorted(self.features)}"
                )
            dtype = self.features[key]["dtype"]
            is_camera = dtype in CAMERA_DTYPES
            if kinds == CAMERA_DTYPES and not is_camera:
                raise DatasetFormatError(
                    f"{role} key {key!r} of dataset {self.root} has dtype {dtype!r}, not image or video; "
                    f"camera keys: {self.camera_keys}"
                )
            if kinds is None and (is_camera or dtype == "string"):
                raise DatasetFormatError(
                    f"{role} key {key!r} of dataset {self.root} has dtype {dtype!r}, not numeric"
                )


def read_meta(root: str | Path) -> DatasetMeta:
    """Read ``meta/`` of a LeRobot dataset (v2.0, v2.1 or v3.0).

    Raises:
        DatasetFormatError: missing ``meta/info.json``, unsupported ``codebase_version``, no episodes or
            no frames, or unreadable metadata files.
    """
    root = Path(root)
    info_path = root / INFO_PATH
    if not info_path.is_file():
        raise DatasetFormatError(f"missing {INFO_PATH} in {root} (not a LeRobot dataset, or not downloaded)")
    info = _load_json(info_path)
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise DatasetFormatError(
            f"unsupported LeRobot codebase_version {version!r} in {info_path}; "
            f"supported: {', '.join(SUPPORTED_VERSIONS)}"
        )
    for required in ("fps", "features"):
        if required not in info:
            raise DatasetFormatError(f"{info_path} lacks the field {required!r}")
    features = {k: dict(ft, shape=list(ft.get("shape") or [1])) for k, ft in info["features"].items()}
    if version == "v3.0":
        tasks = _read_v3_tasks(root)
        episodes = _read_v3_episodes(root, info, features)
    else:
        tasks = _read_v2_tasks(root)
        episodes = _read_v2_episodes(root, info, features)
    if not episodes:
        raise DatasetFormatError(f"empty dataset at {root}: 0 episodes")
    meta = DatasetMeta(
        root=root,
        version=version,
        fps=float(info["fps"]),
        info=info,
        features=features,
        episodes=dict(sorted(episodes.items())),
        tasks=tasks,
    )
    if meta.total_frames == 0:
        raise DatasetFormatError(f"empty dataset at {root}: {len(episodes)} episodes but 0 frames")
    return meta


def split_episodes(
    episode_indices: Iterable[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split of episode indices (each list sorted).

    The validation share is ``round(val_fraction * n)`` episodes, at least one when ``val_fraction > 0``
    and at most ``n - 1`` so training never ends up empty. The same (indices, fraction, seed) always gives
    the same split, whatever order the indices come in.
    """
    episodes = sorted(int(e) for e in episode_indices)
    if len(set(episodes)) != len(episodes):
        raise ValueError("split_episodes: episode indices contain duplicates")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split_episodes: val_fraction must be in [0, 1), got {val_fraction}")
    n = len(episodes)
    if n == 0:
        raise ValueError("split_episodes: no episodes to split")
    num_val = round(val_fraction * n)
    if val_fraction > 0:
        num_val = max(num_val, 1)
    num_val = min(num_val, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val_positions = set(order[:num_val].tolist())
    train = [e for i, e in enumerate(episodes) if i not in val_positions]
    val = [e for i, e in enumerate(episodes) if i in val_positions]
    return train, val


def fingerprint(root: str | Path) -> str:
    """Stable 16-hex-digit hash of a dataset: meta file contents plus data/video file names and sizes.

    Hidden files and folders (caches) are ignored, so reading a dataset never changes its fingerprint.
    """
    root = Path(root)
    if not (root / INFO_PATH).is_file():
        raise DatasetFormatError(f"missing {INFO_PATH} in {root} (not a LeRobot dataset, or not downloaded)")
    digest = hashlib.sha256()
    for path in sorted(_visible_files(root)):
        rel = path.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0")
        if rel.startswith("meta/"):
            digest.update(path.read_bytes())
        else:
            digest.update(str(path.stat().st_size).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


# -- helpers ----------------------------------------------------------------------------------------


def _visible_files(root: Path):
    for path in root.rglob("*"):
        rel_parts = path.relative_to(root).parts
        if path.is_file() and not any(part.startswith(".") for part in rel_parts):
            yield path


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"cannot read {path}: {err}") from err


def _load_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetFormatError(f"missing {path}")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DatasetFormatError(f"cannot parse line {line_no} of {path}: {err}") from err
    return rows


def _read_parquet(path: Path, columns=None, *, what: str) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as err:
        raise DatasetFormatError(f"corrupt parquet file {path} ({what}): {err}") from err


def _read_v3_tasks(root: Path) -> dict[int, str]:
    path = root / V3_TASKS_PATH
    if not path.is_file():
        raise DatasetFormatError(f"missing {V3_TASKS_PATH} in {root}")
    table = _read_parquet(path, what="task table")
    names = table.column_names
    if "task" in names:  # a plain column (some converters write it this way)
        task_col = "task"
    else:  # LeRobot writes the task strings as the pandas index
        index_cols = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}")).get("index_columns", [])
        task_col = next((c for c in index_cols if isinstance(c, str) and c in names), None)
    if task_col is None or "task_index" not in names:
        raise DatasetFormatError(f"{path} has no task strings / task_index column (columns: {names})")
    return dict(
        zip(
            (int(i) for i in table.column("task_index").to_pylist()),
            table.column(task_col).to_pylist(),
            strict=True,
        )
    )


def _read_v3_episodes(root: Path, info: dict, features: dict) -> dict[int, EpisodeMeta]:
    files = sorted((root / V3_EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise DatasetFormatError(f"empty dataset at {root}: no {V3_EPISODES_DIR}/chunk-*/file-*.parquet")
    data_template = info.get("data_path") or V3_DATA_PATH
    video_template = info.get("video_path") or V3_VIDEO_PATH
    video_keys = [k for k, ft in features.items() if ft["dtype"] == "video"]
    rows: list[dict] = []
    for path in files:
        schema = _read_parquet_schema(path)
        columns = [c for c in schema.names if not c.startswith("stats/")]
        rows.extend(_read_parquet(path, columns, what="episode metadata").to_pylist())
    required = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index"]
    for key in video_keys:
        required += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
    raw: dict[int, dict] = {}
    for row in rows:
        missing = [c for c in required if row.get(c) is None]
        if missing:
            raise DatasetFormatError(
                f"episode {row.get('episode_index')} in {root / V3_EPISODES_DIR} lacks {missing}"
            )
        raw[int(row["episode_index"])] = row
    # Rows of one data file are episodes in order; an episode's first row is its global index minus
    # the global index of the file's first frame.
    file_start: dict[str, int] = {}
    for row in raw.values():
        rel = data_template.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        row["_data_path"] = rel
        file_start[rel] = min(file_start.get(rel, row["dataset_from_index"]), row["dataset_from_index"])
    episodes = {}
    for index, row in raw.items():
        videos = {}
        for key in video_keys:
            rel = video_template.format(
                video_key=key,
                chunk_index=row[f"videos/{key}/chunk_index"],
                file_index=row[f"videos/{key}/file_index"],
            )
            start = float(row[f"videos/{key}/from_timestamp"])
            stop = row.get(f"videos/{key}/to_timestamp")
            videos[key] = VideoSpan(rel, start, float(stop) if stop is not None else math.nan)
        episodes[index] = EpisodeMeta(
            index=index,
            length=int(row["length"]),
            tasks=tuple(row.get("tasks") or ()),
            data_path=row["_data_path"],
            row_start=int(row["dataset_from_index"]) - file_start[row["_data_path"]],
            dataset_from_index=int(row["dataset_from_index"]),
            videos=videos,
        )
    return episodes


def _read_parquet_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise DatasetFormatError(f"corrupt parquet file {path} (episode metadata): {err}") from err


def _read_v2_tasks(root: Path) -> dict[int, str]:
    return {int(row["task_index"]): row["task"] for row in _load_jsonl(root / V2_TASKS_PATH)}


def _read_v2_episodes(root: Path, info: dict, features: dict) -> dict[int, EpisodeMeta]:
    rows = sorted(_load_jsonl(root / V2_EPISODES_PATH), key=lambda r: int(r["episode_index"]))
    chunks_size = int(info.get("chunks_size") or DEFAULT_CHUNKS_SIZE)
    data_template = info.get("data_path") or V2_DATA_PATH
    video_template = info.get("video_path") or V2_VIDEO_PATH
    video_keys = [k for k, ft in features.items() if ft["dtype"] == "video"]
    fps = float(info["fps"])
    episodes = {}
    global_index = 0  # v2.x has no dataset_from_index: frames are numbered episode after episode
    for row in rows:
        index, length = int(row["episode_index"]), int(row["length"])
        chunk = index // chunks_size
        videos = {
            key: VideoSpan(
                video_template.format(episode_chunk=chunk, video_key=key, episode_index=index),
                0.0,
                length / fps,
            )
            for key in video_keys
        }
        tasks = row.get("tasks") or ()
        episodes[index] = EpisodeMeta(
            index=index,
            length=length,
            tasks=tuple([tasks] if isinstance(tasks, str) else tasks),
            data_path=data_template.format(episode_chunk=chunk, episode_index=index),
            row_start=0,
            dataset_from_index=global_index,
            videos=videos,
        )
        global_index += length
    return episodes
