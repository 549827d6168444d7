"""Model configuration: named Gemma / SigLIP sizes and the pi0 / pi0.5 bundle that uses them.

Sizes follow openpi (`src/openpi/models/gemma.py`, `siglip.py`). A "bundle" (`variant`) names the three
towers at once: ``real`` is the released model, ``tiny`` / ``golden`` is the size of the golden reference
data in ``reference/golden`` and is what tests and CPU demos use.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

MODEL_TYPES = ("pi0", "pi05")
DTYPES = ("float32", "bfloat16")
# Camera slots in prefix order (openpi's IMAGE_KEYS); every batch carries all three, masked when missing.
CAMERA_SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
# Actions and state are zero-padded to this many dims in the batch and in the released checkpoints.
MAX_ACTION_DIM = 32


@dataclass(frozen=True)
class GemmaVariant:
    """One Gemma decoder stack (the VLM language model or the action expert)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class SiglipVariant:
    """SigLIP vision tower. 224 px / patch 14 gives 16x16 = 256 tokens per image."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int = 14
    image_size: int = 224

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


GEMMA_VARIANTS: dict[str, GemmaVariant] = {
    "gemma_2b": GemmaVariant(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaVariant(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    # Golden-reference sizes (reference/golden/README.md); 8 heads because openpi's joint attention needs 8.
    "dummy": GemmaVariant(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    "dummy_expert": GemmaVariant(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16),
}

SIGLIP_VARIANTS: dict[str, SiglipVariant] = {
    "so400m": SiglipVariant(width=1152, depth=27, mlp_dim=4304, num_heads=16),
    "tiny": SiglipVariant(width=32, depth=2, mlp_dim=64, num_heads=2),
}


@dataclass(frozen=True)
class ModelBundle:
    """The three towers of one model size, plus its vocabulary."""

    vlm: str
    expert: str
    siglip: str
    vocab_size: int


MODEL_BUNDLES: dict[str, ModelBundle] = {
    "real": ModelBundle(vlm="gemma_2b", expert="gemma_300m", siglip="so400m", vocab_size=257_152),
    "tiny": ModelBundle(vlm="dummy", expert="dummy_expert", siglip="tiny", vocab_size=1024),
    # Same as tiny; named separately so golden tests say what they compare against.
    "golden": ModelBundle(vlm="dummy", expert="dummy_expert", siglip="tiny", vocab_size=1024),
}


def _lookup(table: dict, name: str, field: str):
    if name not in table:
        hint = difflib.get_close_matches(name, list(table), n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"Unknown {field} {name!r}; known: {sorted(table)}.{did_you_mean}")
    return table[name]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a `Pi0Model`. Checked on construction."""

    # "pi0" (state token + action/time MLP) or "pi05" (adaRMS time conditioning, state in the prompt).
    model_type: str = "pi05"
    # Size bundle: "real" | "tiny" | "golden" (see MODEL_BUNDLES).
    variant: str = "real"
    # Overrides of single towers of the bundle (names from GEMMA_VARIANTS / SIGLIP_VARIANTS); None = bundle's.
    vlm_variant: str | None = None
    expert_variant: str | None = None
    siglip_variant: str | None = None
    # Width of the state / action vectors the model reads and writes (padded robot dims); <= 32.
    action_dim: int = MAX_ACTION_DIM
    # Number of future actions predicted per chunk.
    action_horizon: int = 50
    # Prompt length the tokenizer pads to (48 for pi0, 200 for pi0.5 in openpi); informational here.
    max_token_len: int = 48
    # Token vocabulary; None = the bundle's (257152 real, 1024 tiny). Resolved in __post_init__.
    vocab_size: int | None = None
    # Compute dtype: "bfloat16" runs matmuls under torch.autocast; weights stay float32 (master weights).
    dtype: str = "float32"
    # Recompute each transformer layer in backward (training only), trading compute for memory.
    gradient_checkpointing: bool = False
    # Freeze the SigLIP tower + projector / the Gemma-2B language model (and its embedding).
    freeze_vision: bool = False
    freeze_vlm: bool = False

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        bundle = _lookup(MODEL_BUNDLES, self.variant, "variant")
        for field, table in (
            ("vlm_variant", GEMMA_VARIANTS),
            ("expert_variant", GEMMA_VARIANTS),
            ("siglip_variant", SIGLIP_VARIANTS),
        ):
            name = getattr(self, field)
            if name is not None:
                _lookup(table, name, field)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not 1 <= self.action_dim <= MAX_ACTION_DIM:
            raise ValueError(f"action_dim must be in [1, {MAX_ACTION_DIM}], got {self.action_dim}")
        if self.action_horizon < 1:
            raise ValueError(f"action_horizon must be >= 1, got {self.action_horizon}")
        if self.max_token_len < 1:
            raise ValueError(f"max_token_len must be >= 1, got {self.max_token_len}")
        if self.vocab_size is None:
            object.__setattr__(self, "vocab_size", bundle.vocab_size)
        elif self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        vlm, expert = self.vlm, self.expert
        # The two experts share one attention per layer, so everything but width and MLP must agree.
        for attr in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(vlm, attr) != getattr(expert, attr):
                raise ValueError(
                    f"VLM and action expert must share {attr}: {self.vlm_name} has {getattr(vlm, attr)}, "
                    f"{self.expert_name} has {getattr(expert, attr)}"
                )
        if vlm.num_heads % vlm.num_kv_heads:
            raise ValueError(
                f"num_heads {vlm.num_heads} is not a multiple of num_kv_heads {vlm.num_kv_heads}"
            )
        if expert.width % 2:
            raise ValueError(f"expert width must be even for the sin-cos time embedding, got {expert.width}")
        if self.siglip.width % self.siglip.num_heads:
            raise ValueError(
                f"SigLIP width {self.siglip.width} not divisible by heads {self.siglip.num_heads}"
            )

    @property
    def pi05(self) -> bool:
        return self.model_type == "pi05"

    @property
    def vlm_name(self) -> str:
        return self.vlm_variant or MODEL_BUNDLES[self.variant].vlm

    @property
    def expert_name(self) -> str:
        return self.expert_variant or MODEL_BUNDLES[self.variant].expert

    @property
    def siglip_name(self) -> str:
        return self.siglip_variant or MODEL_BUNDLES[self.variant].siglip

    @property
    def vlm(self) -> GemmaVariant:
        return GEMMA_VARIANTS[self.vlm_name]

    @property
    def expert(self) -> GemmaVariant:
        return GEMMA_VARIANTS[self.expert_name]

    @property
    def siglip(self) -> SiglipVariant:
        return SIGLIP_VARIANTS[self.siglip_name]

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error (they usually mean a typo or a newer format)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown ModelConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
