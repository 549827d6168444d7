"""pi0 / pi0.5: flow-matching action head on PaliGemma, in plain PyTorch with openpi's key names.

Token layout (openpi): prefix = 3 cameras x 256 image tokens, then the prompt tokens (bidirectional);
suffix = [pi0: one state token] + H action tokens (a new causal block: the prefix never sees it).
pi0 mixes the flow-matching time into the action tokens with an MLP; pi0.5 feeds it to every expert
norm through adaRMS instead (and reads the robot state from the prompt, so it has no state token).

Training target (t = 1 is pure noise): x_t = t * noise + (1 - t) * actions, the network predicts
u = noise - actions, and `compute_loss` returns the per-element squared error [B, H, action_dim]; the
caller chooses the reduction (openpi averages all 32 dims). Sampling integrates from t = 1 to 0 with
Euler steps, reusing the prefix K/V cache.

Precision: weights are float32 (master weights). With `config.dtype == "bfloat16"` the transformer
matmuls run under `torch.autocast`; norms, the SigLIP patch/position embeddings, the time embedding and
the action heads (in/out projections, state and time MLPs) stay float32, as in openpi's bf16 mode.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.config import CAMERA_SLOTS, ModelConfig
from model_zoo.gemma import KeyValue
from model_zoo.joint_transformer import (
    PaliGemmaWithExpert,
    additive_mask,
    make_attention_mask_2d,
    positions_from_pad,
)

TIME_MIN_PERIOD = 4e-3
TIME_MAX_PERIOD = 4.0


def sincos_time_embedding(time: torch.Tensor, dim: int) -> torch.Tensor:
    """t [B] -> [B, dim]: sin half then cos half, periods geometric in [4e-3, 4.0], computed in float64."""
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=time.device)
    period = TIME_MIN_PERIOD * (TIME_MAX_PERIOD / TIME_MIN_PERIOD) ** fraction
    angle = (2 * math.pi / period)[None, :] * time.to(torch.float64)[:, None]
    return torch.cat([angle.sin(), angle.cos()], dim=1).to(torch.float32)


def sample_flow_time(batch_size: int, device: torch.device) -> torch.Tensor:
    """t ~ Beta(1.5, 1) * 0.999 + 0.001 (skewed towards t = 1, the noisy end), float32 [B]."""
    beta = torch.distributions.Beta(
        torch.tensor(1.5, device=device), torch.tensor(1.0, device=device)
    ).sample((batch_size,))
    return (beta * 0.999 + 0.001).float()


def sampling_timesteps(num_steps: int) -> list[torch.Tensor]:
    """The t of each Euler step: 1, 1 + dt, ... accumulated in float32 like openpi (while t >= -dt/2)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dt = torch.tensor(-1.0 / num_steps, dtype=torch.float32)
    t = torch.tensor(1.0, dtype=torch.float32)
    steps = []
    while t >= -dt / 2:
        steps.append(t.clone())
        t = t + dt
    return steps


@dataclass
class PrefixContext:
    """Everything the denoising steps need from the prefix (computed once per `sample_actions`)."""

    prefix_len: int
    mask_2d: torch.Tensor  # bool [B, P+S, P+S]
    positions: torch.Tensor  # [B, P+S]
    kv_cache: list[KeyValue] | None  # per VLM layer; None on the no-cache path
    suffix_mask: torch.Tensor | None  # additive [B, 1, S, P+S] for the cached path
    prefix_embs: torch.Tensor | None  # kept only on the no-cache path


