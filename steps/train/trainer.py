"""Fine-tune pi0 / pi0.5 on a LeRobot dataset: ``main(config)`` for tests and the flow, ``__main__`` for torchrun.

Features (each one a config field of ``TrainConfig``):

- one code path for any world size: a single process (no process group), DDP, or FSDP2
  (``fully_shard`` per transformer block, then the root); gloo on CPU, NCCL on CUDA;
- global batch = world size x micro batch x accumulation; the loss is normalised by the element count
  of the whole global batch, so any split gives the same update; DDP/FSDP gradient sync only on the
  last micro-step; optimizer and scheduler step once per global step;
- AdamW + warmup-cosine (or warmup-constant) from the config type's preset; gradient clipping with the
  norm logged; EMA of the weights (default on for full fine-tuning, off for LoRA); bf16 autocast with
  fp32 master weights on GPU; per-layer activation checkpointing;
- a non-finite loss or gradient norm skips the optimizer step; ``max_nonfinite_steps`` in a row stop
  the run (``NonFiniteLossError``) without writing a checkpoint, so the last good one stays the latest;
- atomic checkpoints (local or ``s3://``) every ``save_every`` steps, at the end and at each new best
  validation loss; the latest complete one is resumed exactly (same data order, noise, weights);
- validation loss on held-out episodes every ``val_every`` steps with fixed noise and time;
- a self-contained export folder at the end (``steps.train.export``);
- rank-0 metrics to MLflow (optional, imported lazily) and a console progress line.

Raises:
    ValueError: a bad config, dataset, norm stats, tokenizer, pretrained weights or checkpoint, before
        any training step (each message names the field).
    NonFiniteLossError: too many non-finite steps in a row.

torch and the model are imported inside functions: the flow imports this module at the top level.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steps.train import setup as train_setup
from steps.train.config import TrainConfig


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive non-finite losses / gradient norms."""


