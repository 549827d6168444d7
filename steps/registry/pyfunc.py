"""The registered policy as an MLflow pyfunc, logged as code (MLflow models-from-code).

MLflow runs this file to build the model, so loading needs no pickle. Input: a pandas DataFrame (or a
list of dicts), one row per observation, with one column per dataset camera key holding the image as
a base64-encoded PNG string (or a uint8 [h, w, 3] array in-process), ``state`` (list of floats in
robot units) and ``task`` (str). Output: action chunks in robot units, [rows, horizon, action_dim].
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


def encode_image(image: np.ndarray) -> str:
    """uint8 [h, w, 3] -> base64 PNG string (the JSON encoding for images)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(value: Any, *, column: str, row: int) -> np.ndarray:
    """A base64 PNG/JPEG string, raw bytes, or a uint8 array -> uint8 [h, w, 3]."""
    from PIL import Image

    if isinstance(value, str | bytes):
        try:
            data = base64.b64decode(value, validate=True) if isinstance(value, str) else value
            with Image.open(io.BytesIO(data)) as img:
                return np.array(img.convert("RGB"))
        except Exception as err:
            raise ValueError(
                f"row {row}, column {column!r}: not a base64-encoded PNG/JPEG image ({err})"
            ) from err
    array = np.asarray(value)
    if array.dtype == object:  # nested lists from JSON
        array = np.asarray(array.tolist())
    return array.astype(np.uint8) if array.dtype != np.uint8 else array


def _records(model_input: Any) -> list[Mapping[str, Any]]:
    if hasattr(model_input, "to_dict"):  # pandas DataFrame
        return model_input.to_dict(orient="records")
    if isinstance(model_input, Mapping):
        return [model_input]
    return list(model_input)


class PolicyModel(PythonModel):
    """pyfunc wrapper around ``steps.policy.Policy``."""

    def load_context(self, context) -> None:
        from steps.policy import Policy

        self.policy = Policy.from_export(context.artifacts["export"])

    # Type hints: MLflow warns on every load without them. pd.DataFrame is one it takes without deriving a
    # schema (the logged signature, model_logging.policy_signature, checks the columns) or converting input.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        observations = []
        for i, record in enumerate(_records(model_input)):
            images = {
                key: decode_image(record[key], column=key, row=i)
                for key in self.policy.camera_keys
                if key in record and record[key] is not None
            }
            obs = {"images": images, "task": record.get("task", "")}
            if "state" in record:
                obs["state"] = record["state"]
            observations.append(obs)
        return self.policy.predict(observations)


mlflow.models.set_model(PolicyModel())
