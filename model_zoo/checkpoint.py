"""Load pretrained pi0 / pi0.5 weights (openpi or LeRobot layout) and export our own checkpoints.

Facts this module is built on (openpi's and LeRobot's published checkpoints):
- openpi's PyTorch checkpoints name keys exactly like `Pi0Model.state_dict()`; LeRobot's carry `model.`
  in front. LeRobot's pi0.5 loader renames `action_time_mlp_*` to `time_mlp_*` (and the reverse for pi0).
- Both are written by `safetensors.torch.save_model`, which stores the tied pair
  (`paligemma.lm_head.weight`, `...language_model.embed_tokens.weight`) once, as `lm_head`. The embedding
  must be copied back: a randomly initialised embedding still trains to a low loss and goes unnoticed.
- The expert's `lm_head` is never used; we do not build it and skip it on load.

Only safetensors files are read. Pickle formats (.bin/.pt/.pth/.ckpt) can run code on load and are refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_model
from torch import nn

from model_zoo.checkpoint_header import read_safetensors_header
from model_zoo.files import write_dir_atomically
from model_zoo.hub import WEIGHTS_NAME, CheckpointError, resolve_weight_files

if TYPE_CHECKING:
    from model_zoo.pi0 import Pi0Model

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
LAYOUTS = ("openpi", "lerobot")
LEROBOT_PREFIX = "model."

EMBED_KEY = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
VLM_LM_HEAD_KEY = "paligemma_with_expert.paligemma.lm_head.weight"
EXPERT_LM_HEAD_KEY = "paligemma_with_expert.gemma_expert.lm_head.weight"
# Tied pairs: whichever one a checkpoint lacks is copied from the other.
TIED_KEYS = ((EMBED_KEY, VLM_LM_HEAD_KEY),)
# LeRobot names the pi0 / pi0.5 time MLPs differently from openpi; renamed only when the model lacks a name.
_TIME_MLP_RENAMES = (("action_time_mlp_", "time_mlp_"), ("time_mlp_", "action_time_mlp_"))


@dataclass
class LoadReport:
    """What `load_pretrained` did. Keys are model (openpi) names unless said otherwise."""

    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys (prefix removed) with no home
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # checkpoint key -> model key
    filled_from_tied: dict[str, str] = field(default_factory=dict)  # model key -> checkpoint key copied
    dropped: list[str] = field(default_factory=list)  # checkpoint keys skipped on purpose

    @property
    def ok(self) -> bool:
        """True when every model tensor received a checkpoint tensor of the right shape."""
        return not self.missing and not self.mismatched

    def summary(self, max_keys: int = 5) -> str:
        """Readable multi-line report: counts, then the first `max_keys` keys of each problem."""

        def first(keys: list) -> str:
            more = f" ... (+{len(keys) - max_keys} more)" if len(keys) > max_keys else ""
            return ", ".join(str(k) for k in keys[:max_keys]) + more

        lines = [
            f"checkpoint {self.source} ({self.layout} layout): loaded {len(self.loaded)}, missing "
            f"{len(self.missing)}, wrong shape {len(self.mismatched)}, unexpected {len(self.unexpected)}"
        ]
        if self.missing:
            lines.append(f"  missing in checkpoint: {first(self.missing)}")
        if self.mismatched:
            shapes = [f"{k} checkpoint {list(c)} vs model {list(m)}" for k, c, m in self.mismatched]
            lines.append(f"  wrong shape: {first(shapes)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {first(self.unexpected)}")
        if self.renamed:
            lines.append(f"  renamed: {first([f'{a} -> {b}' for a, b in self.renamed.items()])}")
        if self.filled_from_tied:
            lines.append(
                f"  copied from tied tensor: {first([f'{a} <- {b}' for a, b in self.filled_from_tied.items()])}"
            )
        if self.dropped:
            lines.append(f"  skipped (unused): {first(self.dropped)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ plan


def _read_headers(files: list[Path]) -> tuple[dict[str, tuple[Path, tuple[int, ...]]], dict[str, str]]:
    """Checkpoint key -> (file, shape) without reading tensor data, plus the files' alias metadata."""
    entries: dict[str, tuple[Path, tuple[int, ...]]] = {}
    aliases: dict[str, str] = {}
    for file in files:
        read_safetensors_header(file)  # a file that is not safetensors, or is cut short, is named here
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                entries[key] = (file, tuple(handle.get_slice(key).get_shape()))
            # save_model records each dropped shared name as metadata {dropped: kept}.
            aliases.update({k: v for k, v in (handle.metadata() or {}).items() if k != "format"})
    return entries, aliases