@dataclass
class TrainResult:
    """What a training run did (returned by ``main`` on every rank; written as JSON by the CLI)."""

    final_step: int
    checkpoint_dir: str
    last_checkpoint_step: int | None
    best_step: int | None
    best_val_loss: float | None
    export_dir: str | None
    resumed_from: int | None
    world_size: int
    # (step, loss) for every step this process ran, and (step, val loss) for every validation.
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    skipped_steps: int = 0
    samples_per_s: float = float("nan")
    data_wait_frac: float = float("nan")
    mlflow_run_id: str | None = None
    # Set when training finished but the tracking server did not take the last metric points in time
    # (they are in the last checkpoint; a resumed run sends them without training again).
    tracking_error: str | None = None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _kill_self() -> None:
    """Fault injection: die like a preempted node (no cleanup, no flush)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    """setup() -> train() -> export() -> cleanup(); ``main`` runs them in that order."""

    def __init__(self, config: TrainConfig) -> None:
        self.raw_config = config

    # --- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        import numpy as np
        import torch

        from steps.train import checkpoints as ckpt
        from steps.train import distributed as D

        config = self.raw_config
        # 1. Process group first: the world size decides micro batch and accumulation.
        self.ctx = D.init_distributed(config.device, need_group=config.parallelism == "fsdp")
        self.cfg = cfg = config.resolve(self.ctx.world_size)
        self.ct = cfg.config_type  # resolved once, in the flow's start (or from the CLI's name)
        # What is model/data specific (pi0 on LeRobot, or a causal LM on text) lives in the task.
        from steps.train.task import make_task

        self.task = make_task(cfg, self.ct)
        self.accum = cfg.grad_accum_steps(self.ctx.world_size)
        self.fsdp = cfg.parallelism == "fsdp"
        self.device = self.ctx.device
        precision = (
            cfg.precision if cfg.precision != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        )
        self.precision = precision
        # 2. Inputs are checked before anything expensive (every message names the field).
        self.task.check_inputs()
        self.store = ckpt.open_store(cfg.checkpoint_dir)
        # 3. Resume decision on rank 0, shared by all; refuse a checkpoint of another model early.
        if self.ctx.is_main:
            removed = self.store.clean_incomplete()
            if removed:
                print(f"removed incomplete checkpoints: {removed}", file=sys.stderr)
        self.resume_step = ckpt.find_latest(self.ctx, self.store)
        if self.resume_step is not None:
            train_setup.check_resume_config(cfg, ckpt.read_checkpoint_config(self.ctx, self.store, self.resume_step),
                                 self.resume_step)  # fmt: skip
        # 4. Model: same init on every rank (seed without rank), pretrained weights, LoRA.
        torch.manual_seed(cfg.seed)
        self.model = self.task.build_model(precision)
        if not self.fsdp:
            self.model.to(self.device)
        # FSDP2's fully_shard moves each unit's parameters to the mesh's device as it shards them, so only
        # one block at a time is whole on the GPU (moving the model first would put all of it on every GPU).
        # 5. Wrap: FSDP2 shards in place (blocks, then root); DDP wraps. Optimizer after wrapping.
        self.wrapped = self._parallelize(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("lora: no trainable parameters after applying the LoRA preset")
        preset = self.ct.train
        fused = self.device.type == "cuda" and not self.fsdp
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.peak_lr, betas=preset.betas, eps=preset.eps,
                                           weight_decay=cfg.weight_decay, fused=fused or None)  # fmt: skip
        from steps.train.schedule import LrSchedule, build_scheduler

        self.schedule = LrSchedule(cfg.peak_lr, cfg.warmup_steps, cfg.decay_steps, cfg.end_lr, cfg.schedule)
        self.scheduler = build_scheduler(self.optimizer, self.schedule)
        from steps.train.ema import EMA

        self.ema = EMA(self.model, cfg.ema_decay) if cfg.use_ema else None
        # 6. Training state (restored from the checkpoint when resuming).
        self.step = 0
        self.samples_seen = 0
        unsent: list = []  # metric points the checkpoint's process had not got acknowledged
        self.best_val_loss: float | None = None
        self.best_step: int | None = None
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        if self.resume_step is not None:
            state = ckpt.load_training_checkpoint(self.ctx, self.store, self.resume_step, model=self.model,
                                                  optimizer=self.optimizer, scheduler=self.scheduler,
                                                  ema=self.ema, fsdp=self.fsdp)  # fmt: skip
            self.step = state["step"]
            self.samples_seen = state["samples_seen"]
            self.best_val_loss = state.get("best_val_loss")
            self.best_step = state.get("best_step")
            self.skipped_steps = state.get("skipped_steps", 0)
            unsent = state.get("unsent_metrics", [])
            if self.ctx.is_main:
                print(f"resumed from {self.store.uri}/{ckpt.step_dir_name(self.step)} "
                      f"({self.samples_seen} samples seen)", file=sys.stderr)  # fmt: skip
        else:
            # Per-rank streams for anything random in the model (dropout); data randomness is keyed
            # by sample position in the loader and does not use these.
            torch.manual_seed(cfg.seed + 1_000_003 * self.ctx.rank)
            np.random.seed((cfg.seed + 7919 * self.ctx.rank) % 2**32)
            import random

            random.seed(cfg.seed + 7919 * self.ctx.rank)
        self.last_checkpoint_step = self.resume_step
        # 7. Data: the sampler starts at the restored position (depends on step 6).
        self.loaders = self.task.build_loaders(ctx=self.ctx, start_position=self.samples_seen,
                                               pin_memory=self.device.type == "cuda")  # fmt: skip
        # 8. Logging (rank 0 only); metrics continue from the restored step.
        from steps.train.metrics_logger import MetricsLogger

        self.logger = MetricsLogger(rank=self.ctx.rank, tracking=cfg.mlflow, max_steps=cfg.max_steps,
                                    start_step=self.step, tracking_uri=cfg.mlflow_tracking_uri,
                                    experiment=cfg.mlflow_experiment, wait_s=cfg.mlflow_wait_s)  # fmt: skip
        self.logger.requeue(unsent)  # before this process's own points, so each key stays in step order
        self.logger.log_params({**cfg.flat_params(), "world_size": self.ctx.world_size,
                                "grad_accum_steps": self.accum,
                                "trainable_params": sum(p.numel() for p in trainable)})  # fmt: skip
        self.metrics_file = open(cfg.metrics_file, "a") if (cfg.metrics_file and self.ctx.is_main) else None  # noqa: SIM115
        self.flops_per_sample = self.task.flops_per_sample(self.model)
        self.peak_flops = train_setup.peak_flops(self.device)

    def _parallelize(self, model):
        import torch

        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mesh = init_device_mesh(self.device.type, (self.ctx.world_size,))
            # Parameters are gathered in fp32 and the model autocasts internally, so norms, heads and
            # embeddings keep openpi's fp32 treatment; gradients are reduced in fp32.
            mp = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
            for block in self.task.shard_units(model):
                fully_shard(block, mesh=mesh, mp_policy=mp)
            fully_shard(model, mesh=mesh, mp_policy=mp)
            return model
        if self.ctx.active and self.ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        return model

    # --- one optimizer step -------------------------------------------------------------------
    def _no_sync(self, last: bool):
        if self.fsdp:
            self.wrapped.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        if not last and hasattr(self.wrapped, "no_sync"):
            return self.wrapped.no_sync()
        return contextlib.nullcontext()

    def _to_device(self, batch: dict) -> dict:
        from steps.policy import to_device

        return to_device(batch, self.device, non_blocking=True)

    def train_step(self, micro_batches: list[dict]) -> tuple[float, float, bool]:
        """Forward/backward over this rank's micro-batches, then one optimizer step if finite.

        Returns (global mean loss, grad norm before clipping, whether the step was applied).
        """
        import torch

        from steps.train import distributed as D

        # Denominator: the number of counted loss elements in the whole global batch.
        denom = self.task.static_count()
        if denom is None:
            local = sum(self.task.count(mb) for mb in micro_batches)
            denom = max(D.all_reduce_sum(self.ctx, [local])[0], 1.0)
        # DDP / FSDP average gradients over ranks; scale up so the result is sum / denom.
        scale = self.ctx.world_size / denom
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, mb in enumerate(micro_batches):
            with self._no_sync(i == len(micro_batches) - 1):
                weighted, _ = self.task.loss_sum(self.wrapped, mb)
                (weighted * scale).backward()
            loss_sum += weighted.detach().double()
        loss = D.all_reduce_sum(self.ctx, [float(loss_sum)])[0] / denom
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor; every rank gets the same total
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, finite

    # --- validation ---------------------------------------------------------------------------
    def validate(self) -> float | None:
        import torch

        from steps.train import distributed as D

        if self.loaders.val is None:
            return None
        # DDP: the plain module (no collective in forward). FSDP: the sharded module, which every rank
        # calls equally often (validation shards are the same size on every rank).
        module = self.wrapped if self.fsdp else self.model
        swap = self.ema.swap_into(self.model) if self.ema is not None else contextlib.nullcontext()
        total, count = 0.0, 0.0
        self.model.eval()
        try:
            with swap, torch.no_grad():
                for batch in self.loaders.val:
                    weighted, n = self.task.loss_sum(module, self._to_device(batch))
                    total += float(weighted)
                    count += n
        finally:
            self.model.train()
        total, count = D.all_reduce_sum(self.ctx, [total, count])
        return total / count if count else None

    # --- checkpoints --------------------------------------------------------------------------
    def save(self, val_loss: float | None) -> None:
        from steps.train import checkpoints as ckpt
        from steps.train import distributed as D

        cfg = self.cfg
        hook = None
        if cfg.fail_during_checkpoint_step == self.step:

            def hook(name: str) -> None:  # noqa: ARG001 - any first file will do
                _kill_self()

        state = {
            "samples_seen": self.samples_seen,
            "optimizer_steps": int(self.scheduler.last_epoch),
            "val_loss": val_loss,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "skipped_steps": self.skipped_steps,
            "seed": cfg.seed,
            "global_batch": cfg.global_batch,
            # Points (all at steps <= this one) the tracking server has not acknowledged yet: a resumed
            # process sends them, so a crash during a tracking outage loses none.
            "unsent_metrics": self.logger.unsent(),
        }
        ckpt.save_training_checkpoint(self.ctx, self.store, self.step, model=self.model, optimizer=self.optimizer,
                                      scheduler=self.scheduler, ema=self.ema, trainer_state=state,
                                      config_json=cfg.to_json(), norm_stats_path=cfg.norm_stats_path,
                                      fsdp=self.fsdp, hook=hook)  # fmt: skip
        self.last_checkpoint_step = self.step
        if self.ctx.is_main:
            ckpt.prune(self.store, cfg.keep_last)
        D.barrier(self.ctx)

    # --- the loop -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        import torch

        cfg = self.cfg
        result = TrainResult(final_step=self.step, checkpoint_dir=self.store.uri,
                             last_checkpoint_step=self.last_checkpoint_step, best_step=self.best_step,
                             best_val_loss=self.best_val_loss, export_dir=None, resumed_from=self.resume_step,
                             world_size=self.ctx.world_size, skipped_steps=self.skipped_steps,
                             mlflow_run_id=self.logger.run_id)  # fmt: skip
        self.wrapped.train()
        data_iter = iter(self.loaders.train)
        window = {"time": 0.0, "data": 0.0, "steps": 0}
        total = {"time": 0.0, "data": 0.0, "steps": 0}
        while self.step < cfg.max_steps:
            t0 = time.perf_counter()
            micro_batches = [self._to_device(next(data_iter)) for _ in range(self.accum)]
            t_data = time.perf_counter() - t0
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            loss, grad_norm, applied = self.train_step(micro_batches)
            self.step += 1
            self.samples_seen += cfg.global_batch
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            for acc in (window, total):
                acc["time"] += dt
                acc["data"] += t_data
                acc["steps"] += 1
            if applied:
                self.nonfinite_in_a_row = 0
            else:
                self.nonfinite_in_a_row += 1
                self.skipped_steps += 1
                if self.ctx.is_main:
                    print(f"step {self.step}: non-finite loss {loss} / grad norm {grad_norm}; optimizer step "
                          f"skipped ({self.nonfinite_in_a_row} in a row)", file=sys.stderr)  # fmt: skip
                if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                    raise NonFiniteLossError(
                        f"{self.nonfinite_in_a_row} non-finite steps in a row (last at step {self.step}: loss "
                        f"{loss}, grad norm {grad_norm}); stopping. The last good checkpoint is "
                        f"{self.store.uri} step {self.last_checkpoint_step}; lower peak_lr or check the data."
                    )
            result.losses.append((self.step, loss))
            metrics = {
                "train/loss": loss,
                "train/grad_norm": grad_norm,
                "train/lr": lr,
                "train/skipped_steps": self.skipped_steps,
                "perf/step_time_s": dt,
                "perf/data_wait_s": t_data,
            }
            # Validation, best tracking and checkpoints.
            val_loss = None
            if self.loaders.val is not None and cfg.val_every and self.step % cfg.val_every == 0:
                val_loss = self.validate()
                if val_loss is not None:
                    result.val_losses.append((self.step, val_loss))
                    metrics["val/loss"] = val_loss
            new_best = val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss)
            if new_best:
                self.best_val_loss, self.best_step = val_loss, self.step
            self._write_metrics_file(metrics)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps or val_loss is not None:
                metrics.update(self._perf_metrics(window))
                self.logger.log_metrics(metrics, self.step)
                window = {"time": 0.0, "data": 0.0, "steps": 0}
            if self.step % cfg.save_every == 0 or self.step == cfg.max_steps or new_best:
                self.save(val_loss)
                if cfg.fail_after_step == self.step:
                    _kill_self()
        result.final_step = self.step
        result.last_checkpoint_step = self.last_checkpoint_step
        result.best_step, result.best_val_loss = self.best_step, self.best_val_loss
        result.skipped_steps = self.skipped_steps
        if total["steps"]:
            result.samples_per_s = total["steps"] * cfg.global_batch / total["time"]
            result.data_wait_frac = total["data"] / total["time"]
        return result

    def _perf_metrics(self, window: dict) -> dict[str, float]:
        import torch

        if not window["steps"] or window["time"] <= 0:
            return {}
        step_time = window["time"] / window["steps"]
        samples_per_s = self.cfg.global_batch / step_time
        out = {"perf/step_time_s": step_time, "perf/samples_per_s": samples_per_s,
               "perf/data_wait_frac": window["data"] / window["time"]}  # fmt: skip
        if self.device.type == "cuda":
            out["perf/gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.peak_flops:
            out["perf/mfu"] = self.flops_per_sample * samples_per_s / (self.peak_flops * self.ctx.world_size)
        return out

    def _write_metrics_file(self, metrics: dict) -> None:
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps({"step": self.step, **metrics}) + "\n")
            self.metrics_file.flush()

    # --- export -----------------------------------------------------------------------------------
    def export(self, result: TrainResult) -> None:
        from steps.train import checkpoints as ckpt
        from steps.train import distributed as D

        cfg = self.cfg
        source_step = self.step
        source = "last"
        if cfg.export_from == "best" and self.best_step is not None and self.best_step != self.step:
            ckpt.load_weights_for_export(self.ctx, self.store, self.best_step, model=self.model, ema=self.ema,
                                         fsdp=self.fsdp)  # fmt: skip
            source_step, source = self.best_step, "best"
        elif cfg.export_from == "best":
            source = "best"
        export_dir = cfg.export_dir or train_setup.default_export_dir(cfg)
        model, ema_weights = self._gather_for_export()
        if self.ctx.is_main:
            from steps.progress import stage

            with stage(
                "export", f"writing the model of step {source_step} ({source} weights) to {export_dir}"
            ):
                self.task.write_export(
                    model, export_dir, step=source_step, source=source, ema_weights=ema_weights
                )
            if cfg.checkpoint_dir.startswith("s3://") and cfg.export_dir is None:
                print(f"export written to local {export_dir} (checkpoint_dir is on S3)", file=sys.stderr)
        D.barrier(self.ctx)
        result.export_dir = str(export_dir)

    def _gather_for_export(self):
        """A plain CPU/GPU model with full weights on rank 0 (collective under FSDP)."""
        if not self.fsdp:
            ema = self.ema.state_dict() if self.ema is not None else None
            return self.model, ema
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        ema = None
        if self.ema is not None:
            ema = {
                k: v.full_tensor().cpu() if hasattr(v, "full_tensor") else v.cpu()
                for k, v in self.ema.shadow.items()
            }
        if not self.ctx.is_main:
            return None, None
        from model_zoo.checkpoint import assign_state_dict

        model = self.task.build_model_for_weights(self.precision)
        assign_state_dict(model, full)  # the gathered tensors, not a second copy
        return model, ema

    def cleanup(self, failed: bool = False) -> None:
        from steps.train import distributed as D
        from steps.train.tracking_queue import TrackingUnavailable

        try:
            if getattr(self, "metrics_file", None) is not None:
                self.metrics_file.close()
            if hasattr(self, "logger"):
                self.logger.close(status="FAILED" if failed else "FINISHED")
        except TrackingUnavailable as exc:
            if not failed:
                raise
            print(exc, file=sys.stderr)  # the training error that is propagating matters more
        finally:
            if hasattr(self, "ctx"):
                D.cleanup(self.ctx)


def main(config: TrainConfig) -> TrainResult:
    """Train (resuming from the latest complete checkpoint in ``config.checkpoint_dir``) and export.

    A tracking server that did not take the last metrics in time (``TrackingUnavailable``) does not undo a
    finished training: the result carries the error (``tracking_error``) and the caller decides.
    """
    from steps.train.tracking_queue import TrackingUnavailable

    trainer = Trainer(config)
    result, failed = None, True
    try:
        trainer.setup()
        result = trainer.train()
        trainer.export(result)
        failed = False
    finally:
        try:
            trainer.cleanup(failed=failed)
        except TrackingUnavailable as exc:
            if failed:
                raise
            result.tracking_error = str(exc)
    return result


# ---------------------------------------------------------------------------------------------
# CLI (torchrun entry point)
# ---------------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    """``--config FILE.json`` and/or ``--<field> VALUE`` overrides (JSON values: 8, 1e-4, true, [0,1])."""
    parser = argparse.ArgumentParser(prog="python -m steps.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="TrainConfig JSON file")
    parser.add_argument("--result_json", help="write the TrainResult here (rank 0)")
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name}", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name)
        if value is not None:
            data[f.name] = (
                str(value)
                if f.name in ("config_type",) or f.name.endswith(("_path", "_dir", "_root"))
                else _parse_value(value)
            )
    if isinstance(data.get("lora"), str):
        data["lora"] = json.loads(data["lora"])
    return TrainConfig.from_dict(data), args.result_json


def cli(argv: list[str] | None = None) -> int:
    # --error_json: where a user error (bad data, weights) goes for the flow's train step (steps.errors).
    errors_arg = argparse.ArgumentParser(add_help=False)
    errors_arg.add_argument("--error_json")
    known, rest = errors_arg.parse_known_args(argv)
    config, result_json = parse_args(rest)
    try:
        result = main(config)
    except Exception as exc:
        from steps import errors

        if not (known.error_json and errors.is_user_error(exc)):
            raise
        report_user_error(exc, known.error_json)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        text = json.dumps(result.to_dict(), indent=2)
        if result_json:
            Path(result_json).write_text(text + "\n")
        print(json.dumps({k: v for k, v in result.to_dict().items() if k not in ("losses", "val_losses")}))
    return 0


def report_user_error(exc: BaseException, error_json: str) -> None:
    """The error in ``error_json`` and its traceback in a file beside it; the launching step shows it (as one
    line: nothing is printed here, so the console does not show it twice)."""
    from steps import errors

    rank = int(os.environ.get("RANK", "0"))
    path = Path(error_json)
    saved = errors.save_traceback(exc, path.with_name(f"{path.stem}.rank{rank}.traceback.txt"))
    # Every failing rank writes the same file (atomically): any one of them is the error to show.
    errors.write_error_file(path, exc, saved)
