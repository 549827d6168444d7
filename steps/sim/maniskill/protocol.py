"""The byte protocol between the main process and the ManiSkill worker (a subprocess in its own venv).

Both sides import only this module, the standard library and numpy, so the worker runs under the ManiSkill
venv's numpy 1.26 and the main process under numpy 2. A message is

    uint32 big-endian header length | JSON header | the raw bytes of each array the header lists

with the header ``{"op" | "ok": ..., ..., "arrays": [{"name", "dtype", "shape"}, ...]}``. Arrays travel as
raw C-order bytes of a dtype from a short allow-list, never pickled; every length is checked against the
header and a bound, so a broken peer gives one clear error instead of a hang or a huge allocation.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

import numpy as np

DTYPES = ("uint8", "bool", "int32", "int64", "float32", "float64")
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAY_BYTES = 1 << 28  # 256 MiB: far above one frame or an episode's actions


class ProtocolError(RuntimeError):
    """The peer sent something that is not a message of this protocol (or closed the pipe)."""


def write_message(
    stream: BinaryIO, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
) -> None:
    arrays = arrays or {}
    specs, blobs = [], []
    for name, value in arrays.items():
        array = np.ascontiguousarray(value)
        if array.dtype.name not in DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {array.dtype} is not one of {DTYPES}")
        specs.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape)})
        blobs.append(array.tobytes())
    body = json.dumps({**header, "arrays": specs}).encode()
    stream.write(struct.pack(">I", len(body)) + body)
    for blob in blobs:
        stream.write(blob)
    stream.flush()


def read_message(stream: BinaryIO) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One message: (header without "arrays", {name: array}). Raises ProtocolError on EOF or bad framing."""
    (length,) = struct.unpack(">I", _read_exactly(stream, 4))
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {length} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    try:
        header = json.loads(_read_exactly(stream, length))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"header is not JSON: {err}") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays", []), list):
        raise ProtocolError("header must be a JSON object with an 'arrays' list")
    arrays = {}
    for spec in header.pop("arrays", []):
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if (
            dtype not in DTYPES
            or not isinstance(shape, list)
            or not all(isinstance(n, int) and n >= 0 for n in shape)
        ):
            raise ProtocolError(f"array {name!r}: bad dtype/shape {dtype!r} / {shape!r}")
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if size > MAX_ARRAY_BYTES:
            raise ProtocolError(f"array {name!r}: {size} bytes exceeds the {MAX_ARRAY_BYTES}-byte limit")
        arrays[name] = np.frombuffer(_read_exactly(stream, size), dtype=dtype).reshape(shape).copy()
    return header, arrays


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            raise ProtocolError(f"pipe closed after {n - left} of {n} expected bytes")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