def plan_load(
    model_shapes: dict[str, tuple[int, ...]],
    checkpoint_shapes: dict[str, tuple[int, ...]],
    *,
    aliases: dict[str, str] | None = None,
    source: str = "<checkpoint>",
) -> tuple[LoadReport, dict[str, str]]:
    """Map checkpoint keys onto model keys from shapes alone (no tensor data is read).

    Args:
        model_shapes: model key -> shape (e.g. from a model on the meta device).
        checkpoint_shapes: checkpoint key -> shape, as stored (with LeRobot's prefix if any).
        aliases: {dropped key: kept key} from safetensors metadata (save_model records shared tensors).
        source: name shown in the report.

    Returns:
        (report, {model key: checkpoint key}) for the tensors that will be loaded.
    """
    model_keys = set(model_shapes)
    aliases = aliases or {}
    lerobot = any(k.startswith(LEROBOT_PREFIX) for k in checkpoint_shapes) and not any(
        k.startswith(LEROBOT_PREFIX) for k in model_keys
    )
    report = LoadReport(source=source, layout="lerobot" if lerobot else "openpi")

    def strip(key: str) -> str:
        return key[len(LEROBOT_PREFIX) :] if lerobot and key.startswith(LEROBOT_PREFIX) else key

    names = {strip(k): k for k in checkpoint_shapes}  # stripped name -> raw checkpoint key
    sources: dict[str, str] = {}  # model key -> raw checkpoint key
    for name, raw in names.items():
        target = name
        if name not in model_keys:
            if name == EXPERT_LM_HEAD_KEY:
                report.dropped.append(name)
                continue
            target = next(
                (
                    name.replace(old, new, 1)
                    for old, new in _TIME_MLP_RENAMES
                    if name.startswith(old) and name.replace(old, new, 1) in model_keys
                ),
                None,
            )
            if target is None or target in names:
                report.unexpected.append(name)
                continue
            report.renamed[name] = target
        sources[target] = raw
    # Tied tensors stored once: copy the stored partner (hard-coded pair first, then file metadata).
    pairs = [*TIED_KEYS, *((strip(a), strip(b)) for a, b in aliases.items())]
    for a, b in pairs:
        for want, have in ((a, b), (b, a)):
            if want in model_keys and want not in sources and have in sources:
                sources[want] = sources[have]
                report.filled_from_tied[want] = strip(sources[have])
    for key in sorted(model_keys):
        if key not in sources:
            report.missing.append(key)
            continue
        shape = tuple(checkpoint_shapes[sources[key]])
        if shape != model_shapes[key]:
            report.mismatched.append((key, shape, model_shapes[key]))
    bad = {k for k, _, _ in report.mismatched}
    report.loaded = sorted(k for k in sources if k not in bad)
    return report, {k: sources[k] for k in report.loaded}


# ------------------------------------------------------------------------------------------------ load


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names that share one Parameter object (e.g. embed_tokens / lm_head)."""
    by_id: dict[int, list[str]] = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id[id(param)].append(name)
    return [names for names in by_id.values() if len(names) > 1]


def assign_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state, strict=True, assign=True)`` keeping tied parameters tied.

    The model's tensors become ``state``'s (no copy; a model built on the meta device gets real ones);
    ``requires_grad`` stays the model's.
    """
    groups = _tied_groups(model)
    model.load_state_dict(state, strict=True, assign=True)
    _retie(model, groups)


def _retie(model: nn.Module, groups: list[list[str]]) -> None:
    # load_state_dict(assign=True) gives every key its own Parameter; restore the sharing.
    for names in groups:
        keep = model.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, keep)


