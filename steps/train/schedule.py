"""Learning-rate schedules (openpi's and LeRobot's), as plain functions of the optimizer step.

The schedule is a pure function of the number of optimizer steps taken, so resuming only needs that
number (kept by ``torch.optim.lr_scheduler.LambdaLR`` in its state dict) and a skipped non-finite step
does not advance it.

- ``cosine``: linear warmup from ``peak_lr / (warmup_steps + 1)`` to ``peak_lr`` over ``warmup_steps``,
  then a half cosine down to ``end_lr`` at step ``decay_steps`` (counted from step 0, warmup included, as
  optax's ``warmup_cosine_decay_schedule`` counts), then flat at ``end_lr``.
- ``constant``: the same warmup, then flat at ``peak_lr`` (openpi's pi05_libero preset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class LrSchedule:
    """A warmup schedule; ``lr(step)`` gives the learning rate used by optimizer step ``step`` (0-based)."""

    peak_lr: float
    warmup_steps: int
    decay_steps: int
    end_lr: float
    kind: str = "cosine"

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule: unknown schedule {self.kind!r}; expected one of {SCHEDULES}")
        if not self.peak_lr > 0:
            raise ValueError(f"peak_lr: must be > 0, got {self.peak_lr}")
        if self.end_lr < 0:
            raise ValueError(f"end_lr: must be >= 0, got {self.end_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.kind == "cosine" and self.decay_steps < self.warmup_steps:
            raise ValueError(
                f"decay_steps: must be >= warmup_steps ({self.warmup_steps}) for the cosine schedule, "
                f"got {self.decay_steps}"
            )

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            init = self.peak_lr / (self.warmup_steps + 1)
            return init + (self.peak_lr - init) * step / self.warmup_steps
        if self.kind == "constant":
            return self.peak_lr
        span = self.decay_steps - self.warmup_steps
        progress = 1.0 if span <= 0 else min(1.0, (step - self.warmup_steps) / span)
        return self.end_lr + (self.peak_lr - self.end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, schedule: LrSchedule):
    """A ``LambdaLR`` whose factor times ``peak_lr`` is ``schedule.lr(step)``.

    The optimizer's param groups must have been created with ``lr=schedule.peak_lr``. Call
    ``scheduler.step()`` once per optimizer step (never per micro-batch).
    """
    import torch

    for group in optimizer.param_groups:
        group["lr"] = schedule.peak_lr
        group["initial_lr"] = schedule.peak_lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.lr(step) / schedule.peak_lr)


def load_scheduler_state(scheduler, state: dict) -> None:
    """Restore a scheduler and put its current learning rate back into the optimizer.

    ``LambdaLR.load_state_dict`` restores the step count but leaves the param groups' ``lr`` alone.
    """
    scheduler.load_state_dict(state)
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr
