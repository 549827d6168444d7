"""Random-access video frame decoding with PyAV (AV1 through libdav1d, h264 through FFmpeg).

A dataloader asks for one frame at a time, in random order. Each request seeks to the keyframe at or
before the wanted timestamp and decodes forward until the frame whose presentation time matches; with
LeRobot's default keyframe interval (``g=2``) that is one or two decoded frames. When the next request is
a little further on in the same file (sequential reading), decoding simply continues without a seek.

Fork safety: a :class:`VideoFrameReader` opens containers lazily, on first use, and remembers the process
that opened them. A reader copied into a forked DataLoader worker sets the parent's containers aside and
opens its own, so no FFmpeg state is shared between processes. The inherited objects are deliberately
never freed in the child: their decoder and scaler threads did not survive the fork, and freeing them
waits for those threads forever. Decoding in the parent before forking is therefore safe, but costs a
little memory in each worker; avoid it when you can.

Colour conversion uses one scaler per reader with a single thread: FFmpeg's default (a scaler per frame
with a thread per core) spends more time starting threads than converting a 256x256 frame.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# FFmpeg objects a forked child inherited from its parent (see the module docstring): kept, never freed.
_INHERITED_FROM_PARENT: list = []


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or does not hold a frame at the requested time."""

    def __init__(self, path: str | Path, reason: str | None = None):
        # One argument: the whole message (how a torch DataLoader re-raises it from a worker process).
        super().__init__(f"{path}: {reason}" if reason is not None else str(path))
        self.path = str(path)
        self.reason = reason


@dataclass
class _OpenVideo:
    """One open container and where its decoder currently stands."""

    container: Any
    stream: Any
    frames: Any = None  # live generator from container.decode(stream) (None right after opening)
    current: Any = None  # last frame handed out (av.VideoFrame)
    current_time: float = -1.0
    frame_period: float = 0.0


