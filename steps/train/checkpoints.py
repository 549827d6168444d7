"""Training checkpoints: atomic, resumable, local or on S3.

Layout of one checkpoint ``<checkpoint_dir>/step_000001000/``::

    model.safetensors     trainable weights only (the adapter + kept-trainable modules for LoRA), fp32  [DDP]
    ema.safetensors       EMA shadow of the trainable weights (when EMA is on)                          [DDP]
    optimizer.pt          AdamW state (torch.save of our own state dict; loaded with weights_only=True) [DDP]
    dcp/                  model / optimizer / EMA shards through torch.distributed.checkpoint          [FSDP]
    rng.pt                per-rank RNG states (torch, CUDA, numpy, python)
    trainer_state.json    step, sampler position, scheduler state, best validation loss, ...
    config.json           the resolved TrainConfig
    norm_stats.json       the statistics the model was trained with
    COMPLETE              written last; a checkpoint without it does not exist

Atomic commit, S3 and retention live in ``steps.train.checkpoint_store``; this module decides what goes into a
checkpoint and how every rank gets it back.

Our own checkpoints are trusted (this project wrote them): optimizer and RNG state go through
``torch.save`` and come back with ``torch.load(weights_only=True)``; user-supplied weights never do.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from typing import Any

import numpy as np
import torch

from steps.train.checkpoint_store import (  # noqa: F401 - re-exported: the trainer and tests use one module
    COMPLETE,
    FileHook,
    LocalStore,
    S3Store,
    best_step,
    fsync_file,
    open_store,
    prune,
    step_dir_name,
    steps_to_keep,
    write_json,
    write_text_durable,
)

# ---------------------------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """This process's RNG states, in types that ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))  # fmt: skip
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Save / load the training state (collective: every rank calls these)
# ---------------------------------------------------------------------------------------------

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
NORM_STATS_FILE = "norm_stats.json"
DCP_DIR = "dcp"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (for LoRA: the adapter and the modules kept trainable)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_training_checkpoint(
    ctx,
    store,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    ema,
    trainer_state: dict,
    config_json: str,
    norm_stats_path: str | os.PathLike,
    fsdp: bool,
    hook: FileHook | None = None,
) -> None:
    """Write one checkpoint atomically. Collective: every rank must call it with the same ``step``.

    ``model`` is the unwrapped module (FSDP2 modules are sharded in place and used as they are).
    ``hook(name)`` runs after each file is complete: tests use it to kill the process mid-checkpoint.
    """
    from safetensors.torch import save_file

    from steps.train import distributed as D

    local_shared = isinstance(store, LocalStore)
    if ctx.is_main or not local_shared:
        staging = store.prepare(step)
    D.barrier(ctx)  # the shared staging folder exists before any rank writes into it
    staging = store.staging_dir(step)
    written: list[str] = []

    def done(rel: str) -> None:
        written.append(rel)
        if hook is not None and local_shared:
            hook(rel)

    if fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = {
            "model": {k: v for k, v in model.state_dict().items() if k in _trainable_names(model)},
            "optim": get_optimizer_state_dict(model, optimizer),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        dcp.save(state, checkpoint_id=str(staging / DCP_DIR))
        for path in sorted((staging / DCP_DIR).iterdir()):
            own = path.name.startswith(f"__{ctx.rank}_") if path.suffix == ".distcp" else ctx.is_main
            if own:
                done(f"{DCP_DIR}/{path.name}")
    elif ctx.is_main:
        save_file({k: v.float().contiguous().cpu() for k, v in trainable_state(model).items()},
                  str(staging / MODEL_FILE))  # fmt: skip
        fsync_file(staging / MODEL_FILE)
        done(MODEL_FILE)
        if ema is not None:
            save_file({k: v.contiguous().cpu() for k, v in ema.state_dict().items()}, str(staging / EMA_FILE))
            fsync_file(staging / EMA_FILE)
            done(EMA_FILE)
        torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        fsync_file(staging / OPTIMIZER_FILE)
        done(OPTIMIZER_FILE)

    rng_states = D.gather_objects(ctx, capture_rng())
    if ctx.is_main:
        torch.save(rng_states, staging / RNG_FILE)
        fsync_file(staging / RNG_FILE)
        done(RNG_FILE)
        state = {**trainer_state, "step": step, "scheduler": scheduler.state_dict(),
                 "world_size": ctx.world_size, "format": "dcp" if fsdp else "single"}  # fmt: skip
        write_json(staging / STATE_FILE, state)
        done(STATE_FILE)
        write_text_durable(staging / CONFIG_FILE, config_json + "\n")
        done(CONFIG_FILE)
        shutil.copyfile(norm_stats_path, staging / NORM_STATS_FILE)
        fsync_file(staging / NORM_STATS_FILE)
        done(NORM_STATS_FILE)

    if isinstance(store, S3Store):
        store.commit(step, staging, written, is_main=ctx.is_main, hook=hook)
        D.barrier(ctx)  # every rank's uploads are in before the marker
        if ctx.is_main:
            store.seal(step)
            shutil.rmtree(staging, ignore_errors=True)
    else:
        D.barrier(ctx)  # every rank's shards are on disk before rank 0 renames the folder
        store.commit(step, staging, written, is_main=ctx.is_main, hook=hook)
    D.barrier(ctx)


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def find_latest(ctx, store) -> int | None:
    """The newest complete checkpoint's step as rank 0 sees it, agreed by every rank."""
    from steps.train import distributed as D

    step = store.complete_steps()[-1] if ctx.is_main and store.complete_steps() else None
    return D.broadcast_object(ctx, step)


def read_checkpoint_config(ctx, store, step: int) -> dict:
    """The resolved config stored with a checkpoint (read on rank 0, shared)."""
    from steps.train import distributed as D

    data = store.read_json(step, CONFIG_FILE) if ctx.is_main else None
    return D.broadcast_object(ctx, data)


def load_training_checkpoint(
    ctx,
    store,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    ema,
    fsdp: bool,
) -> dict:
    """Restore model, optimizer, scheduler, EMA and this rank's RNG; return the trainer state.

    DDP: rank 0 reads the files and broadcasts the tensors, so every rank holds the same state even
    when only rank 0 can see the folder. FSDP: each rank reads its own shards through DCP.
    Raises ValueError (naming ``checkpoint_dir``) when the weights do not fit the model.
    """
    from safetensors.torch import load_file

    from steps.train import distributed as D

    names = _trainable_names(model)
    if fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        folder = store.fetch(step, rank=ctx.rank)
        state = {
            "model": {k: v for k, v in model.state_dict().items() if k in names},
            "optim": get_optimizer_state_dict(model, optimizer),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        try:
            dcp.load(state, checkpoint_id=str(folder / DCP_DIR))
        except Exception as exc:  # DCP raises a CheckpointException that wraps per-rank errors
            raise ValueError(
                f"checkpoint_dir: checkpoint {store.uri}/{step_dir_name(step)} does not fit this model: {exc}"
            ) from exc
        model.load_state_dict(state["model"], strict=False)
        set_optimizer_state_dict(model, optimizer, state["optim"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        payload = None
        if ctx.is_main:
            payload = {
                "trainer_state": json.loads((folder / STATE_FILE).read_text()),
                "rng": torch.load(folder / RNG_FILE, weights_only=True),
            }
        payload = D.broadcast_object(ctx, payload)
    else:
        payload = None
        if ctx.is_main:
            folder = store.fetch(step, rank=0)
            payload = {
                "model": load_file(str(folder / MODEL_FILE)),
                "optimizer": torch.load(folder / OPTIMIZER_FILE, weights_only=True),
                "trainer_state": json.loads((folder / STATE_FILE).read_text()),
                "rng": torch.load(folder / RNG_FILE, weights_only=True),
            }
            if ema is not None:
                if not (folder / EMA_FILE).is_file():
                    raise ValueError(f"checkpoint_dir: {step_dir_name(step)} has no EMA state but EMA is on")
                payload["ema"] = load_file(str(folder / EMA_FILE))
        # Check fit on rank 0 before broadcasting, then agree on the verdict.
        error = _weights_mismatch(payload["model"], model, store, step) if ctx.is_main else None
        error = D.broadcast_object(ctx, error)
        if error:
            raise ValueError(error)
        payload = D.broadcast_tree(ctx, payload)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in payload["model"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(payload["optimizer"])
        if ema is not None:
            ema.load_state_dict(payload["ema"])
    trainer_state = payload["trainer_state"]
    from steps.train.schedule import load_scheduler_state

    load_scheduler_state(scheduler, trainer_state["scheduler"])
    rng = payload["rng"]
    if trainer_state.get("world_size") == ctx.world_size and len(rng) == ctx.world_size:
        restore_rng(rng[ctx.rank])
    else:
        warnings.warn(
            f"checkpoint {step_dir_name(step)} was written by {trainer_state.get('world_size')} ranks, "
            f"this run has {ctx.world_size}: RNG states are not restored (data order and noise are "
            "keyed by sample position and stay the same)",
            stacklevel=2,
        )
    return trainer_state


def _weights_mismatch(saved: dict[str, torch.Tensor], model: torch.nn.Module, store, step: int) -> str | None:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(saved))
    unexpected = sorted(set(saved) - set(params))
    shapes = [n for n in set(saved) & set(params) if tuple(saved[n].shape) != tuple(params[n].shape)]
    if not (missing or unexpected or shapes):
        return None
    return (
        f"checkpoint_dir: checkpoint {store.uri}/{step_dir_name(step)} is from a different model: "
        f"{len(missing)} trainable weights missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
        f"(e.g. {unexpected[:3]}), {len(shapes)} with other shapes (e.g. {sorted(shapes)[:3]})"
    )


def load_weights_for_export(ctx, store, step: int, *, model: torch.nn.Module, ema, fsdp: bool) -> None:
    """Put a checkpoint's trainable weights (and EMA) into ``model`` without touching optimizer state."""
    from safetensors.torch import load_file

    from steps.train import distributed as D

    if fsdp:
        import torch.distributed.checkpoint as dcp

        names = _trainable_names(model)
        folder = store.fetch(step, rank=ctx.rank)
        state = {"model": {k: v for k, v in model.state_dict().items() if k in names}}
        if ema is not None:
            state["ema"] = ema.state_dict()
        dcp.load(state, checkpoint_id=str(folder / DCP_DIR))
        model.load_state_dict(state["model"], strict=False)
        if ema is not None:
            ema.load_state_dict(state["ema"])
        return
    payload = None
    if ctx.is_main:
        folder = store.fetch(step, rank=0)
        payload = {"model": load_file(str(folder / MODEL_FILE))}
        if ema is not None:
            payload["ema"] = load_file(str(folder / EMA_FILE))
    payload = D.broadcast_tree(ctx, payload)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in payload["model"].items():
            params[name].copy_(value)
    if ema is not None:
        ema.load_state_dict(payload["ema"])
