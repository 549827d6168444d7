"""PaliGemma (SigLIP + projector + Gemma) and the action expert, sharing attention layer by layer.

Layout of the key names (openpi's `PaliGemmaWithExpertModel`)::

    paligemma.model.vision_tower.vision_model.*      SigLIP
    paligemma.model.multi_modal_projector.linear     SigLIP width -> VLM width
    paligemma.model.language_model.{embed_tokens, layers.i, norm}
    paligemma.lm_head                                tied to embed_tokens (never used by pi0)
    gemma_expert.model.{layers.i, norm}              action expert (adaRMS norms for pi0.5)

How the shared attention is computed. In every layer both experts project their own tokens to q/k/v
and one attention runs over the concatenated sequence under a prefix-LM mask. Prefix tokens (images,
text) never see suffix tokens (state, actions), so the prefix half of every layer does not depend on the
suffix at all. We therefore run it as two passes that give the same numbers as the joint attention:

1. prefix pass: the VLM layers on the prefix alone, keeping each layer's K/V;
2. suffix pass: the expert layers on the suffix, each attending over [that layer's prefix K/V, own K/V].

Training runs both passes; sampling runs pass 1 once (the K/V cache) and pass 2 for every Euler step.
Each layer is called once per pass, so FSDP2 can shard layer by layer. `joint_attention_reference` is
openpi's literal formulation (one attention over the concatenation, full mask) and is used by tests.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model_zoo.config import ModelConfig
from model_zoo.gemma import GemmaDecoder, KeyValue, attention, rope_cos_sin
from model_zoo.siglip import SiglipVisionTower

# openpi's finite "minus infinity" for the additive mask: fully masked rows (padding queries) stay finite.
MASK_VALUE = -2.3819763e38


def make_attention_mask_2d(pad_masks: torch.Tensor, ar_masks: torch.Tensor) -> torch.Tensor:
    """Prefix-LM mask from per-token flags -> bool [B, N, N], True where query row i may read key j.

    ``ar`` marks where a new causal block starts: i sees j iff cumsum(ar)[j] <= cumsum(ar)[i], and
    both tokens are valid. All-zero ar is bidirectional; all-one ar is causal.
    """
    if pad_masks.shape != ar_masks.shape:
        raise ValueError(f"pad_masks {tuple(pad_masks.shape)} and ar_masks {tuple(ar_masks.shape)} differ")
    cumsum = torch.cumsum(ar_masks.long(), dim=1)
    causal = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = pad_masks[:, None, :] & pad_masks[:, :, None]
    return causal & valid


def positions_from_pad(pad_masks: torch.Tensor) -> torch.Tensor:
    """RoPE positions: padding tokens do not advance the position (cumsum(valid) - 1)."""
    return torch.cumsum(pad_masks.long(), dim=1) - 1


def additive_mask(mask_2d: torch.Tensor) -> torch.Tensor:
    """bool [B, Q, K] -> float32 [B, 1, Q, K] with 0 where allowed and MASK_VALUE elsewhere."""
    zero = torch.zeros((), dtype=torch.float32, device=mask_2d.device)
    return torch.where(mask_2d[:, None], zero, torch.tensor(MASK_VALUE, device=mask_2d.device))


class MultiModalProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class PaliGemmaModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.vision_tower = SiglipVisionTower(config.siglip)
        self.multi_modal_projector = MultiModalProjector(config.siglip.width, config.vlm.width)
        self.language_model = GemmaDecoder(config.vlm, vocab_size=config.vocab_size)


class PaliGemma(nn.Module):
    """PaliGemma with its tied LM head. The head is kept only so state-dict keys match openpi's."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.model = PaliGemmaModel(config)
        # Built on meta (no 2 GB throw-away allocation at real size), then pointed at embed_tokens.
        with torch.device("meta"):
            self.lm_head = nn.Linear(config.vlm.width, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share one Parameter between lm_head and embed_tokens (counted once by `parameters()`)."""
        self.lm_head.weight = self.model.language_model.embed_tokens.weight


class ActionExpert(nn.Module):
    """Gemma-300M without embedding or LM head (openpi builds an unused lm_head; we do not)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        cond_dim = config.expert.width if config.pi05 else None
        self.model = GemmaDecoder(config.expert, vocab_size=None, cond_dim=cond_dim)


class PaliGemmaWithExpert(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.paligemma = PaliGemma(config)
        self.gemma_expert = ActionExpert(config)
        self.gradient_checkpointing = False

    @property
    def vlm(self) -> GemmaDecoder:
        return self.paligemma.model.language_model

    @property
    def expert(self) -> GemmaDecoder:
        return self.gemma_expert.model

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.gradient_checkpointing = enabled
        self.paligemma.model.vision_tower.vision_model.encoder.gradient_checkpointing = enabled

    def _call(self, layer: nn.Module, *args, **kwargs):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False, **kwargs)
        return layer(*args, **kwargs)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, 224, 224] in [-1, 1] -> [N, 256, VLM width]: raw projector output, no scaling."""
        features = self.paligemma.model.vision_tower(pixels)
        return self.paligemma.model.multi_modal_projector(features)

    def embed_language_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings, unscaled (pi0 multiplies by sqrt(width) when building the prefix)."""
        return self.vlm.embed_tokens(tokens)

    def prefix_kv(
        self, prefix_embs: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
    ) -> list[KeyValue]:
        """Pass 1: the VLM on the prefix alone -> per-layer (k, v), each [B, kv_heads, P, head_dim].

        The last layer only needs K/V (nothing reads its prefix outputs), so its query, output and MLP
        are skipped; `Pi0Model.unused_parameter_names` lists the weights this leaves unused.
        """
        cos, sin = rope_cos_sin(positions, self.config.vlm.head_dim)
        hidden, cache = prefix_embs, []
        last = len(self.vlm.layers) - 1
        for i, layer in enumerate(self.vlm.layers):
            hidden, kv = self._call(layer, hidden, cos, sin, mask, compute_output=i < last)
            cache.append(kv)
        return cache

    def suffix_forward(
        self,
        suffix_embs: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        prefix_cache: list[KeyValue],
        cond: torch.Tensor | None,
    ) -> torch.Tensor:
        """Pass 2: the expert on the suffix, reading the prefix K/V. mask [B, 1, S, P + S] -> [B, S, width]."""
        cos, sin = rope_cos_sin(positions, self.config.expert.head_dim)
        hidden = suffix_embs
        for layer, kv in zip(self.expert.layers, prefix_cache, strict=True):
            hidden, _ = self._call(layer, hidden, cos, sin, mask, cond, past_kv=kv)
        return self.expert.norm(hidden, cond)[0]

    def forward(
        self,
        prefix_embs: torch.Tensor,
        suffix_embs: torch.Tensor,
        mask_2d: torch.Tensor,
        positions: torch.Tensor,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Joint pass over [prefix; suffix] -> expert output for the suffix tokens [B, S, expert width].

        mask_2d bool [B, P+S, P+S] (from `make_attention_mask_2d`) and positions [B, P+S] cover both
        parts; the prefix rows must not see suffix columns (true for every mask pi0 builds).
        """
        p = prefix_embs.shape[1]
        cache = self.prefix_kv(prefix_embs, positions[:, :p], additive_mask(mask_2d[:, :p, :p]))
        return self.suffix_forward(suffix_embs, positions[:, p:], additive_mask(mask_2d[:, p:]), cache, cond)

    def joint_attention_reference(
        self,
        prefix_embs: torch.Tensor,
        suffix_embs: torch.Tensor,
        mask_2d: torch.Tensor,
        positions: torch.Tensor,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """openpi's formulation: per layer one attention over the concatenated sequence, full mask.

        Independent of the two-pass split (no K/V cache); for tests. Calls sub-modules of the layers
        directly, so it is not meant for FSDP-sharded models.
        """
        mask = additive_mask(mask_2d)
        cos, sin = rope_cos_sin(positions, self.config.vlm.head_dim)
        p = prefix_embs.shape[1]
        hidden = [prefix_embs, suffix_embs]
        conds = [None, cond]
        for vlm_layer, expert_layer in zip(self.vlm.layers, self.expert.layers, strict=True):
            layers = (vlm_layer, expert_layer)
            qs, ks, vs, gates = [], [], [], []
            for layer, x, c, sl in zip(layers, hidden, conds, (slice(None, p), slice(p, None)), strict=True):
                normed, gate = layer.input_layernorm(x, c)
                k, v = layer.self_attn.project_kv(normed, cos[:, :, sl], sin[:, :, sl])
                qs.append(layer.self_attn.project_q(normed, cos[:, :, sl], sin[:, :, sl]))
                ks.append(k)
                vs.append(v)
                gates.append(gate)
            attn = attention(torch.cat(qs, dim=2), torch.cat(ks, dim=2), torch.cat(vs, dim=2), mask)
            parts = (attn[:, :p], attn[:, p:])
            hidden = [
                layer.finish(x, a, g, c)
                for layer, x, a, g, c in zip(layers, hidden, parts, gates, conds, strict=True)
            ]
        return self.expert.norm(hidden[1], cond)[0]
