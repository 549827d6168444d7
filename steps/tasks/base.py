"""What every run task offers the flow, and the pieces they share (lineage tags, closing the MLflow run)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from steps.config.run_config import RunConfig
from steps.train.launch import NodeInputs


@dataclass(frozen=True)
class RunIdentity:
    """Where a run is recorded: its lineage (shared by a run and its resumes), MLflow and Metaflow ids."""

    lineage_id: str
    mlflow_run_id: str
    tracking_uri: str
    # "<flow>/<run id>" of this Metaflow run, and of the run it resumed (None: not a resume).
    pathspec: str
    origin_pathspec: str | None = None
    git_commit: str | None = None


@dataclass
class EvalOutcome:
    metrics: dict[str, float]
    details: dict
    # name -> file contents (plots, rollout media), logged to MLflow by ``register``.
    files: dict[str, bytes] = field(default_factory=dict)
    # Keyword arguments of ``flows.cards.render_eval_card`` (None: the task shows no evaluation card).
    card: dict[str, Any] | None = None


class RunTask:
    """The interface; ``steps.tasks.vla.VlaTask`` and ``steps.tasks.text.TextTask`` implement it."""

    def __init__(self, run_config: RunConfig) -> None:
        self.rc = run_config

    def fetch(self) -> tuple[dict, bytes]:
        """(fetched dataset record, tokenizer file bytes or b"") for ``fetch_data``."""
        raise NotImplementedError

    def compute_stats(self, fetched: dict, *, out_path: str | os.PathLike, who: RunIdentity) -> dict:
        raise NotImplementedError

    def node_inputs(self, fetched: dict, norm_stats: dict, tokenizer_model: bytes,
                    workdir: str | os.PathLike) -> NodeInputs:  # fmt: skip
        raise NotImplementedError

    def evaluate(
        self, export_uri: str, fetched: dict, *, workdir: str | os.PathLike, who: RunIdentity
    ) -> EvalOutcome:
        raise NotImplementedError

    def register(self, export_uri: str, fetched: dict, *, workdir: str | os.PathLike, who: RunIdentity,
                 metrics: dict[str, float], files: dict[str, bytes], final_step: int) -> dict[str, Any]:  # fmt: skip
        """Register the model (alias ``candidate``), log the evaluation, close the MLflow run."""
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------------
    def log_dataset(self, fetched: dict, who: RunIdentity) -> None:
        """The fetched dataset as the MLflow run's training input (name, fingerprint, source, revision)."""
        from steps.registry.run_metadata import log_dataset_input
        from steps.registry.tracking import configure_mlflow_env

        configure_mlflow_env()
        log_dataset_input(who.tracking_uri, who.mlflow_run_id, fetched)

    def lineage_tags(self, who: RunIdentity, fetched: dict) -> dict[str, str]:
        from steps.registry.register import lineage_tags

        return lineage_tags(lineage_id=who.lineage_id, pathspec=who.pathspec, origin_pathspec=who.origin_pathspec,
                            config_type=self.rc.config_type.name, dataset=self.rc.data.dataset,
                            dataset_revision=fetched.get("revision"), dataset_fingerprint=fetched.get("fingerprint"),
                            base_checkpoint=self.rc.model.pretrained, finetune=self.rc.finetune,
                            git_commit=who.git_commit)  # fmt: skip
