"""Prove that every file a dataset's episodes need opens and is long enough, without decoding frames.

- a data parquet file: its footer parses and it has the rows its episodes occupy (a file cut short
  loses its footer: parquet keeps it at the end);
- a video file: the container and its first video stream open, and its packets (demuxed, not decoded)
  reach the last frame of every episode it holds, both in count and in presentation time (a video cut
  short can keep a valid header when its index sits at the start, "faststart").

Cost: parquet footers are kilobytes; a video is read once, end to end, at disk speed (demuxing copies
packets, it decodes nothing). Numeric values are checked by the statistics step, which reads them anyway.
Every error is a ``DatasetFormatError`` naming the file and an episode it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from data_adapters.lerobot_format import DatasetFormatError, DatasetMeta, EpisodeMeta

# A frame at time t "is there" when a packet starts within this fraction of a frame period of t
# (the reader's own tolerance, data_adapters.video.VideoFrameReader).
_TOLERANCE_FRAMES = 0.4


@dataclass(frozen=True)
class FileNeed:
    """What the episodes need from one file: rows of a data file, or the end time of a video."""

    path: str  # relative to the dataset root
    kind: str  # "data" | "video"
    episodes: tuple[int, ...]
    rows: int = 0  # data: rows the episodes occupy (the largest row_stop)
    key: str = ""  # video: the camera key
    # video: (episode, presentation time of its last frame) for every episode in the file
    ends: tuple[tuple[int, float], ...] = ()

    @property
    def last_frame_s(self) -> float:
        return max(t for _, t in self.ends)

    def frames(self, fps: float) -> int:
        """Frames a video must hold: one per frame period from t=0 up to the last frame needed."""
        return int(round(self.last_frame_s * fps)) + 1


def needs(meta: DatasetMeta, episodes: Iterable[EpisodeMeta]) -> list[FileNeed]:
    """One ``FileNeed`` per data and video file of ``episodes``, in a stable order."""
    data: dict[str, list[EpisodeMeta]] = {}
    video: dict[tuple[str, str], list[EpisodeMeta]] = {}
    for ep in episodes:
        data.setdefault(ep.data_path, []).append(ep)
        for key, span in ep.videos.items():
            video.setdefault((span.path, key), []).append(ep)
    out = [
        FileNeed(rel, "data", tuple(e.index for e in eps), rows=max(e.row_stop for e in eps))
        for rel, eps in sorted(data.items())
    ]
    for (rel, key), eps in sorted(video.items()):
        # Frame t of an episode is shown at from_timestamp + t / fps (LeRobot's convention).
        ends = tuple((e.index, e.videos[key].from_timestamp + (e.length - 1) / meta.fps) for e in eps)
        out.append(FileNeed(rel, "video", tuple(e.index for e in eps), key=key, ends=ends))
    return out


def check_file(root: Path, need: FileNeed, fps: float) -> dict:
    """Raise ``DatasetFormatError`` unless the file opens and covers ``need``; return what was found."""
    path = Path(root) / need.path
    if not path.is_file():
        raise DatasetFormatError(f"missing {need.kind} file {path} ({_episodes(need)})")
    if need.kind == "data":
        return _check_parquet(path, need)
    return _check_video(path, need, fps)


def _episodes(need: FileNeed) -> str:
    shown = ", ".join(str(e) for e in need.episodes[:5]) + (", ..." if len(need.episodes) > 5 else "")
    return f"episode {shown}" if len(need.episodes) == 1 else f"episodes {shown}"


def _check_parquet(path: Path, need: FileNeed) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as err:
        raise DatasetFormatError(f"corrupt parquet file {path} ({_episodes(need)}): {err}") from None
    if rows < need.rows:
        raise DatasetFormatError(f"data file {path} has {rows} rows, but its {_episodes(need)} need "
                                 f"{need.rows} (truncated file?)")  # fmt: skip
    return {"rows": rows}


def _check_video(path: Path, need: FileNeed, fps: float) -> dict:
    import av

    where = f"{need.key}, {_episodes(need)}"
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError) as err:
        # FFmpeg's message repeats the path; its reason alone ("Invalid data found when processing input").
        reason = getattr(err, "strerror", None) or str(err)
        raise DatasetFormatError(f"video {path} ({where}) does not open: {reason}") from None
    try:
        if not container.streams.video:
            raise DatasetFormatError(f"video {path} ({where}) has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None or not stream.time_base:
            raise DatasetFormatError(f"video {path} ({where}) has no decodable video stream header")
        start, base = stream.start_time or 0, float(stream.time_base)
        count, last = 0, None
        try:
            for packet in container.demux(stream):
                if packet.size > 0 and packet.pts is not None:
                    count += 1
                    last = packet.pts if last is None else max(last, packet.pts)
        except (av.error.FFmpegError, OSError) as err:
            raise DatasetFormatError(
                f"video {path} ({where}) cannot be read after {count} frames: {err}"
            ) from None
    finally:
        container.close()
    last_s = (last - start) * base if last is not None else -1.0
    tolerance = _TOLERANCE_FRAMES / fps
    if count < need.frames(fps) or last_s < need.last_frame_s - tolerance:
        found = "no frames" if last is None else f"{count} frames, the last at t={last_s:.3f}s"
        # The first episode the file does not cover (by time, else by count), to name in the message.
        short = [(ep, t) for ep, t in need.ends if t > last_s + tolerance or round(t * fps) + 1 > count]
        ep, t = min(short, key=lambda e: e[1]) if short else max(need.ends, key=lambda e: e[1])
        raise DatasetFormatError(f"video {path} ({need.key}) is cut short: it holds {found}, but episode {ep} "
                                 f"needs frames up to t={t:.3f}s ({int(round(t * fps)) + 1} frames)")  # fmt: skip
    return {"frames": count, "last_frame_s": round(last_s, 6)}
