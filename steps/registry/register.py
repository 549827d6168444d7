"""Register the trained model in the MLflow model registry, once per training run.

``register_model`` uploads the exported model folder as artifacts of the lineage's MLflow run (once)
and creates a model version whose source is that artifact folder, tagged with the lineage (Metaflow
pathspec, config type, dataset id/revision/fingerprint, base checkpoint, LoRA or full, git commit) and
the evaluation metrics (``metric.<key>``, what ``steps.registry.promote`` reads). It then points the alias
``candidate`` at it.

Idempotent: a version of this model name that belongs to the same MLflow run and lineage is found
(by run id and lineage tag) and returned instead of creating another one, so a ``resume`` that reruns
``register`` (or a retried task) never makes a second version.

Uses ``MlflowClient().create_model_version`` (``mlflow.register_model`` on a plain folder fails and
leaves an empty registered model behind). ``mlflow`` is imported lazily.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.registry.tracking import LINEAGE_TAG, configure_mlflow_env

MODEL_ARTIFACT_PATH = "model"
DEFAULT_ALIAS = "candidate"
METRIC_TAG_PREFIX = "metric."  # steps.registry.promote reads version metrics from these tags


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    source: str
    created: bool  # False: an existing version of the same run/lineage was returned
    alias: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def close_run(who, *, metrics: Mapping[str, float], files: Mapping[str, bytes], final_step: int) -> None:
    """Log the evaluation (metrics at the final training step, files under ``eval/``), point the MLflow
    run at the Metaflow run that finished it (a resume is a new Metaflow run), and mark it FINISHED.

    ``who``: the run's ``steps.tasks.RunIdentity``.
    """
    from steps.registry import tracking

    uri, run_id = who.tracking_uri, who.mlflow_run_id
    tracking.log_metrics(uri, run_id, {f"eval/{k}": v for k, v in metrics.items()}, step=final_step)
    if files:
        tracking.log_file_contents(uri, run_id, dict(files), artifact_path="eval")
    origin_run_id = who.origin_pathspec.rsplit("/", 1)[-1] if who.origin_pathspec else ""
    tracking.set_tags(
        uri, run_id, {tracking.PATHSPEC_TAG: who.pathspec, "metaflow.origin_run_id": origin_run_id}
    )
    tracking.finish_run(uri, run_id)


def lineage_tags(
    *,
    lineage_id: str,
    pathspec: str,
    config_type: str,
    dataset: str,
    dataset_revision: str | None,
    dataset_fingerprint: str | None,
    base_checkpoint: str | None,
    finetune: str,
    git_commit: str | None,
    origin_pathspec: str | None = None,
) -> dict[str, str]:
    """The tags that say where a model version came from."""
    tags = {
        LINEAGE_TAG: lineage_id,
        "metaflow.pathspec": pathspec,
        "config_type": config_type,
        "dataset.id": dataset,
        "dataset.revision": dataset_revision or "",
        "dataset.fingerprint": dataset_fingerprint or "",
        "base_checkpoint": base_checkpoint or "none (random init)",
        "finetune": finetune,
        "git_commit": git_commit or "unknown",
    }
    if origin_pathspec:
        tags["metaflow.origin_pathspec"] = origin_pathspec
    return tags


def metric_tags(metrics: Mapping[str, float]) -> dict[str, str]:
    return {f"{METRIC_TAG_PREFIX}{key}": repr(float(value)) for key, value in metrics.items()}


def upload_model_folder(client, run_id: str, folder: str | os.PathLike) -> str:
    """Log ``folder`` under the run's ``model/`` artifacts unless a complete copy is there; its URI."""
    existing = {Path(f.path).name for f in client.list_artifacts(run_id, MODEL_ARTIFACT_PATH)}
    wanted = {p.name for p in Path(folder).iterdir()}
    if not wanted <= existing:
        client.log_artifacts(run_id, str(folder), MODEL_ARTIFACT_PATH)
    return f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"


def find_version(client, name: str, run_id: str, lineage_id: str):
    """The (first) version of ``name`` created from ``run_id`` with this lineage, or None."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    mine = [v for v in versions if (v.tags or {}).get(LINEAGE_TAG) == lineage_id]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def _ensure_registered_model(client, name: str, description: str | None) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=description)
        except MlflowException:
            client.get_registered_model(name)  # created concurrently: fine; otherwise re-raise


def register_model(
    tracking_uri: str,
    *,
    name: str,
    model_dir: str | os.PathLike,
    run_id: str,
    lineage_id: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float] | None = None,
    alias: str | None = DEFAULT_ALIAS,
    description: str | None = None,
    log_model: Callable[[], str] | None = None,
) -> RegisteredVersion:
    """Create (or find) the model version of this training run and point ``alias`` at it.

    ``log_model``, when given, logs the model (e.g. as an MLflow pyfunc) and returns its URI, used as
    the version's source instead of the plain uploaded folder; it is only called when no version of
    this run exists yet, so a rerun logs nothing twice.
    """
    from mlflow.tracking import MlflowClient

    if not Path(model_dir).is_dir():
        raise ValueError(f"model_dir: {model_dir} is not a folder (was training exported?)")
    if tags.get(LINEAGE_TAG, lineage_id) != lineage_id:
        raise ValueError(f"tags: {LINEAGE_TAG} is {tags[LINEAGE_TAG]!r} but lineage_id is {lineage_id!r}")
    configure_mlflow_env()
    client = MlflowClient(tracking_uri=tracking_uri)
    all_tags = {**tags, LINEAGE_TAG: lineage_id, **metric_tags(metrics or {})}
    _ensure_registered_model(client, name, description)
    existing = find_version(client, name, run_id, lineage_id)
    if existing is not None:
        # Same training run: refresh tags (metrics may have been recomputed) and the alias.
        for key, value in all_tags.items():
            if (existing.tags or {}).get(key) != value:
                client.set_model_version_tag(name, existing.version, key, value)
        version, source, created = str(existing.version), existing.source, False
    else:
        source = log_model() if log_model is not None else upload_model_folder(client, run_id, model_dir)
        mv = client.create_model_version(
            name, source=source, run_id=run_id, tags=all_tags, description=description
        )
        version, created = str(mv.version), True
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return RegisteredVersion(name=name, version=version, source=source, created=created, alias=alias)
