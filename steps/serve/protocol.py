"""msgpack with numpy arrays in openpi-client's encoding; decoding is strict and never unpickles.

openpi-client 0.1.2 (``openpi_client/msgpack_numpy.py``) sends an array as the map
``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": "<f4", b"shape": [...]}`` and a numpy scalar
as ``{b"__npgeneric__": True, b"data": <value>, b"dtype": "<f4"}``; everything else is plain msgpack.
The server packs its answers the same way, so the client's ``unpackb`` reads them.

Decoding trusts nothing from the wire: only bool, integer, float and fixed-width string dtypes are
accepted (object, void/structured and complex arrays are refused), the bytes must be exactly
itemsize x prod(shape), and the nesting depth is bounded. The message size is bounded by the
websocket server (``max_size``) before any of this runs.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgpack
import numpy as np

ARRAY_TAG = b"__ndarray__"
SCALAR_TAG = b"__npgeneric__"
# Maps and lists inside maps: openpi observations are one or two levels deep.
MAX_DEPTH = 16
MAX_NDIM = 32  # numpy's own limit is 64; no observation comes close
# What numpy's dtype.str looks like for the accepted kinds: '|b1', '|u1', '<i8', '<f4', '<U12', '|S3'.
_DTYPE_TEXT = re.compile(r"[<>|=]?(?:[biuf]\d{1,2}|[US]\d{1,6})")
_KINDS = "biufUS"


class ProtocolError(ValueError):
    """A message that is not msgpack-numpy as openpi-client writes it; the text names the key."""


def pack(obj: Any) -> bytes:
    """``obj`` (dicts, lists, str, numbers, numpy arrays and scalars) as one msgpack message."""
    return msgpack.packb(obj, default=_encode)


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind not in _KINDS:
        raise TypeError(f"cannot send numpy dtype {obj.dtype} (only bool, integer, float, string)")
    if isinstance(obj, np.ndarray):
        # tobytes() is C order whatever the array's layout, which is what the shape describes.
        return {ARRAY_TAG: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {SCALAR_TAG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def unpack(message: bytes) -> Any:
    """One msgpack message -> Python objects with numpy arrays restored.

    Raises:
        ProtocolError: not msgpack, an array or scalar with a refused dtype, a bad shape, data of the
            wrong length, or nesting deeper than ``MAX_DEPTH``; the message names the key.
    """
    try:
        # strict_map_key (the default) allows only str/bytes map keys; raw=False decodes str as str.
        tree = msgpack.unpackb(message, raw=False)
    except Exception as err:  # msgpack raises ExtraData, FormatError, StackError, ValueError, ...
        raise ProtocolError(f"the message is not valid msgpack ({type(err).__name__}: {err})") from None
    return _restore(tree, "", 0)


def _restore(node: Any, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"{_name(where)}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, dict):
        if ARRAY_TAG in node:
            return _array(node, where)
        if SCALAR_TAG in node:
            return _scalar(node, where)
        return {key: _restore(value, _join(where, key), depth + 1) for key, value in node.items()}
    if isinstance(node, list):
        return [_restore(value, f"{where}[{i}]", depth + 1) for i, value in enumerate(node)]
    return node


def _join(where: str, key: Any) -> str:
    key = key if isinstance(key, str) else repr(key)
    return key if not where else f"{where}[{key!r}]"


def _name(where: str) -> str:
    return repr(where) if where else "the message"


def _dtype(text: Any, where: str) -> np.dtype:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not (isinstance(text, str) and _DTYPE_TEXT.fullmatch(text)):
        raise ProtocolError(
            f"{_name(where)}: dtype {text!r} is refused; only bool, integer, float and fixed-width string "
            "dtypes are accepted (no object, void/structured or complex arrays)"
        )
    dtype = np.dtype(text)
    if dtype.kind not in _KINDS:  # the pattern admits nothing else; kept as the one rule that matters
        raise ProtocolError(f"{_name(where)}: dtype {text!r} is refused")
    return dtype


def _array(node: dict, where: str) -> np.ndarray:
    dtype = _dtype(node.get(b"dtype"), where)
    shape = node.get(b"shape")
    shape_ok = isinstance(shape, list) and len(shape) <= MAX_NDIM
    if not (shape_ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ProtocolError(
            f"{_name(where)}: array shape must be a list of at most {MAX_NDIM} integers >= 0, got {shape!r}"
        )
    data = node.get(b"data")
    if not isinstance(data, bytes):
        raise ProtocolError(f"{_name(where)}: array data must be bytes, got {type(data).__name__}")
    needed = dtype.itemsize * math.prod(shape)
    if len(data) != needed:
        raise ProtocolError(
            f"{_name(where)}: array data has {len(data)} bytes, but dtype {dtype.str} x shape {shape} "
            f"needs {needed}"
        )
    # A copy: frombuffer views the message bytes read-only, and torch warns on read-only arrays.
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _scalar(node: dict, where: str) -> np.generic:
    dtype = _dtype(node.get(b"dtype"), where)
    data = node.get(b"data")
    if not isinstance(data, bool | int | float | str | bytes):
        raise ProtocolError(f"{_name(where)}: numpy scalar data must be a number or string, got {data!r}")
    try:
        return dtype.type(data)
    except (TypeError, ValueError, OverflowError) as err:
        raise ProtocolError(f"{_name(where)}: {data!r} is not a {dtype.str} value ({err})") from None
