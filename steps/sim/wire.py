"""Messages between the rollout loop and a simulator worker process: JSON plus raw numpy buffers.

A frame is ``[u32 header length][header JSON][buffer 0][buffer 1]...``; arrays inside the message are
replaced in the JSON by ``{"__array__": i, "dtype": ..., "shape": [...]}`` and their bytes follow the
header. No pickle: a worker may run another Python (a simulator's own venv), and nothing is executed
when a message is read. Only numpy and the standard library are imported, so this module loads in any
simulator's environment.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

import numpy as np

_LEN = struct.Struct("<Q")
_ARRAY = "__array__"
# Observations of two 256² cameras are ~400 KB; a cap far above that catches a desynchronised stream.
MAX_MESSAGE_BYTES = 1 << 30


def _strip(value: Any, buffers: list[bytes]) -> Any:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        buffers.append(array.tobytes())
        return {_ARRAY: len(buffers) - 1, "dtype": array.dtype.str, "shape": list(array.shape)}
    if isinstance(value, dict):
        return {str(k): _strip(v, buffers) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strip(v, buffers) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode(message: Any) -> bytes:
    buffers: list[bytes] = []
    header = _strip(message, buffers)
    head = json.dumps({"body": header, "sizes": [len(b) for b in buffers]}).encode()
    payload = b"".join([_LEN.pack(len(head)), head, *buffers])
    return _LEN.pack(len(payload)) + payload


def _restore(value: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value:
            return arrays[value[_ARRAY]]
        return {k: _restore(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, arrays) for v in value]
    return value


def decode(payload: bytes) -> Any:
    (head_len,) = _LEN.unpack_from(payload, 0)
    head = json.loads(payload[_LEN.size : _LEN.size + head_len])
    offset = _LEN.size + head_len
    descs: list[dict] = []

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            if _ARRAY in value:
                descs.append(value)
            else:
                for v in value.values():
                    collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(head["body"])
    descs.sort(key=lambda d: d[_ARRAY])
    arrays = []
    for desc, size in zip(descs, head["sizes"], strict=True):
        dtype = np.dtype(desc["dtype"])
        if dtype.hasobject:  # object arrays would need pickle; plain numbers only
            raise ValueError(f"simulator worker message: array of dtype {dtype} refused")
        raw = payload[offset : offset + size]
        arrays.append(np.frombuffer(raw, dtype=dtype).reshape(desc["shape"]).copy())
        offset += size
    return _restore(head["body"], arrays)


def write_message(stream: BinaryIO, message: Any) -> None:
    stream.write(encode(message))
    stream.flush()


def read_message(stream: BinaryIO) -> Any:
    """The next message, or EOFError when the other side closed the stream."""
    raw = _read_exactly(stream, _LEN.size)
    (size,) = _LEN.unpack(raw)
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"simulator worker message of {size} bytes: the stream is out of step")
    return decode(_read_exactly(stream, size))


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("simulator worker closed its stream")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
