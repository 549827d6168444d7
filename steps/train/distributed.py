"""Process-group setup from torchrun's environment, and the few collectives the trainer needs.

One code path for any world size: with no torchrun variables (or WORLD_SIZE=1 under DDP) there is no
process group and every helper is a no-op, so a plain ``python -m steps.train`` and a test calling
``main()`` run single-process. gloo on CPU, NCCL on CUDA (as nanoGPT's ``train.py`` reads RANK /
WORLD_SIZE / LOCAL_RANK from the environment that ``torchrun`` sets).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when a process group exists (collectives must be called)."""
        return dist.is_available() and dist.is_initialized()


def init_distributed(device: str = "auto", *, need_group: bool = False) -> DistContext:
    """Read torchrun's variables and start the process group when there is more than one rank.

    ``need_group`` starts a one-rank group even when running alone (FSDP2 needs a device mesh).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if (world_size > 1 or need_group) and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(
                backend, rank=rank, world_size=world_size, device_id=dev if dev.type == "cuda" else None
            )
        else:
            # Alone without torchrun: an in-process store is enough for a one-rank group.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup(ctx: DistContext) -> None:
    if ctx.active:
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (small, picklable objects only: it travels pickled)."""
    if not ctx.active:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(ctx: DistContext, obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Sum a few floats over ranks (float64 so counts stay exact)."""
    if not ctx.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def broadcast_tree(ctx: DistContext, tree: Any, src: int = 0) -> Any:
    """Send a nested dict/list of tensors (and plain values) from ``src`` to every rank.

    The structure with tensor shapes/dtypes travels as one pickled object; the tensors follow one
    ``dist.broadcast`` each, so large state (weights, Adam moments) is never pickled. Used to load a
    checkpoint on rank 0 only and give every rank the same state.
    """
    if not ctx.active:
        return tree
    tensors: list[torch.Tensor] = []

    def strip(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            tensors.append(node)
            return ("__tensor__", len(tensors) - 1, tuple(node.shape), node.dtype)
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(strip(v) for v in node)
        return node

    skeleton = broadcast_object(ctx, strip(tree) if ctx.rank == src else None, src=src)
    comm_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    received: dict[int, torch.Tensor] = {}

    def fill(node: Any) -> Any:
        if isinstance(node, tuple) and len(node) == 4 and node[0] == "__tensor__":
            _, idx, shape, dtype = node
            if ctx.rank == src:
                buf = tensors[idx].detach().to(comm_device).contiguous()
            else:
                buf = torch.empty(shape, dtype=dtype, device=comm_device)
            dist.broadcast(buf, src=src)
            received[idx] = buf.cpu()
            return received[idx]
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(fill(v) for v in node)
        return node

    return fill(skeleton)
