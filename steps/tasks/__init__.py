"""The run's task, chosen once from the run config: what differs between fine-tuning a pi0 / pi0.5 policy
on a LeRobot dataset (``vla``) and a causal LM on chat rows (``text``).

Every flow step calls the same method whatever the task: ``fetch`` (dataset + tokenizer), ``compute_stats``
(normalization or token statistics), ``node_inputs`` (what one training node needs on disk), ``evaluate``
and ``register``. So the flow never branches on the kind, and adding a task is one module here.

May import: every other ``steps`` package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from steps.config.run_config import RunConfig
from steps.tasks.base import EvalOutcome, RunIdentity, RunTask

__all__ = ["EvalOutcome", "RunIdentity", "RunTask", "task_for"]


def task_for(run_config: RunConfig | Mapping[str, Any]) -> RunTask:
    """The task of a run config (or of its dict, the flow's ``run_config`` artifact)."""
    from steps.tasks.text import TextTask
    from steps.tasks.vla import VlaTask

    rc = run_config if isinstance(run_config, RunConfig) else RunConfig.from_dict(run_config)
    return {"vla": VlaTask, "text": TextTask}[rc.kind](rc)