def load_pretrained(
    model: nn.Module,
    path_or_hub_id: str | os.PathLike,
    *,
    revision: str | None = None,
    strict: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> LoadReport:
    """Load safetensors weights (openpi or LeRobot layout) into `model`, in place.

    Works on a normal model (tensors are copied into the existing parameters, which keep their device)
    and on a model built on the meta device (parameters are replaced, on CPU). Floating tensors are cast
    to the dtype of the parameter they land in.

    Args:
        model: a `Pi0Model` (or any module whose keys follow the openpi names).
        path_or_hub_id: a .safetensors file, a shard index, a folder holding them, or a Hub id.
        revision: Hub revision (ignored for local paths).
        strict: raise when any model tensor is missing or has the wrong shape (nothing is loaded then).
            With strict=False the matching tensors are loaded and the gaps are logged as a warning.
        cache_dir: Hub cache folder (default: the Hub's own).

    Returns:
        The `LoadReport`.

    Raises:
        CheckpointError: pickle files, no weights found, or (strict) missing / wrong-shape tensors.
        HubUnavailableError: a Hub id that cannot be fetched (offline and not cached, ...).
    """
    if hasattr(model, "peft_config"):
        raise ValueError(
            "Load base weights before apply_lora (adapters change the keys); use load_adapter for adapters"
        )
    files = resolve_weight_files(path_or_hub_id, revision=revision, cache_dir=cache_dir)
    entries, aliases = _read_headers(files)
    targets = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in targets.items()}
    source = str(files[0] if len(files) == 1 else files[0].parent)
    checkpoint_shapes = {k: shape for k, (_, shape) in entries.items()}
    report, sources = plan_load(shapes, checkpoint_shapes, aliases=aliases, source=source)
    on_meta = any(t.is_meta for t in targets.values())
    if not report.ok and (strict or on_meta):
        why = (
            "strict loading" if strict else "the model is on the meta device, so gaps cannot stay initialised"
        )
        raise CheckpointError(
            f"Checkpoint does not fit the model ({why}); nothing was loaded.\n{report.summary()}"
        )
    if not report.ok:
        logger.warning("Partial load (strict=False):\n%s", report.summary())

    groups = _tied_groups(model)
    by_file: dict[Path, list[str]] = defaultdict(list)
    for key, raw in sources.items():
        by_file[entries[raw][0]].append(key)
    for file, keys in by_file.items():
        chunk: dict[str, torch.Tensor] = {}
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in keys:
                tensor = handle.get_tensor(sources[key])
                want = targets[key].dtype
                chunk[key] = (
                    tensor.to(want) if tensor.is_floating_point() and want.is_floating_point else tensor
                )
        # One file at a time keeps peak memory near one shard; strict=False because each chunk is partial.
        model.load_state_dict(chunk, strict=False, assign=on_meta)
        del chunk
    if on_meta:
        _retie(model, groups)
    logger.info("%s", report.summary())
    return report


# ---------------------------------------------------------------------------------------------- export


class _LeRobotNaming(nn.Module):
    """Holds the model as `.model` so its state_dict keys get LeRobot's `model.` prefix."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def save_checkpoint(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    layout: str = "openpi",
    config: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model.safetensors` + `config.json` to `out_dir`, atomically (temp folder, then rename).

    Weights are written by `safetensors.torch.save_model` (tied tensors stored once, as the public
    checkpoints do). `config.json` holds `model_config` (rebuilds the model, see `load_model`),
    `checkpoint_layout` and the entries of `config` (e.g. the training config).

    Raises:
        ValueError: unknown layout, a model that still carries LoRA adapters, or `out_dir` exists
            and `overwrite` is False.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if hasattr(model, "peft_config"):
        raise ValueError("Model carries LoRA adapters: call model_zoo.lora.merge_lora first, or save_adapter")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ValueError(f"{out_dir} already exists; pass overwrite=True to replace it")
    meta: dict = dict(config or {})
    for reserved in ("model_config", "checkpoint_layout"):
        if reserved in meta:
            raise ValueError(f"config must not contain the reserved key {reserved!r}")
    model_config = getattr(model, "config", None)
    if model_config is not None:
        meta["model_config"] = model_config.to_dict()
    meta["checkpoint_layout"] = layout

    def write(folder: Path) -> None:
        save_model(_LeRobotNaming(model) if layout == "lerobot" else model, str(folder / WEIGHTS_NAME))
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return write_dir_atomically(out_dir, write)


def read_model_config(folder: str | os.PathLike):
    """The `ModelConfig` stored in `folder/config.json` by `save_checkpoint`."""
    from model_zoo.config import ModelConfig

    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"No {CONFIG_NAME} in {folder}")
    data = json.loads(path.read_text())
    if "model_config" not in data:
        raise CheckpointError(
            f"{path} has no 'model_config' (not written by save_checkpoint): build the model with "
            "Pi0Model(ModelConfig(...)) and call load_pretrained(model, folder)"
        )
    return ModelConfig.from_dict(data["model_config"])


def load_model(folder: str | os.PathLike, *, strict: bool = True) -> Pi0Model:
    """Build a `Pi0Model` from `folder/config.json` and load `folder`'s weights (strict by default)."""
    from model_zoo.pi0 import Pi0Model

    config = read_model_config(folder)
    if strict:
        # Every tensor gets replaced, so skip the random init (seconds to minutes at real size).
        with torch.device("meta"):
            model = Pi0Model(config)
    else:
        model = Pi0Model(config)
    load_pretrained(model, folder, strict=strict)
    return model