class Pi0Model(nn.Module):
    """pi0 (`model_type="pi0"`) or pi0.5 (`"pi05"`). state_dict keys == openpi's, minus the expert lm_head.

    Batch (the model-input contract, docs/architecture.md): ``images`` {slot: float [B, 3, 224, 224] in [-1, 1]}, ``image_masks``
    {slot: bool [B]}, ``state`` [B, action_dim], ``tokens`` int64 [B, L], ``token_mask`` bool [B, L],
    ``actions`` [B, H, action_dim] (training). Slots: base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb.

    `forward(batch)` returns the per-element loss, so DDP / FSDP wrappers can call the module directly;
    `forward(batch, sample=True)` samples actions (routed through `__call__` for the same reason).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        width = config.expert.width
        self.paligemma_with_expert = PaliGemmaWithExpert(config)
        self.action_in_proj = nn.Linear(config.action_dim, width)
        self.action_out_proj = nn.Linear(width, config.action_dim)
        if config.pi05:
            self.time_mlp_in = nn.Linear(width, width)
            self.time_mlp_out = nn.Linear(width, width)
        else:
            self.state_proj = nn.Linear(config.action_dim, width)
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)
        self.set_gradient_checkpointing(config.gradient_checkpointing)
        # Text embeddings are scaled by sqrt(width) in the prefix; this init gives unit-scale tokens for
        # models trained from scratch (tiny). Real runs overwrite it with pretrained weights.
        vlm_width = config.vlm.width
        nn.init.normal_(self.paligemma_with_expert.vlm.embed_tokens.weight, std=vlm_width**-0.5)
        self._apply_freezing()

    # ----------------------------------------------------------------------------------------- setup

    def unused_parameter_names(self) -> list[str]:
        """Weights that cannot affect the loss or the actions: the VLM's final norm and, in its last
        layer, everything after K/V (the suffix only reads the prefix K/V). They are frozen at init so
        DDP sees no unused trainable parameter and the optimizer / EMA keep no state for them."""
        last = len(self.paligemma_with_expert.vlm.layers) - 1
        prefix = "paligemma_with_expert.paligemma.model.language_model."
        names = [f"{prefix}norm.weight"]
        for name, _ in self.paligemma_with_expert.vlm.layers[last].named_parameters():
            if not name.startswith(("input_layernorm.", "self_attn.k_proj.", "self_attn.v_proj.")):
                names.append(f"{prefix}layers.{last}.{name}")
        return names

    def _apply_freezing(self) -> None:
        paligemma = self.paligemma_with_expert.paligemma.model
        if self.config.freeze_vision:
            paligemma.vision_tower.requires_grad_(False)
            paligemma.multi_modal_projector.requires_grad_(False)
        if self.config.freeze_vlm:
            paligemma.language_model.requires_grad_(False)
        params = dict(self.named_parameters())
        for name in self.unused_parameter_names():
            params[name].requires_grad_(False)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute every transformer layer in backward (training only); same as the config flag."""
        self.paligemma_with_expert.set_gradient_checkpointing(enabled)

    def tie_weights(self) -> None:
        """Re-tie lm_head to embed_tokens (call after anything that may break the tie, e.g. to_empty)."""
        self.paligemma_with_expert.paligemma.tie_weights()

    def transformer_blocks(self) -> list[nn.Module]:
        """Every transformer layer (SigLIP, VLM, expert), in forward order: the units for FSDP2
        `fully_shard` and for activation checkpointing."""
        pwe = self.paligemma_with_expert
        vision = pwe.paligemma.model.vision_tower.vision_model.encoder.layers
        return [*vision, *pwe.vlm.layers, *pwe.expert.layers]

    def head_modules(self) -> list[nn.Module]:
        """Action-side modules that stay float32 in every precision mode."""
        names = (
            "action_in_proj",
            "action_out_proj",
            "state_proj",
            "action_time_mlp_in",
            "action_time_mlp_out",
        )
        names += ("time_mlp_in", "time_mlp_out")  # pi0.5 has these instead of state / action-time MLPs
        return [getattr(self, n) for n in names if hasattr(self, n)]

    def _autocast(self, device: torch.device):
        if self.config.dtype == "bfloat16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @staticmethod
    def _head(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """Run an action-side Linear outside autocast, in its weight dtype (float32 unless a wrapper
        such as FSDP casts parameters), and return float32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return module(x.to(module.weight.dtype)).float()

    # ------------------------------------------------------------------------------------ embedding

    def _check_batch(self, batch: Mapping, need_actions: bool) -> None:
        required = ["images", "image_masks", "tokens", "token_mask"]
        if not self.config.pi05:
            required.append("state")
        if need_actions:
            required.append("actions")
        missing = [k for k in required if k not in batch]
        if missing:
            raise ValueError(f"batch is missing {missing} (has {sorted(batch)})")
        for field in ("images", "image_masks"):
            absent = [s for s in CAMERA_SLOTS if s not in batch[field]]
            if absent:
                raise ValueError(f"batch[{field!r}] is missing camera slot(s) {absent}; need {CAMERA_SLOTS}")
        dim = self.config.action_dim
        if "state" in required and batch["state"].shape[-1] != dim:
            raise ValueError(f"batch['state'] last dim {batch['state'].shape[-1]} != action_dim {dim}")
        if need_actions:
            shape = tuple(batch["actions"].shape[1:])
            if shape != (self.config.action_horizon, dim):
                raise ValueError(
                    f"batch['actions'] shape {tuple(batch['actions'].shape)} != "
                    f"[B, action_horizon={self.config.action_horizon}, action_dim={dim}]"
                )

    def embed_prefix(self, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (embeddings [B, 3*256 + L, VLM width] float32, valid bool [B, P], ar flags bool [B, P] all 0)."""
        pwe = self.paligemma_with_expert
        images = [batch["images"][slot] for slot in CAMERA_SLOTS]
        bsize = images[0].shape[0]
        # One SigLIP call for all cameras; the image tokens are the raw projector output (no scaling).
        image_embs = pwe.embed_images(torch.cat(images, dim=0)).float()
        n_cams, n_tok, width = len(images), image_embs.shape[1], image_embs.shape[2]
        image_embs = image_embs.view(n_cams, bsize, n_tok, width).transpose(0, 1).reshape(bsize, -1, width)
        image_valid = torch.stack([batch["image_masks"][slot].bool() for slot in CAMERA_SLOTS], dim=1)
        image_valid = image_valid.repeat_interleave(n_tok, dim=1)
        text_embs = pwe.embed_language_tokens(batch["tokens"]).float() * math.sqrt(width)
        embs = torch.cat([image_embs, text_embs], dim=1)
        valid = torch.cat([image_valid, batch["token_mask"].bool()], dim=1)
        return embs, valid, torch.zeros_like(valid)

    def embed_suffix(
        self, state: torch.Tensor | None, x_t: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> (embeddings [B, S, expert width], valid [B, S], ar [B, S], adaRMS cond [B, width] or None).

        pi0: S = 1 + H (state token, ar 1; then actions, ar [1, 0, ...]); pi0.5: S = H, actions only.
        """
        bsize, horizon = x_t.shape[:2]
        device = x_t.device
        head = self._head
        time_emb = sincos_time_embedding(time, self.action_in_proj.out_features)
        action_emb = head(self.action_in_proj, x_t)
        if self.config.pi05:
            cond = F.silu(head(self.time_mlp_out, F.silu(head(self.time_mlp_in, time_emb))))
            embs, ar = action_emb, [True] + [False] * (horizon - 1)
        else:
            cond = None
            mixed = torch.cat([action_emb, time_emb[:, None].expand_as(action_emb)], dim=2)
            action_emb = head(self.action_time_mlp_out, F.silu(head(self.action_time_mlp_in, mixed)))
            state_emb = head(self.state_proj, state)[:, None]
            embs, ar = torch.cat([state_emb, action_emb], dim=1), [True, True] + [False] * (horizon - 1)
        ar_masks = torch.tensor(ar, dtype=torch.bool, device=device)[None].expand(bsize, -1)
        valid = torch.ones(bsize, embs.shape[1], dtype=torch.bool, device=device)
        return embs, valid, ar_masks, cond

    def _project_actions(self, suffix_out: torch.Tensor) -> torch.Tensor:
        return self._head(self.action_out_proj, suffix_out[:, -self.config.action_horizon :])

    # ------------------------------------------------------------------------------------- training

    def forward(
        self,
        batch: Mapping,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        *,
        sample: bool = False,
        num_steps: int = 10,
        use_kv_cache: bool = True,
    ) -> torch.Tensor:
        """Per-element flow-matching loss [B, H, action_dim], or sampled actions with `sample=True`."""
        if sample:
            return self._sample(batch, num_steps=num_steps, noise=noise, use_kv_cache=use_kv_cache)
        self._check_batch(batch, need_actions=True)
        actions = batch["actions"].float()
        if noise is None:
            noise = torch.randn_like(actions)
        if time is None:
            time = sample_flow_time(actions.shape[0], actions.device)
        t = time.float()[:, None, None]
        x_t = t * noise + (1 - t) * actions
        target = noise - actions
        v_t = self.velocity(batch, x_t, time)
        return F.mse_loss(v_t, target, reduction="none")

    def compute_loss(
        self, batch: Mapping, noise: torch.Tensor | None = None, time: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-element loss [B, H, action_dim] (no reduction); same as calling the module."""
        return self(batch, noise, time)

    def velocity(self, batch: Mapping, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """Full pass (prefix and suffix): predicted velocity v(x_t, t) [B, H, action_dim], float32."""
        device = x_t.device
        with self._autocast(device):
            prefix_embs, prefix_valid, prefix_ar = self.embed_prefix(batch)
            suffix_embs, suffix_valid, suffix_ar, cond = self.embed_suffix(batch.get("state"), x_t, time)
            valid = torch.cat([prefix_valid, suffix_valid], dim=1)
            mask_2d = make_attention_mask_2d(valid, torch.cat([prefix_ar, suffix_ar], dim=1))
            positions = positions_from_pad(valid)
            out = self.paligemma_with_expert(prefix_embs, suffix_embs, mask_2d, positions, cond)
            return self._project_actions(out)

    # ------------------------------------------------------------------------------------- sampling

    def encode_prefix(self, batch: Mapping, use_kv_cache: bool = True) -> PrefixContext:
        """Embed the prefix and (with `use_kv_cache`) run the VLM on it once."""
        self._check_batch(batch, need_actions=False)
        device = batch["tokens"].device
        bsize = batch["tokens"].shape[0]
        suffix_len = self.config.action_horizon + (0 if self.config.pi05 else 1)
        with self._autocast(device):
            prefix_embs, prefix_valid, prefix_ar = self.embed_prefix(batch)
            p = prefix_embs.shape[1]
            suffix_ar = torch.zeros(bsize, suffix_len, dtype=torch.bool, device=device)
            suffix_ar[:, 0] = True
            if not self.config.pi05:
                suffix_ar[:, 1] = True
            valid = torch.cat([prefix_valid, torch.ones_like(suffix_ar)], dim=1)
            mask_2d = make_attention_mask_2d(valid, torch.cat([prefix_ar, suffix_ar], dim=1))
            positions = positions_from_pad(valid)
            if not use_kv_cache:
                return PrefixContext(p, mask_2d, positions, None, None, prefix_embs)
            cache = self.paligemma_with_expert.prefix_kv(
                prefix_embs, positions[:, :p], additive_mask(mask_2d[:, :p, :p])
            )
        return PrefixContext(p, mask_2d, positions, cache, additive_mask(mask_2d[:, p:]), None)

    def denoise_step(
        self, context: PrefixContext, state: torch.Tensor | None, x_t: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        """Velocity at (x_t, t) given the encoded prefix -> [B, H, action_dim] float32."""
        pwe = self.paligemma_with_expert
        p = context.prefix_len
        with self._autocast(x_t.device):
            suffix_embs, _, _, cond = self.embed_suffix(state, x_t, time)
            if context.kv_cache is not None:
                positions = context.positions[:, p:]
                out = pwe.suffix_forward(suffix_embs, positions, context.suffix_mask, context.kv_cache, cond)
            else:
                out = pwe.joint_attention_reference(
                    context.prefix_embs, suffix_embs, context.mask_2d, context.positions, cond
                )
            return self._project_actions(out)

    @torch.no_grad()
    def sample_actions(
        self,
        batch: Mapping,
        num_steps: int = 10,
        noise: torch.Tensor | None = None,
        use_kv_cache: bool = True,
    ) -> torch.Tensor:
        """Euler-integrate the flow from noise (t = 1) to actions (t = 0) -> [B, H, action_dim] float32.

        `use_kv_cache=False` recomputes the whole joint sequence every step with openpi's single-attention
        formulation; it exists to test the cached path.
        """
        return self(batch, noise, sample=True, num_steps=num_steps, use_kv_cache=use_kv_cache)

    def _sample(
        self, batch: Mapping, *, num_steps: int, noise: torch.Tensor | None, use_kv_cache: bool
    ) -> torch.Tensor:
        timesteps = sampling_timesteps(num_steps)
        context = self.encode_prefix(batch, use_kv_cache=use_kv_cache)
        tokens = batch["tokens"]
        shape = (tokens.shape[0], self.config.action_horizon, self.config.action_dim)
        x_t = torch.randn(shape, device=tokens.device) if noise is None else noise.float()
        dt = torch.tensor(-1.0 / num_steps, dtype=torch.float32, device=tokens.device)
        state = batch.get("state")
        for t in timesteps:
            time = t.to(tokens.device).expand(shape[0])
            x_t = x_t + dt * self.denoise_step(context, state, x_t, time)
        return x_t
