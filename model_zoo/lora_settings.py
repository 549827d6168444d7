"""LoRA settings: the one definition of which LoRA a run trains, torch-free.

The flow's ``start`` validates them (``--lora``, ``--lora_rank``, ``--train_options '{"lora": ...}'``), the
run config and ``TrainConfig`` carry them as they are, and ``model_zoo.lora.apply_lora`` applies them.
No torch or peft import here: ``start`` and the trainer's config read this module in their first seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Which layers get adapters and which stay fully trainable (see model_zoo/lora.py's docstring).
LORA_PRESETS = ("rlinf", "openpi")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters. ``alpha`` None means alpha = rank (scaling 1, as RLinf and openpi use)."""

    # Adapter rank r (RLinf: 32; openpi: 16 for Gemma-2B, 32 for the expert).
    rank: int = 32
    # LoRA scaling numerator: the update is (alpha / rank) * B @ A.
    alpha: float | None = None
    # Dropout on the adapter input (0 in RLinf and openpi).
    dropout: float = 0.0
    # "rlinf" | "openpi".
    preset: str = "rlinf"

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"lora.rank: must be a positive integer, got {self.rank!r}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", self.rank)
        elif isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"lora.alpha: must be > 0 or None, got {self.alpha!r}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0 <= self.dropout < 1
        ):
            raise ValueError(f"lora.dropout: must be in [0, 1), got {self.dropout!r}")
        if self.preset not in LORA_PRESETS:
            raise ValueError(f"lora.preset: must be one of {LORA_PRESETS}, got {self.preset!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoraSettings:
        unknown = sorted(set(data) - {"rank", "alpha", "dropout", "preset"})
        if unknown:
            raise ValueError(f"lora: unknown field(s) {unknown}; fields are rank, alpha, dropout, preset")
        return cls(**data)
