"""What the trainer needs to know about the model and the data: the ``TrainTask`` interface.

``steps.train.trainer.Trainer`` owns everything model-agnostic (process groups, DDP / FSDP2, accumulation,
loss normalisation over the global batch, AdamW + schedule, EMA, checkpoints and exact resume,
validation, MLflow). A task supplies the rest:

- ``check_inputs()``: validate the config's inputs before anything expensive (errors name the field);
- ``build_model(precision, load_weights=True)`` -> ``nn.Module`` (pretrained weights, LoRA applied);
- ``build_model_for_weights(precision)``: the same architecture, cheapest to fill with a full state dict
  (``load_state_dict(..., assign=True)``; the FSDP export on rank 0);
- ``shard_units(model)``: the blocks FSDP2 shards one by one before the root;
- ``build_loaders(ctx, start_position, pin_memory)`` -> ``steps.train.data_loader.Loaders`` whose train
  loader resumes at a global stream position;
- ``count(batch)``: the loss elements of a micro-batch (the denominator, summed over the global batch
  before any forward); ``static_count()``: that sum when it is a constant (saves a collective);
- ``loss_sum(module, batch)`` -> (summed loss tensor, element count) for one micro-batch;
- ``flops_per_sample(model)`` (MFU) and ``write_export(model, export_dir, ...)`` (rank 0, plain model).

``VLATask`` is pi0 / pi0.5 on LeRobot data (the original trainer code, moved here unchanged);
``steps.text.train_task.TextTask`` fine-tunes a Hugging Face causal LM. ``make_task`` picks one by the config
type's ``kind``.
"""

from __future__ import annotations

from steps.train import setup as train_setup
from steps.train.config import TrainConfig


def make_task(cfg: TrainConfig, ct):
    """The task for a resolved config and its config type (``kind: text`` -> TextTask)."""
    if getattr(ct, "kind", None) == "text":
        from steps.text.train_task import TextTask

        return TextTask(cfg, ct)
    return VLATask(cfg, ct)


class VLATask:
    """pi0 / pi0.5 flow matching on a LeRobot dataset (norm stats, SentencePiece prompts)."""

    def __init__(self, cfg: TrainConfig, ct) -> None:
        self.cfg, self.ct = cfg, ct
        self.norm_stats = self.tokenizer = None

    def check_inputs(self) -> None:
        self.norm_stats, self.tokenizer = train_setup.check_inputs(self.cfg, self.ct)

    def build_model(self, precision: str, *, load_weights: bool = True):
        return train_setup.build_model(self.cfg, self.ct, precision, load_weights=load_weights)

    def build_model_for_weights(self, precision: str):
        # On the meta device: no random init of weights about to be replaced (the model has no buffers).
        import torch

        with torch.device("meta"):
            return self.build_model(precision, load_weights=False)

    def shard_units(self, model):
        return model.transformer_blocks()

    def build_loaders(self, *, ctx, start_position: int, pin_memory: bool):
        from steps.train.data_loader import build_loaders

        cfg = self.cfg
        return build_loaders(
            self.ct, self.norm_stats, self.tokenizer, dataset_root=cfg.dataset_root,
            train_episodes=cfg.train_episodes, val_episodes=cfg.val_episodes if cfg.val_every else (),
            global_batch=cfg.global_batch, micro_batch=cfg.micro_batch, world_size=ctx.world_size,
            rank=ctx.rank, start_position=start_position, seed=cfg.seed, augment=cfg.augment,
            num_workers=cfg.num_workers, val_samples=cfg.val_samples, pin_memory=pin_memory,
        )  # fmt: skip

    def _weights(self, batch, shape):
        from steps.train.loss import loss_weights

        return loss_weights(batch, shape, action_dim=self.ct.action_dim, reduction=self.cfg.loss_reduction,
                            mask_padded=self.cfg.mask_padded_actions)  # fmt: skip

    def static_count(self) -> float | None:
        if self.cfg.loss_reduction == "all_dims" and not self.cfg.mask_padded_actions:
            return float(self.cfg.global_batch * self.ct.action_horizon * 32)
        return None

    def count(self, batch) -> float:
        return float(self._weights(batch, batch["actions"].shape).sum())

    def loss_sum(self, module, batch):
        noise, t = batch.pop("noise"), batch.pop("time")
        batch.pop("position", None)
        per_element = module(batch, noise, t)
        w = self._weights(batch, per_element.shape)
        return (per_element * w).sum(), float(w.sum())

    def flops_per_sample(self, model) -> float:
        towers = train_setup.trainable_towers(model)
        return train_setup.flops_per_sample(model, trainable_towers=towers)

    def write_export(self, model, export_dir, *, step: int, source: str, ema_weights):
        from steps.train.export import write_export

        cfg = self.cfg
        return write_export(model, export_dir, train_config=cfg, config_type=self.ct,
                            norm_stats_path=cfg.norm_stats_path, tokenizer_path=cfg.tokenizer_path,
                            step=step, source=source, ema_weights=ema_weights)  # fmt: skip
