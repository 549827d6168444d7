"""Training presets: optimizer, schedule, EMA and batch defaults, one registry of named presets.

A config type carries one of these (``ConfigType.train``); a run overrides single fields from the command
line (``--max_steps``, ``--batch_size``, ``--learning_rate``, ``--train_options``). To add one: define it
below and list it in ``TRAIN_PRESETS``; a YAML config type overrides fields under its ``train:`` block.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from data_adapters.validation import Validated, is_int, is_number

SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainPreset(Validated):
    """Optimizer / schedule / batch defaults that travel with a config type (openpi's defaults)."""

    # Learning rate reached at the end of warmup.
    peak_lr: float = 2.5e-5
    # Linear warmup from peak_lr / (warmup_steps + 1) to peak_lr.
    warmup_steps: int = 1000
    # Step at which the cosine reaches end_lr (unused by "constant").
    decay_steps: int = 30_000
    end_lr: float = 2.5e-6
    # "cosine": warmup then cosine to end_lr; "constant": warmup then flat at peak_lr.
    schedule: str = "cosine"
    # Samples per optimizer step summed over all ranks and accumulation steps.
    global_batch: int = 32
    max_steps: int = 30_000
    # EMA of the weights for full fine-tuning; None turns it off (LoRA always runs without EMA).
    ema_decay: float | None = 0.99
    # AdamW settings and global gradient-norm clip.
    weight_decay: float = 1e-10
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        for name in ("peak_lr", "end_lr", "eps", "grad_clip"):
            self._need(name, is_number(getattr(self, name)) and getattr(self, name) > 0, "a positive number")
        self._need("weight_decay", is_number(self.weight_decay) and self.weight_decay >= 0, "a number >= 0")
        self._need("warmup_steps", is_int(self.warmup_steps) and self.warmup_steps >= 0, "an integer >= 0")
        for name in ("decay_steps", "global_batch", "max_steps"):
            self._need(name, is_int(getattr(self, name)) and getattr(self, name) > 0, "a positive integer")
        self._need("schedule", self.schedule in SCHEDULES, f"one of {SCHEDULES}")
        ema_ok = self.ema_decay is None or (is_number(self.ema_decay) and 0 < self.ema_decay < 1)
        self._need("ema_decay", ema_ok, "None or a number in (0, 1)")
        self._as_tuple("betas")
        betas_ok = isinstance(self.betas, tuple) and len(self.betas) == 2
        self._need(
            "betas",
            betas_ok and all(is_number(b) and 0 <= b < 1 for b in self.betas),
            "two numbers in [0, 1)",
        )


# openpi's defaults (every config type unless it names another).
OPENPI_DEFAULT = TrainPreset()
# openpi's own pi05_libero recipe: large batch, long warmup, flat LR afterwards, slow EMA.
PI05_LIBERO = TrainPreset(
    peak_lr=5e-5, warmup_steps=10_000, end_lr=5e-5, schedule="constant", global_batch=256, ema_decay=0.999
)
# Full fine-tuning of a causal LM: a smaller learning rate and no EMA by default (HF/TRL practice).
TEXT_SFT = TrainPreset(peak_lr=2e-5, warmup_steps=20, decay_steps=1000, end_lr=2e-6, global_batch=16,
                       max_steps=1000, ema_decay=None, weight_decay=0.0, betas=(0.9, 0.999))  # fmt: skip

TRAIN_PRESETS = MappingProxyType(
    {"openpi_default": OPENPI_DEFAULT, "pi05_libero": PI05_LIBERO, "text_sft": TEXT_SFT}
)
