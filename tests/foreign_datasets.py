"""LeRobot datasets written here with pyarrow and PyAV directly, not with data_adapters' writer, in the
layouts public datasets use:

- v2.0 as physical-intelligence/libero: one parquet file per episode, cameras as PNG structs
  (``{"bytes": binary, "path": string}``) inside it, ``state`` [8] and ``actions`` [7] as float32 lists,
  ``meta/episodes.jsonl``, ``meta/tasks.jsonl``, ``meta/stats.json``;
- v2.1 with one mp4 (h264) per episode and camera, ``meta/episodes_stats.jsonl``.

Values are functions of (episode, frame), so a test can name the exact value it breaks. Parquet files are
written uncompressed and without dictionary encoding, so one float can be changed in place with the
file size unchanged.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

FPS = 10
LENGTHS = (12, 10, 14, 11)
STATE_DIM, ACTION_DIM = 8, 7
IMAGE_SIZE = 32
CAMERAS = ("image", "wrist_image")
TASK = "put the bowl on the plate"
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def state(ep: int, t: int) -> np.ndarray:
    return (np.arange(STATE_DIM) * 0.1 + ep + 0.01 * t).astype(np.float32)


def action(ep: int, t: int) -> np.ndarray:
    return (np.sin(np.arange(ACTION_DIM) + 0.3 * t) + 0.5 * ep).astype(np.float32)


def image(ep: int, t: int, cam: int) -> np.ndarray:
    y, x = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    img = np.stack([(4 * x + 60 * cam) % 256, (4 * y + 30 * ep) % 256, np.full_like(x, 8 * t % 256)], -1)
    return img.astype(np.uint8)


def _features(camera_dtype: str) -> dict:
    cams = {cam: {"dtype": camera_dtype, "shape": [IMAGE_SIZE, IMAGE_SIZE, 3],
                  "names": ["height", "width", "channel"]} for cam in CAMERAS}  # fmt: skip
    if camera_dtype == "video":
        for cam in CAMERAS:
            cams[cam]["info"] = {"video.fps": FPS, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                                 "video.height": IMAGE_SIZE, "video.width": IMAGE_SIZE, "has_audio": False}  # fmt: skip
    return {
        **cams,
        "state": {"dtype": "float32", "shape": [STATE_DIM], "names": ["state"]},
        "actions": {"dtype": "float32", "shape": [ACTION_DIM], "names": ["actions"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG")
    return out.getvalue()


def _episode_table(ep: int, first_index: int, with_images: bool):
    import pyarrow as pa

    n = LENGTHS[ep]
    columns = {}
    if with_images:
        struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        for c, cam in enumerate(CAMERAS):
            columns[cam] = pa.array(
                [{"bytes": _png(image(ep, t, c)), "path": None} for t in range(n)], struct
            )
    columns["state"] = pa.array([state(ep, t).tolist() for t in range(n)], pa.list_(pa.float32()))
    columns["actions"] = pa.array([action(ep, t).tolist() for t in range(n)], pa.list_(pa.float32()))
    columns["timestamp"] = pa.array(np.arange(n, dtype=np.float32) / FPS)
    columns["frame_index"] = pa.array(np.arange(n, dtype=np.int64))
    columns["episode_index"] = pa.array(np.full(n, ep, dtype=np.int64))
    columns["index"] = pa.array(np.arange(first_index, first_index + n, dtype=np.int64))
    columns["task_index"] = pa.array(np.zeros(n, dtype=np.int64))
    return pa.table(columns)


def _stats(values: np.ndarray) -> dict:
    return {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(), "min": values.min(0).tolist(),
            "max": values.max(0).tolist(), "count": [len(values)]}  # fmt: skip


def _write_meta(root: Path, version: str, camera_dtype: str) -> None:
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    videos = len(LENGTHS) * len(CAMERAS) if camera_dtype == "video" else 0
    info = {
        "codebase_version": version, "robot_type": "panda", "total_episodes": len(LENGTHS),
        "total_frames": sum(LENGTHS), "total_tasks": 1, "total_videos": videos, "total_chunks": 1,
        "chunks_size": 1000, "fps": FPS, "splits": {"train": f"0:{len(LENGTHS)}"}, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if camera_dtype == "video" else None, "features": _features(camera_dtype),
    }  # fmt: skip
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    (meta / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": TASK}) + "\n")
    (meta / "episodes.jsonl").write_text(
        "".join(
            json.dumps({"episode_index": e, "tasks": [TASK], "length": n}) + "\n"
            for e, n in enumerate(LENGTHS)
        )
    )
    states = [np.stack([state(e, t) for t in range(n)]) for e, n in enumerate(LENGTHS)]
    actions = [np.stack([action(e, t) for t in range(n)]) for e, n in enumerate(LENGTHS)]
    if version == "v2.0":
        stats = {"state": _stats(np.concatenate(states)), "actions": _stats(np.concatenate(actions))}
        (meta / "stats.json").write_text(json.dumps(stats, indent=4))
    else:
        lines = [json.dumps({"episode_index": e, "stats": {"state": _stats(s), "actions": _stats(a)}})
                 for e, (s, a) in enumerate(zip(states, actions, strict=True))]  # fmt: skip
        (meta / "episodes_stats.jsonl").write_text("\n".join(lines) + "\n")


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="none", use_dictionary=False)


def _write_mp4(path: Path, frames: list[np.ndarray]) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"g": "2", "bf": "0", "crf": "23"})
        stream.width = stream.height = IMAGE_SIZE
        stream.pix_fmt = "yuv420p"
        for n, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = n
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_libero_v20(root: Path) -> Path:
    """physical-intelligence/libero's layout: v2.0, PNG structs in one parquet file per episode."""
    first = 0
    for ep in range(len(LENGTHS)):
        _write_parquet(_episode_table(ep, first, with_images=True), root / data_file(ep))
        first += LENGTHS[ep]
    _write_meta(root, "v2.0", "image")
    return root


