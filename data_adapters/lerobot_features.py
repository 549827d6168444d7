"""The features a LeRobotWriter accepts: checked schema, per-frame values, and the arrow types they map to."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from data_adapters.lerobot_format import CAMERA_DTYPES, DEFAULT_FEATURES

ARROW_TYPES = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "int16": pa.int16(),
    "int8": pa.int8(),
    "uint8": pa.uint8(),
    "bool": pa.bool_(),
}


def check_features(features: dict) -> dict:
    if not features:
        raise ValueError("LeRobotWriter: features is empty")
    out = {}
    for key, ft in features.items():
        if key in DEFAULT_FEATURES:
            raise ValueError(
                f"LeRobotWriter: feature {key!r} is written automatically; remove it from features"
            )
        if "/" in key:
            raise ValueError(f"LeRobotWriter: feature name {key!r} must not contain '/'")
        dtype, shape = ft.get("dtype"), [int(s) for s in ft.get("shape") or ()]
        if dtype in CAMERA_DTYPES:
            if len(shape) != 3 or shape[2] != 3:
                raise ValueError(f"LeRobotWriter: camera feature {key!r} needs shape (H, W, 3), got {shape}")
        elif dtype in ARROW_TYPES:
            if len(shape) != 1 or shape[0] < 1:
                raise ValueError(f"LeRobotWriter: numeric feature {key!r} needs a 1-D shape, got {shape}")
        else:
            raise ValueError(
                f"LeRobotWriter: feature {key!r} has dtype {dtype!r}; use one of "
                f"{sorted(ARROW_TYPES) + list(CAMERA_DTYPES)}"
            )
        out[key] = {"dtype": dtype, "shape": shape, "names": ft.get("names")}
    return out


def checked_value(key: str, ft: dict, value) -> np.ndarray:
    if ft["dtype"] in CAMERA_DTYPES:
        array = np.asarray(value)
        if array.dtype != np.uint8 or list(array.shape) != ft["shape"]:
            raise ValueError(
                f"add_frame: {key!r} must be uint8 {tuple(ft['shape'])} (H, W, 3), got {array.dtype} {array.shape}"
            )
        return array
    array = np.asarray(value, dtype=np.dtype(ft["dtype"])).reshape(-1)
    if list(array.shape) != ft["shape"]:
        raise ValueError(f"add_frame: {key!r} must have shape {tuple(ft['shape'])}, got {np.shape(value)}")
    return array


def hf_features(features: dict) -> dict:
    """The ``datasets`` feature description LeRobot stores in parquet schema metadata."""
    out = {}
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        if ft["dtype"] == "image":
            out[key] = {"_type": "Image"}
        elif ft["shape"] == [1]:
            out[key] = {"dtype": ft["dtype"], "_type": "Value"}
        else:
            out[key] = {
                "feature": {"dtype": ft["dtype"], "_type": "Value"},
                "length": ft["shape"][0],
                "_type": "List",
            }
    return out
