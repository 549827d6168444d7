"""Write LeRobot datasets: v3.0 (default), v2.1 or v2.0; cameras as PNG-in-parquet or mp4 (AV1 / h264).

Usage::

    writer = LeRobotWriter(root, fps=10, features={
        "observation.state": {"dtype": "float32", "shape": (4,), "names": None},
        "action": {"dtype": "float32", "shape": (4,), "names": None},
        "observation.image": {"dtype": "video", "shape": (64, 64, 3), "names": ["height", "width", "channel"]},
    })
    for episode in episodes:
        for frame in episode:
            writer.add_frame({"observation.state": ..., "action": ..., "observation.image": rgb_uint8}, task="...")
        writer.save_episode()
    writer.finalize()

Everything is written into a sibling folder ``<root>.tmp-<random>`` and renamed to ``root`` by
:meth:`LeRobotWriter.finalize`, so a crash never leaves a half-written dataset at ``root`` (call
:meth:`LeRobotWriter.abort`, or use the writer as a context manager, to remove the temporary folder).

Memory: images are PNG-encoded (or fed to the video encoder) as frames arrive; the numeric columns of
all episodes are kept until :meth:`finalize` to compute exact dataset statistics (``meta/stats.json``).
Statistics of camera features are per-channel, over pixels of every frame subsampled 8x in each
direction, in [0, 1] like LeRobot's; their dataset-level quantiles are frame-weighted averages of the
episodes' quantiles (LeRobot's approximation); numeric quantiles are exact.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from data_adapters.lerobot_features import ARROW_TYPES, check_features, checked_value, hf_features
from data_adapters.lerobot_format import (
    CAMERA_DTYPES,
    DEFAULT_FEATURES,
    STATS_PATH,
    SUPPORTED_VERSIONS,
    V2_DATA_PATH,
    V2_EPISODES_PATH,
    V2_TASKS_PATH,
    V2_VIDEO_PATH,
    V3_DATA_PATH,
    V3_EPISODES_PATH,
    V3_TASKS_PATH,
    V3_VIDEO_PATH,
    V21_EPISODES_STATS_PATH,
)
from data_adapters.lerobot_stats import feature_stats, merge_pixel_stats, pixel_stats, stats_to_json
from data_adapters.video import VIDEO_CODECS, VideoEncoder

_MB = 1024 * 1024


class LeRobotWriter:
    """Write one LeRobot dataset episode by episode.

    Args:
        root: dataset folder to create (must not exist, or be empty).
        fps: frames per second (an integer, as LeRobot requires).
        features: ``{key: {"dtype", "shape", "names"}}`` in LeRobot's layout. dtype is a numeric type
            (float32, float64, int64, int32, int16, int8, uint8, bool) with a 1-D shape, or "image" /
            "video" with shape ``(H, W, 3)``. The default columns (timestamp, frame_index, episode_index,
            index, task_index) are added automatically.
        version: "v3.0" (default), "v2.1" or "v2.0".
        video_codec: "av1" (LeRobot's default) or "h264", for "video" features.
        robot_type: written to info.json.
        chunks_size: files per chunk folder.
        data_file_size_mb, video_file_size_mb: v3.0 starts a new data / video file once one reaches
            this size.
        png_compress_level: zlib level of PNG images (1 is fast; decoding speed barely depends on it).
        gop: keyframe interval of videos (2 as LeRobot: cheap random access).
        crf: video quality (default 30 for AV1, 23 for h264).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: int,
        features: dict,
        version: str = "v3.0",
        video_codec: str = "av1",
        robot_type: str | None = None,
        chunks_size: int = 1000,
        data_file_size_mb: float = 100,
        video_file_size_mb: float = 200,
        png_compress_level: int = 1,
        gop: int = 2,
        crf: int | None = None,
    ):
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"LeRobotWriter: version {version!r} not supported; choose one of {SUPPORTED_VERSIONS}"
            )
        if video_codec not in VIDEO_CODECS:
            raise ValueError(
                f"LeRobotWriter: video_codec {video_codec!r} not supported; choose one of {VIDEO_CODECS}"
            )
        if float(fps) != int(fps) or int(fps) <= 0:
            raise ValueError(f"LeRobotWriter: fps must be a positive integer, got {fps}")
        self.root = Path(root)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise FileExistsError(f"LeRobotWriter: {self.root} exists and is not an empty folder")
        self.fps, self.version, self.video_codec, self.robot_type = int(fps), version, video_codec, robot_type
        self.chunks_size = chunks_size
        self.data_file_bytes, self.video_file_bytes = data_file_size_mb * _MB, video_file_size_mb * _MB
        self.png_compress_level, self.gop, self.crf = png_compress_level, gop, crf
        self.user_features = check_features(features)
        self.features = {**self.user_features, **{k: dict(v) for k, v in DEFAULT_FEATURES.items()}}
        self.video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        self.image_keys = [k for k, ft in self.features.items() if ft["dtype"] == "image"]

        self.work = self.root.parent / f"{self.root.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.work.mkdir(parents=True)
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict] = []  # one metadata row per saved episode
        self._columns: dict[str, list[np.ndarray]] = {k: [] for k in self._numeric_keys()}
        self._camera_stats: dict[str, list[dict]] = {k: [] for k in self.image_keys + self.video_keys}
        self._total_frames = 0
        self._data_file = _FileCursor()
        self._data_writer: pq.ParquetWriter | None = None
        self._video_files = {k: _FileCursor() for k in self.video_keys}
        self._encoders: dict[str, VideoEncoder] = {}
        self._episode_from_ts: dict[str, float] = {}
        self._new_episode_buffer()
        self._closed = False

    # -- public API -------------------------------------------------------------------------------
    def add_frame(self, frame: dict, task: str) -> None:
        """Append one frame (``{feature key: value}`` for every feature given at construction)."""
        self._check_open()
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"add_frame: task must be a non-empty string, got {task!r}")
        missing = sorted(set(self.user_features) - set(frame))
        unknown = sorted(set(frame) - set(self.user_features))
        if missing or unknown:
            raise ValueError(
                f"add_frame: frame keys do not match the features (missing {missing}, unknown {unknown}); "
                f"features: {sorted(self.user_features)}"
            )
        values = {key: checked_value(key, self.user_features[key], frame[key]) for key in self.user_features}
        index_in_episode = self._buffer["size"]
        for key, value in values.items():
            dtype = self.user_features[key]["dtype"]
            if dtype == "image":
                self._buffer[key].append(_png(value, self.png_compress_level))
            elif dtype == "video":
                self._encoder(key).add(value)
            else:
                self._buffer[key].append(value)
            if dtype in CAMERA_DTYPES:
                self._buffer["pixels"][key].append(value[::8, ::8].reshape(-1, 3))
        self._buffer["task"].append(task)
        self._buffer["size"] = index_in_episode + 1

    def save_episode(self) -> None:
        """Write the frames added since the last call as one episode."""
        self._check_open()
        length = self._buffer["size"]
        if length == 0:
            raise ValueError("save_episode: no frames were added since the last episode")
        episode_index, start = len(self._episodes), self._total_frames
        for task in self._buffer["task"]:
            self._tasks.setdefault(task, len(self._tasks))
        frame_index = np.arange(length, dtype=np.int64)
        columns = {key: np.stack(self._buffer[key]) for key in self.user_features if key in self._columns}
        columns.update(
            timestamp=(frame_index / self.fps).astype(np.float32)[:, None],
            frame_index=frame_index[:, None],
            episode_index=np.full((length, 1), episode_index, dtype=np.int64),
            index=np.arange(start, start + length, dtype=np.int64)[:, None],
            task_index=np.array([self._tasks[t] for t in self._buffer["task"]], dtype=np.int64)[:, None],
        )
        stats = {key: feature_stats(columns[key]) for key in columns}
        for key, pixels in self._buffer["pixels"].items():
            stats[key] = pixel_stats(np.concatenate(pixels))
            self._camera_stats[key].append(stats[key])
        for key, array in columns.items():
            self._columns[key].append(array)

        table = self._episode_table(columns, episode_index)
        row = {
            "episode_index": episode_index,
            "tasks": list(dict.fromkeys(self._buffer["task"])),
            "length": length,
        }
        row.update(self._write_data(table, episode_index))
        row.update(dataset_from_index=start, dataset_to_index=start + length)
        row.update(self._finish_videos(episode_index, length))
        row["stats"] = stats
        self._episodes.append(row)
        self._total_frames += length
        self._new_episode_buffer()

    def finalize(self) -> Path:
        """Close all files, write ``meta/`` and move the dataset into place. Returns ``root``."""
        self._check_open()
        if self._buffer["size"]:
            raise ValueError(
                f"finalize: {self._buffer['size']} frames were added but not saved; call save_episode()"
            )
        if not self._episodes:
            raise ValueError("finalize: no episodes were saved")
        if self._data_writer is not None:
            self._data_writer.close()
        for encoder in self._encoders.values():
            encoder.close()
        self._write_meta()
        if self.root.exists():  # an empty folder (checked at construction) is replaced
            self.root.rmdir()
        os.rename(self.work, self.root)
        self._closed = True
        return self.root

    def abort(self) -> None:
        """Discard everything written so far (removes the temporary folder)."""
        for encoder in self._encoders.values():
            with contextlib.suppress(Exception):  # best effort: we are discarding anyway
                encoder.close()
        if self._data_writer is not None:
            self._data_writer.close()
        shutil.rmtree(self.work, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    # -- episodes -----------------------------------------------------------------------------------
    def _numeric_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] not in CAMERA_DTYPES]

    def _new_episode_buffer(self) -> None:
        self._buffer = {key: [] for key in self.user_features if self.user_features[key]["dtype"] != "video"}
        self._buffer.update(size=0, task=[], pixels={k: [] for k in self.image_keys + self.video_keys})

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"LeRobotWriter for {self.root} is already finalized or aborted")

    def _episode_table(self, columns: dict[str, np.ndarray], episode_index: int) -> pa.Table:
        arrays, fields = [], []
        for key, ft in self.features.items():
            if ft["dtype"] == "video":
                continue
            if ft["dtype"] == "image":
                blobs = self._buffer[key]
                paths = [f"frame-{i:06d}.png" for i in range(len(blobs))]
                array = pa.StructArray.from_arrays(
                    [pa.array(blobs, pa.binary()), pa.array(paths, pa.string())], names=["bytes", "path"]
                )
            else:
                values, arrow_type = columns[key], ARROW_TYPES[ft["dtype"]]
                flat = pa.array(values.reshape(-1), type=arrow_type)
                array = (
                    flat if ft["shape"] == [1] else pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
                )
            arrays.append(array)
            fields.append(pa.field(key, array.type))
        metadata = {"huggingface": json.dumps({"info": {"features": hf_features(self.features)}})}
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))

    def _write_data(self, table: pa.Table, episode_index: int) -> dict:
        if self.version != "v3.0":
            rel = V2_DATA_PATH.format(
                episode_chunk=episode_index // self.chunks_size, episode_index=episode_index
            )
            (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, self.work / rel, compression="snappy")
            return {}
        cursor = self._data_file
        if self._data_writer is None:
            path = self.work / V3_DATA_PATH.format(chunk_index=cursor.chunk, file_index=cursor.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        self._data_writer.write_table(table)  # one row group per episode, as LeRobot writes
        location = {"data/chunk_index": cursor.chunk, "data/file_index": cursor.file}
        cursor.bytes += table.nbytes
        if cursor.bytes >= self.data_file_bytes:
            self._data_writer.close()
            self._data_writer = None
            cursor.advance(self.chunks_size)
        return location

    def _encoder(self, key: str) -> VideoEncoder:
        encoder = self._encoders.get(key)
        if encoder is None:
            height, width, _ = self.features[key]["shape"]
            episode_index = len(self._episodes)
            if self.version == "v3.0":
                cursor = self._video_files[key]
                rel = V3_VIDEO_PATH.format(video_key=key, chunk_index=cursor.chunk, file_index=cursor.file)
            else:
                chunk = episode_index // self.chunks_size
                rel = V2_VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=episode_index)
            encoder = VideoEncoder(
                self.work / rel, fps=self.fps, width=width, height=height, codec=self.video_codec,
                gop=self.gop, crf=self.crf,
            )  # fmt: skip
            self._encoders[key] = encoder
        if self._buffer["size"] == 0 or key not in self._episode_from_ts:
            self._episode_from_ts[key] = encoder.num_frames / self.fps
        return encoder

    def _finish_videos(self, episode_index: int, length: int) -> dict:
        row = {}
        for key in self.video_keys:
            encoder = self._encoders[key]
            start = self._episode_from_ts.pop(key)
            if self.version != "v3.0":
                encoder.close()
                del self._encoders[key]
                continue
            cursor = self._video_files[key]
            row.update(
                {
                    f"videos/{key}/chunk_index": cursor.chunk,
                    f"videos/{key}/file_index": cursor.file,
                    f"videos/{key}/from_timestamp": start,
                    f"videos/{key}/to_timestamp": start + length / self.fps,
                }
            )
            if encoder.estimated_bytes >= self.video_file_bytes:
                encoder.close()
                del self._encoders[key]
                cursor.advance(self.chunks_size)
        return row

    # -- meta -----------------------------------------------------------------------------------------
    def _write_meta(self) -> None:
        meta = self.work / "meta"
        meta.mkdir(exist_ok=True)
        info = self._info()
        (meta / "info.json").write_text(json.dumps(info, indent=4))
        if self.version == "v3.0":
            tasks = pd.DataFrame({"task_index": list(self._tasks.values())}, index=list(self._tasks))
            tasks.to_parquet(self.work / V3_TASKS_PATH)
            rows = []
            for ep in self._episodes:
                row = {k: v for k, v in ep.items() if k != "stats"}
                for key, stats in ep["stats"].items():
                    row.update({f"stats/{key}/{name}": value.tolist() for name, value in stats.items()})
                row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
                rows.append(row)
            path = self.work / V3_EPISODES_PATH.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), path, compression="snappy")
        else:
            _write_jsonl(
                self.work / V2_TASKS_PATH, [{"task_index": i, "task": t} for t, i in self._tasks.items()]
            )
            _write_jsonl(
                self.work / V2_EPISODES_PATH,
                [{k: ep[k] for k in ("episode_index", "tasks", "length")} for ep in self._episodes],
            )
            if self.version == "v2.1":
                _write_jsonl(
                    self.work / V21_EPISODES_STATS_PATH,
                    [
                        {"episode_index": ep["episode_index"], "stats": stats_to_json(ep["stats"])}
                        for ep in self._episodes
                    ],
                )
        if self.version != "v2.1":  # v2.1 moved dataset statistics to episodes_stats.jsonl
            (self.work / STATS_PATH).write_text(json.dumps(stats_to_json(self._dataset_stats()), indent=4))

    def _info(self) -> dict:
        features = {}
        for key, ft in self.features.items():
            features[key] = {"dtype": ft["dtype"], "shape": list(ft["shape"]), "names": ft.get("names")}
            if ft["dtype"] == "video":
                height, width, channels = ft["shape"]
                video = {
                    "video.height": height,
                    "video.width": width,
                    "video.codec": self.video_codec,
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": channels,
                    "has_audio": False,
                }
                features[key]["video_info" if self.version == "v2.0" else "info"] = video
        num_episodes = len(self._episodes)
        info = {
            "codebase_version": self.version,
            "robot_type": self.robot_type,
            "total_episodes": num_episodes,
            "total_frames": self._total_frames,
            "total_tasks": len(self._tasks),
        }
        if self.version == "v3.0":
            info.update(
                chunks_size=self.chunks_size,
                data_files_size_in_mb=self.data_file_bytes / _MB,
                video_files_size_in_mb=self.video_file_bytes / _MB,
                fps=self.fps,
                splits={"train": f"0:{num_episodes}"},
                data_path=V3_DATA_PATH,
                video_path=V3_VIDEO_PATH if self.video_keys else None,
            )
        else:
            info.update(
                total_videos=num_episodes * len(self.video_keys),
                total_chunks=math.ceil(num_episodes / self.chunks_size),
                chunks_size=self.chunks_size,
                fps=self.fps,
                splits={"train": f"0:{num_episodes}"},
                data_path=V2_DATA_PATH,
                video_path=V2_VIDEO_PATH if self.video_keys else None,
            )
        info["features"] = features
        return info

    def _dataset_stats(self) -> dict:
        stats = {key: feature_stats(np.concatenate(parts)) for key, parts in self._columns.items()}
        for key, per_episode in self._camera_stats.items():
            stats[key] = merge_pixel_stats(per_episode)
        return stats


# -- helpers ------------------------------------------------------------------------------------------


class _FileCursor:
    """chunk/file indices of the file being written (v3.0) and the bytes written to it so far."""

    def __init__(self) -> None:
        self.chunk, self.file, self.bytes = 0, 0, 0

    def advance(self, chunks_size: int) -> None:
        self.file += 1
        if self.file == chunks_size:
            self.chunk, self.file = self.chunk + 1, 0
        self.bytes = 0


def _png(image: np.ndarray, level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
