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
leaves an empty registered model behind). A version made from an MLflow 3 logged model (``models:/m-<id>``)
names that model's id (``model_id``), as ``mlflow.register_model`` does: a tracking server checks that the
source belongs to the model it names and refuses it otherwise (sqlite stores do not check).

Names: ``check_model_name`` applies MLflow's rules in ``start``; versions are found by run id (a hex id),
never by a name spelled inside a filter string. ``mlflow`` is imported lazily.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.registry.tracking import LINEAGE_TAG, client_for, configure_mlflow_env

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
    """The (first) version of ``name`` created from ``run_id`` with this lineage, or None.

    Searched by run id only and matched by name here: a name with a quote would break the filter string.
    """
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    mine = [v for v in versions if v.name == name and (v.tags or {}).get(LINEAGE_TAG) == lineage_id]
    return min(mine, key=lambda v: int(v.version)) if mine else None


MAX_MODEL_NAME_LENGTH = 256  # the registered_models.name column of MLflow's SQL stores


def check_model_name(name: str, option: str = "--model_name") -> None:
    """Raise ValueError (one line) for a registered-model name MLflow would refuse, or one that no
    search filter can spell (both quote characters).

    MLflow's rules (``mlflow.utils.validation._validate_model_name``, 3.17): not empty, no ``/`` or ``:``
    (they separate the parts of ``models:/<name>/<version>``), and not a path that normalizes to
    something else (``.``, ``..``).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{option}: must not be empty")
    bad = sorted({c for c in name if c in "/:"})
    if bad:
        raise ValueError(f"{option}: {name!r} contains {' and '.join(repr(c) for c in bad)}, which MLflow "
                         "does not allow in registered-model names (models:/<name>/<version> URIs)")  # fmt: skip
    if name in (".", "..") or name != name.strip():
        raise ValueError(f"{option}: {name!r} is not a valid MLflow model name (no leading or trailing "
                         "spaces, not '.' or '..')")  # fmt: skip
    if len(name) > MAX_MODEL_NAME_LENGTH:
        raise ValueError(f"{option}: longer than {MAX_MODEL_NAME_LENGTH} characters ({len(name)})")
    if any(ord(c) < 32 for c in name):
        raise ValueError(f"{option}: {name!r} contains a control character")
    if "'" in name and '"' in name:
        raise ValueError(f"{option}: {name!r} contains both ' and \"; MLflow's search filters cannot "
                         "spell such a name (one kind of quote is fine)")  # fmt: skip


def name_filter(name: str) -> str:
    """``name = '...'`` for MLflow's search filters, which have no escape character: a name holding a
    single quote is written in double quotes (MLflow's parser accepts either)."""
    if "'" not in name:
        return f"name = '{name}'"
    if '"' not in name:
        return f'name = "{name}"'
    raise ValueError(f"model name {name!r} contains both quote characters; no MLflow filter can spell it")


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
    log_model: Callable[[], tuple[str, str | None]] | None = None,
) -> RegisteredVersion:
    """Create (or find) the model version of this training run and point ``alias`` at it.

    ``log_model``, when given, logs the model (e.g. as an MLflow pyfunc) and returns its
    ``(model URI, logged model id)``, used as the version's source instead of the plain uploaded folder;
    it is only called when no version of this run exists yet, so a rerun logs nothing twice.
    """

    if not Path(model_dir).is_dir():
        raise ValueError(f"model_dir: {model_dir} is not a folder (was training exported?)")
    if tags.get(LINEAGE_TAG, lineage_id) != lineage_id:
        raise ValueError(f"tags: {LINEAGE_TAG} is {tags[LINEAGE_TAG]!r} but lineage_id is {lineage_id!r}")
    check_model_name(name)
    configure_mlflow_env()
    client = client_for(tracking_uri)
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
        model_id = None
        if log_model is not None:
            source, model_id = log_model()
        else:
            source = upload_model_folder(client, run_id, model_dir)
        mv = client.create_model_version(name, source=source, run_id=run_id, model_id=model_id, tags=all_tags,
                                         description=description)  # fmt: skip
        version, created = str(mv.version), True
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return RegisteredVersion(name=name, version=version, source=source, created=created, alias=alias)
