"""TrainConfig: everything ``steps/train/trainer.py`` needs, as one frozen, JSON-serialisable dataclass.

Fields left at ``None`` take the config type's training preset (openpi's, per config type) when
``resolve()`` is called; the resolved copy is what checkpoints and the export record. Validation
that needs nothing but the fields happens in ``__post_init__``; checks that need the world size, the
dataset or the norm stats happen in ``resolve()`` / ``steps.train.trainer`` before any training, and every
message names the offending field.

No torch import here: the flow imports this module at the top level.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_zoo.lora_settings import LoraSettings

MODEL_VARIANTS = ("real", "tiny")
PARALLELISMS = ("ddp", "fsdp")
# "auto": bf16 autocast (fp32 master weights) on CUDA, fp32 on CPU.
PRECISIONS = ("auto", "fp32", "bf16")
LOSS_REDUCTIONS = ("all_dims", "real_dims")
EMA_MODES = ("auto", "on", "off")
EXPORT_FROM = ("last", "best")
# Preset fields that a TrainConfig may override (None = take the preset).
PRESET_FIELDS = (
    "peak_lr", "warmup_steps", "decay_steps", "end_lr", "schedule", "global_batch", "max_steps",
    "weight_decay", "grad_clip",
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """One training job. Paths may be local; ``checkpoint_dir`` may also be an ``s3://`` URI."""

    # --- data -------------------------------------------------------------------------------
    # The resolved config type (data_adapters ConfigType, or TextConfigType for text). The flow passes the
    # one ``start`` resolved (as its dict); a name or YAML path is looked up here, for direct CLI use.
    config_type: Any
    # Local LeRobot dataset root (as fetched by steps.fetch.dataset); for text, a file or a Hub id.
    dataset_root: str
    # norm_stats.json written by steps.stats.norm_stats for the train episodes.
    norm_stats_path: str
    # SentencePiece model file (PaliGemma's, or a tiny one for tests).
    tokenizer_path: str
    # Episode indices for training (None = all) and held-out validation (empty = no validation).
    train_episodes: tuple[int, ...] | None = None
    val_episodes: tuple[int, ...] = ()
    # Hub revision of a text dataset given by id (None: the config type's); LeRobot roots are local.
    dataset_revision: str | None = None
    # Image augmentation on training samples (openpi's crop/rotate/colour jitter).
    augment: bool = True
    num_workers: int = 2
    # --- model ------------------------------------------------------------------------------
    model_variant: str = "real"  # "real" | "tiny"
    # Pretrained weights: a local folder/file or a Hub id (safetensors only); None = random init.
    pretrained: str | None = None
    pretrained_revision: str | None = None
    # None = full fine-tuning; LoraSettings = LoRA (adapters + the modules the preset keeps trainable).
    lora: LoraSettings | None = None
    # --- optimisation (None = the config type's preset) ------------------------------------------
    global_batch: int | None = None
    # Per-rank samples per forward/backward; None = global_batch / world_size (no accumulation).
    micro_batch: int | None = None
    max_steps: int | None = None
    peak_lr: float | None = None
    warmup_steps: int | None = None
    decay_steps: int | None = None
    end_lr: float | None = None
    schedule: str | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    # "auto": on with the preset's decay for full fine-tuning, off for LoRA.
    ema: str = "auto"
    ema_decay: float | None = None
    # Loss reduction: openpi's mean over all 32 dims, or the robot's dims only;
    # optionally leave out chunk steps past the episode end (action_is_pad).
    loss_reduction: str = "all_dims"
    mask_padded_actions: bool = False
    # --- hardware ---------------------------------------------------------------------------
    precision: str = "auto"
    gradient_checkpointing: bool = False
    parallelism: str = "ddp"  # "ddp" | "fsdp" (FSDP2 fully_shard per transformer block, then root)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    seed: int = 0
    # --- checkpoints, validation, export -------------------------------------------------------
    checkpoint_dir: str = "checkpoints"
    save_every: int = 1000
    keep_last: int = 2
    # Validation loss every N steps on val_episodes (0 = off), on at most val_samples frames.
    val_every: int = 500
    val_samples: int = 256
    # Final self-contained folder (None = <checkpoint_dir>/export, or a local temp dir for s3://).
    export_dir: str | None = None
    export_from: str = "last"  # "last" | "best" (by validation loss)
    # Stop after this many non-finite steps in a row (each is skipped and logged).
    max_nonfinite_steps: int = 5
    # --- tracking ---------------------------------------------------------------------------
    mlflow: bool = False  # joins $MLFLOW_RUN_ID when set, else starts a run in mlflow_experiment
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "vla-sft"
    # Seconds the end of training waits for an unreachable tracking server to take the metric points still
    # queued (they are also kept in the last checkpoint); then training fails and `resume` sends them.
    mlflow_wait_s: float = 300.0
    log_every: int = 10
    # Optional local JSON-lines file with every step's metrics (rank 0): benchmarks and tests read it.
    metrics_file: str | None = None
    # --- fault injection, FOR TESTS ONLY -----------------------------------------------------
    # SIGKILL this process right after the checkpoint of this step is complete (resume tests).
    fail_after_step: int | None = None
    # SIGKILL this process while the checkpoint of this step is half written (atomicity tests).
    fail_during_checkpoint_step: int | None = None

    def __post_init__(self) -> None:
        from data_adapters.registry import config_type_from_dict, get_config_type

        if isinstance(self.config_type, str):
            object.__setattr__(self, "config_type", get_config_type(self.config_type))
        elif isinstance(self.config_type, Mapping):
            object.__setattr__(self, "config_type", config_type_from_dict(self.config_type))
        # JSON gives lists and dicts; normalise so equality and hashing behave.
        if self.train_episodes is not None:
            object.__setattr__(self, "train_episodes", tuple(int(e) for e in self.train_episodes))
        object.__setattr__(self, "val_episodes", tuple(int(e) for e in self.val_episodes))
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSettings.from_dict(self.lora))
        _one_of("model_variant", self.model_variant, MODEL_VARIANTS)
        _one_of("parallelism", self.parallelism, PARALLELISMS)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
        _one_of("ema", self.ema, EMA_MODES)
        _one_of("export_from", self.export_from, EXPORT_FROM)
        _one_of("device", self.device, ("auto", "cpu", "cuda"))
        if self.schedule is not None:
            _one_of("schedule", self.schedule, ("cosine", "constant"))
        if self.peak_lr is not None and not (math.isfinite(self.peak_lr) and self.peak_lr > 0):
            raise ValueError(f"peak_lr: learning rate must be > 0, got {self.peak_lr!r}")
        if not (isinstance(self.mlflow_wait_s, (int, float)) and math.isfinite(self.mlflow_wait_s)
                and self.mlflow_wait_s >= 0):  # fmt: skip
            raise ValueError(f"mlflow_wait_s: must be a number of seconds >= 0, got {self.mlflow_wait_s!r}")
        if self.end_lr is not None and not (math.isfinite(self.end_lr) and self.end_lr >= 0):
            raise ValueError(f"end_lr: must be >= 0, got {self.end_lr!r}")
        for name in ("global_batch", "micro_batch", "max_steps", "save_every", "keep_last", "log_every",
                     "max_nonfinite_steps"):  # fmt: skip
            _positive_int_or_none(name, getattr(self, name))
        for name in ("warmup_steps", "decay_steps", "val_every", "val_samples", "num_workers", "seed"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        if (
            self.global_batch is not None
            and self.micro_batch is not None
            and self.global_batch % self.micro_batch
        ):
            raise ValueError(
                f"global_batch: {self.global_batch} is not divisible by micro_batch {self.micro_batch}"
            )
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay: must be in (0, 1), got {self.ema_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip: must be > 0, got {self.grad_clip!r}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay!r}")
        if self.export_from == "best" and not (self.val_episodes and self.val_every):
            raise ValueError("export_from: 'best' needs validation (val_episodes and val_every > 0)")
        overlap = set(self.val_episodes) & set(self.train_episodes or ())
        if overlap:
            raise ValueError(f"val_episodes: episodes {sorted(overlap)[:10]} are also in train_episodes")

    # --- derived --------------------------------------------------------------------------------
    @property
    def finetune_mode(self) -> str:
        return "full" if self.lora is None else "lora"

    @property
    def use_ema(self) -> bool:
        """Whether EMA runs (valid on a resolved config)."""
        return self.ema_decay is not None and (self.ema == "on" or (self.ema == "auto" and self.lora is None))

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimizer step on each rank (valid on a resolved config)."""
        return self.global_batch // (world_size * self.micro_batch)

    def resolve(self, world_size: int = 1) -> TrainConfig:
        """Fill every preset field from the config type and check batch sizes against ``world_size``."""
        preset = self.config_type.train
        updates: dict[str, Any] = {
            name: getattr(preset, name) for name in PRESET_FIELDS if getattr(self, name) is None
        }
        if self.ema_decay is None:
            updates["ema_decay"] = preset.ema_decay
            if self.ema == "on" and preset.ema_decay is None:
                updates["ema_decay"] = 0.99
        resolved = dataclasses.replace(self, **updates)
        gb = resolved.global_batch
        if resolved.micro_batch is None:
            if gb % world_size:
                raise ValueError(f"global_batch: {gb} is not divisible by world_size {world_size}")
            resolved = dataclasses.replace(resolved, micro_batch=gb // world_size)
        mb = resolved.micro_batch
        if gb % (world_size * mb):
            raise ValueError(
                f"global_batch: {gb} is not divisible by world_size * micro_batch = {world_size} * {mb} "
                f"= {world_size * mb}"
            )
        if resolved.schedule == "cosine" and resolved.decay_steps < resolved.warmup_steps:
            raise ValueError(
                f"decay_steps: {resolved.decay_steps} is smaller than warmup_steps {resolved.warmup_steps}"
            )
        return resolved

    # --- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists, not tuples), as a checkpoint stores and a resume compares them."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["config_type"] = self.config_type.to_dict()
        out["lora"] = self.lora.to_dict() if self.lora is not None else None
        return json.loads(json.dumps(out))

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> TrainConfig:
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text()
        return cls.from_dict(json.loads(text))

    def flat_params(self) -> dict[str, str]:
        """Flattened ``{"lora.rank": "32", ...}`` for MLflow params."""
        out: dict[str, str] = {}
        for key, value in {**self.to_dict(), "config_type": self.config_type.name}.items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": str(v) for k, v in value.items()})
            else:
                out[key] = str(value)
        return out


def _one_of(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name}: must be one of {options}, got {value!r}")


def _positive_int_or_none(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
