"""Read a safetensors file's header and check that its keys fit a pi0 / pi0.5 model, without torch.

The flow's ``start`` calls this in its first seconds (``--pretrained``), before any model is built; the
loader (``model_zoo.checkpoint``) calls it too, so a file that is not safetensors is reported by name
instead of as the parser's own error.

safetensors layout: an 8-byte little-endian header length N, N bytes of JSON
(``{key: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then the tensor
bytes; offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from model_zoo.config import GEMMA_VARIANTS, MAX_ACTION_DIM, MODEL_BUNDLES, ModelConfig
from model_zoo.hub import CheckpointError

_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
LEROBOT_PREFIX = "model."
ACTION_IN = "action_in_proj.weight"
ACTION_OUT = "action_out_proj.weight"
STATE_PROJ = "state_proj.weight"  # pi0 only: pi0.5 puts the state into the prompt
EMBED_KEYS = (
    "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight",
    "paligemma_with_expert.paligemma.lm_head.weight",
)


def read_safetensors_header(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a safetensors file; the data must be as long as the header says.

    Raises:
        CheckpointError: the file is shorter than its header, the header is not safetensors JSON, or the
            tensor data is cut short (naming the file).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file ({size} bytes, no header)")
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path} is not a safetensors file (header length {length} for {size} bytes)"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object)")
    shapes, end = {}, 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in entry["shape"])
            begin, stop = (int(o) for o in entry["data_offsets"])
            entry["dtype"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: header entry {key!r} is not a safetensors tensor entry") from None
        shapes[key], end = shape, max(end, stop, begin)
    if 8 + length + end > size:
        raise CheckpointError(
            f"{path} is cut short: its header needs {8 + length + end} bytes, the file has {size}"
        )
    return shapes


def check_pi0_keys(shapes: dict[str, tuple[int, ...]], model_type: str, variant: str, source: str) -> None:
    """The keys say a ``model_type`` model of size ``variant`` (openpi or LeRobot names).

    Only what tells the models apart is checked (the loader reports every key later): the action
    projections exist with the variant's expert width, the embedding is there, and ``state_proj``
    is present exactly for pi0.

    Raises:
        CheckpointError: naming the source, the key and what was expected.
    """
    if any(k.startswith(LEROBOT_PREFIX) for k in shapes):
        shapes = {k.removeprefix(LEROBOT_PREFIX): v for k, v in shapes.items()}
    config = ModelConfig(model_type=model_type, variant=variant)
    width = GEMMA_VARIANTS[config.expert_variant or MODEL_BUNDLES[variant].expert].width
    missing = [k for k in (ACTION_IN, ACTION_OUT) if k not in shapes]
    if missing or not any(k in shapes for k in EMBED_KEYS):
        absent = missing or [EMBED_KEYS[0]]
        raise CheckpointError(
            f"{source} is not a pi0 / pi0.5 checkpoint: no {absent[0]} ({len(shapes)} tensors, e.g. "
            f"{sorted(shapes)[:3]})"
        )
    if shapes[ACTION_IN] != (width, MAX_ACTION_DIM):
        raise CheckpointError(
            f"{source}: {ACTION_IN} has shape {list(shapes[ACTION_IN])}, but a {variant} {model_type} model "
            f"needs {[width, MAX_ACTION_DIM]}"
        )
    kind = "pi0" if STATE_PROJ in shapes else "pi05"
    if kind != model_type:
        why = f"it has {STATE_PROJ}" if kind == "pi0" else f"it has no {STATE_PROJ}"
        raise CheckpointError(f"{source} is a {kind} checkpoint ({why}), but the model is {model_type}")