class VideoFrameReader:
    """Decode single RGB frames from video files at given timestamps.

    Args:
        max_open: how many containers to keep open per process (least recently used are closed). v2.x
            datasets have one file per episode and camera, so this must stay bounded.
        threads: decoder threads per container. 1 is right inside DataLoader workers on a small machine
            (the workers already use every core); more helps a single-process reader.
        tolerance_frames: a frame matches a timestamp when they differ by at most this fraction of the
            frame period. 0.4 accepts float32 rounding of timestamps but never the neighbouring frame, so a
            truncated or gapped video is reported instead of silently returning a wrong frame.
        forward_window_s: continue decoding without a seek when the wanted time lies at most this far
            after the last decoded frame (cheaper than a seek for sequential access).
    """

    def __init__(
        self,
        *,
        max_open: int = 16,
        threads: int = 1,
        tolerance_frames: float = 0.4,
        forward_window_s: float = 0.25,
    ):
        self.max_open = max_open
        self.threads = threads
        self.tolerance_frames = tolerance_frames
        self.forward_window_s = forward_window_s
        self._open: OrderedDict[str, _OpenVideo] = OrderedDict()
        self._reformatter = VideoReformatter()
        self._pid = os.getpid()

    # -- public API -------------------------------------------------------------------------------
    def frame_at(self, path: str | Path, timestamp: float) -> np.ndarray:
        """Return the frame shown at ``timestamp`` seconds as uint8 ``[H, W, 3]`` (RGB).

        Raises:
            VideoDecodeError: the file cannot be opened or decoded, or holds no frame within tolerance
                of ``timestamp`` (e.g. a truncated file).
        """
        key = str(path)
        try:
            video = self._get(key)
            frame = self._decode_until(video, float(timestamp), key)
            return self._to_rgb(frame)
        except VideoDecodeError:
            self._close(key)
            raise
        except (av.error.FFmpegError, OSError, ValueError) as err:
            self._close(key)
            raise VideoDecodeError(key, f"decoding failed near t={timestamp:.4f}s: {err}") from err

    def frames_at(self, path: str | Path, timestamps) -> np.ndarray:
        """Frames at several timestamps, stacked to uint8 ``[N, H, W, 3]``."""
        return np.stack([self.frame_at(path, t) for t in timestamps])

    def close(self) -> None:
        """Close every open container (only those this process opened)."""
        for key in list(self._open):
            self._close(key)

    def __getstate__(self) -> dict:
        # Containers never travel to another process (spawned workers start with none open).
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        state["_reformatter"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reformatter = VideoReformatter()

    # -- internals --------------------------------------------------------------------------------
    def _get(self, key: str) -> _OpenVideo:
        if self._pid != os.getpid():
            # Forked child: the parent's containers are not ours to use, close or free.
            _INHERITED_FROM_PARENT.append((self._open, self._reformatter))
            self._open, self._reformatter = OrderedDict(), VideoReformatter()
            self._pid = os.getpid()
        video = self._open.get(key)
        if video is not None:
            self._open.move_to_end(key)
            return video
        if not os.path.exists(key):
            raise VideoDecodeError(key, "file does not exist")
        try:
            container = av.open(key, mode="r")
        except av.error.FFmpegError as err:
            raise VideoDecodeError(key, f"cannot open container: {err}") from err
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(key, "no video stream in container")
        stream = container.streams.video[0]
        stream.thread_count = self.threads
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        if not rate:
            container.close()
            raise VideoDecodeError(key, "stream has no frame rate")
        video = _OpenVideo(container=container, stream=stream, frame_period=1.0 / float(rate))
        self._open[key] = video
        while len(self._open) > self.max_open:
            self._close(next(iter(self._open)))
        return video

    def _to_rgb(self, frame) -> np.ndarray:
        try:
            rgb = self._reformatter.reformat(frame, format="rgb24", threads=1)
        except TypeError:  # PyAV < 16 has no `threads` (and its scaler is single-threaded anyway)
            rgb = self._reformatter.reformat(frame, format="rgb24")
        return rgb.to_ndarray()

    def _close(self, key: str) -> None:
        video = self._open.pop(key, None)
        if video is not None:
            with contextlib.suppress(av.error.FFmpegError):
                video.container.close()

    def _decode_until(self, video: _OpenVideo, ts: float, key: str):
        tol = self.tolerance_frames * video.frame_period
        if video.current is not None and abs(video.current_time - ts) <= tol:
            return video.current
        ahead = ts - video.current_time
        if video.frames is None or video.current is None or not (0 < ahead <= self.forward_window_s):
            self._seek(video, ts - tol)
        previous = None
        for frame in video.frames:
            t = _frame_time(frame, video.stream)
            if t < ts - tol:
                previous = frame
                continue
            if t > ts + tol:
                raise VideoDecodeError(
                    key, f"no frame within {tol:.4f}s of t={ts:.4f}s (next frame at {t:.4f}s)"
                )
            video.current, video.current_time = frame, t
            return frame
        last = (
            "no frame decoded"
            if previous is None
            else f"last frame at {_frame_time(previous, video.stream):.4f}s"
        )
        video.frames = None
        raise VideoDecodeError(key, f"video ends before t={ts:.4f}s ({last}); truncated or wrong timestamps")

    def _seek(self, video: _OpenVideo, ts: float) -> None:
        stream = video.stream
        offset = int(np.floor(max(ts, 0.0) / float(stream.time_base)))
        if stream.start_time is not None:
            offset += stream.start_time
        # backward=True lands on the keyframe at or before the offset; decoding forward from there
        # reconstructs the wanted frame exactly.
        video.container.seek(offset, stream=stream, backward=True, any_frame=False)
        video.frames = video.container.decode(stream)
        video.current, video.current_time = None, -1.0


def _frame_time(frame, stream) -> float:
    if frame.pts is None:
        raise VideoDecodeError(str(stream.container.name), "frame without timestamp")
    start = stream.start_time or 0
    return float((frame.pts - start) * stream.time_base)


def video_frame_count(path: str | Path) -> int:
    """Number of frames in a video, counted from its packets (no decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


# -- encoding ---------------------------------------------------------------------------------------

# Codec family -> encoders to try, best first. LeRobot's default is libsvtav1; PyAV wheels without it
# may still have libaom-av1.
_ENCODERS = {"av1": ("libsvtav1", "libaom-av1"), "h264": ("libx264",)}
VIDEO_CODECS = tuple(_ENCODERS)


def pick_encoder(codec: str) -> str:
    """Name of an available FFmpeg encoder for ``codec`` ("av1" or "h264")."""
    if codec not in _ENCODERS:
        raise ValueError(f"unknown video codec {codec!r}; choose one of {VIDEO_CODECS}")
    for name in _ENCODERS[codec]:
        if name in av.codecs_available:
            return name
    raise ValueError(f"no {codec} encoder in this PyAV build (tried {_ENCODERS[codec]}); use another codec")


def _encoder_options(name: str, gop: int, crf: int | None) -> dict[str, str]:
    # g=2 (a keyframe every 2 frames) is LeRobot's choice: random access decodes at most 2 frames.
    if name == "libsvtav1":
        return {"g": str(gop), "crf": str(30 if crf is None else crf), "preset": "12"}
    if name == "libaom-av1":
        return {"g": str(gop), "crf": str(30 if crf is None else crf), "cpu-used": "8", "row-mt": "1"}
    # bf=0: no B-frames, so decode order equals presentation order and no edit list shifts timestamps.
    return {"g": str(gop), "crf": str(23 if crf is None else crf), "bf": "0", "preset": "veryfast"}


class VideoEncoder:
    """Append RGB frames to an mp4 file (yuv420p); frame ``n`` gets presentation time ``n / fps``.

    Frames can be appended across several episodes (LeRobot v3.0 concatenates episodes in one file):
    the caller records ``num_frames / fps`` before an episode as its ``from_timestamp``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fps: int,
        width: int,
        height: int,
        codec: str = "av1",
        gop: int = 2,
        crf: int | None = None,
    ):
        if width % 2 or height % 2:
            raise ValueError(
                f"{path}: video frames need even width and height for yuv420p, got {width}x{height}"
            )
        self.path = Path(path)
        self.encoder_name = pick_encoder(codec)
        self.codec = codec
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 otherwise prints its whole config to stderr
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(
            self.encoder_name, rate=int(fps), options=_encoder_options(self.encoder_name, gop, crf)
        )
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self.width, self.height = width, height
        self.num_frames = 0
        self.num_bytes = 0  # bytes of packets emitted so far
        self._num_packets = 0

    def add(self, rgb: np.ndarray) -> None:
        """Encode one uint8 ``[H, W, 3]`` frame."""
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: expected uint8 frame of shape {(self.height, self.width, 3)}, "
                f"got {rgb.dtype} {tuple(rgb.shape)}"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.num_frames
        self._mux(self._stream.encode(frame))
        self.num_frames += 1

    @property
    def estimated_bytes(self) -> float:
        """File size so far, counting frames still inside the encoder's lookahead at the average rate."""
        pending = self.num_frames - self._num_packets
        per_frame = (
            self.num_bytes / self._num_packets if self._num_packets else self.width * self.height * 0.03
        )
        return self.num_bytes + pending * per_frame

    def close(self) -> None:
        """Flush the encoder and write the container trailer."""
        if self._container is None:
            return
        self._mux(self._stream.encode(None))
        self._container.close()
        self._container = None

    def _mux(self, packets) -> None:
        for packet in packets:
            self.num_bytes += packet.size
            self._num_packets += 1
            self._container.mux(packet)