def write_v21_mp4(root: Path) -> Path:
    """v2.1 with one h264 mp4 per episode and camera (PyAV directly) and numeric parquet files."""
    first = 0
    for ep, n in enumerate(LENGTHS):
        _write_parquet(_episode_table(ep, first, with_images=False), root / data_file(ep))
        for c, cam in enumerate(CAMERAS):
            _write_mp4(root / video_file(ep, cam), [image(ep, t, c) for t in range(n)])
        first += n
    _write_meta(root, "v2.1", "video")
    return root


def data_file(ep: int) -> str:
    return DATA_PATH.format(episode_chunk=0, episode_index=ep)


def video_file(ep: int, cam: str) -> str:
    return VIDEO_PATH.format(episode_chunk=0, video_key=cam, episode_index=ep)


def set_float_in_place(path: Path, old: float, new: float) -> None:
    """Overwrite the one float32 ``old`` in a parquet file with ``new``, keeping the file's size (the files
    here are uncompressed PLAIN, so each value is its 4 bytes, once; statistics in the footer stay)."""
    data = bytearray(path.read_bytes())
    needle = np.float32(old).tobytes()
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, f"{old} is not stored exactly once in {path}"
    data[at : at + 4] = np.float32(new).tobytes()
    with open(path, "r+b") as handle:  # in place: same inode, same size
        handle.write(data)


def corrupt_pngs(root: Path, camera: str = CAMERAS[0]) -> None:
    """Zero 20 bytes of every ``camera`` PNG's image data in place (a v2.0 dataset from write_libero_v20):
    the parquet files stay valid, decoding any of those images fails."""
    c = CAMERAS.index(camera)
    for ep, n in enumerate(LENGTHS):
        path = root / data_file(ep)
        data = bytearray(path.read_bytes())
        for t in range(n):
            png = _png(image(ep, t, c))
            at = data.find(png) + png.find(b"IDAT") + 10
            data[at : at + 20] = bytes(20)
        with open(path, "r+b") as handle:
            handle.write(data)


def config_yaml(path: Path, dataset: Path, name: str = "foreign_libero") -> Path:
    """A custom config type naming ``dataset`` itself (pi05_libero's schema: image, wrist_image, state, actions)."""
    path.write_text(f"extends: pi05_libero\nname: {name}\ndataset:\n  path: {dataset}\n")
    return path
