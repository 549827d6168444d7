"""What MLflow's UI reads of a run besides params and metrics: the experiment's kind, the run's user and
source, and the training dataset as a dataset input.

- ``mlflow.experimentKind = custom_model_development`` on the experiment: MLflow 3 opens an experiment
  by its kind, and one of this kind opens on its runs (not on the GenAI traces view).
- ``mlflow.user``, ``mlflow.source.name`` (the flow file), ``mlflow.source.type``, ``mlflow.source.git.commit``
  on the run: MLflow's fluent ``start_run`` sets these itself, ``MlflowClient.create_run`` (which the flow
  uses, so it never touches global MLflow state) does not.
- ``log_dataset_input``: the fetched dataset as an MLflow dataset input (name = the run's dataset id,
  digest = its fingerprint, source = where it came from, at which revision), context ``training``, so the
  runs table's "Datasets" column and the run page show it.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"
# MLflow's dataset source types that its UI knows how to show (link, copy).
_SOURCE_TYPES = {"hub": "hugging_face", "s3": "s3"}


def run_user() -> str:
    """The user Metaflow runs as: its order of variables, root skipped (``flows/user.py`` makes sure one
    names someone)."""
    for name in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER"):
        if os.environ.get(name) and os.environ[name] != "root":
            return os.environ[name]
    return getpass.getuser()


def flow_source_name() -> str | None:
    """The flow file this process runs (a Metaflow task is ``python <flow file> step ...``), or None."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return str(script.resolve()) if script is not None and script.suffix == ".py" else None


def describe_run(client, run_id: str, *, git_commit: str | None, source_name: str | None = None,
                 user: str | None = None) -> None:  # fmt: skip
    """Tag the run's experiment with its kind (unless it has one) and the run with user and source."""
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_COMMIT,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
        MLFLOW_USER,
    )

    experiment_id = client.get_run(run_id).info.experiment_id
    if EXPERIMENT_KIND_TAG not in (client.get_experiment(experiment_id).tags or {}):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
    tags = {MLFLOW_USER: user or run_user(), MLFLOW_SOURCE_TYPE: "LOCAL"}
    source_name = source_name or flow_source_name()
    if source_name:
        tags[MLFLOW_SOURCE_NAME] = source_name
    if git_commit:
        tags[MLFLOW_GIT_COMMIT] = git_commit.removesuffix("-dirty")  # our git_commit tag keeps "-dirty"
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def dataset_source(fetched: Mapping[str, Any]) -> tuple[str, str]:
    """(MLflow source type, source JSON) of a fetched dataset record."""
    kind, dataset_id, revision = fetched.get("source"), fetched["dataset_id"], fetched.get("revision")
    if kind == "hub":
        return "hugging_face", json.dumps({"path": dataset_id, "revision": revision})
    if kind == "s3":
        return "s3", json.dumps({"uri": f"{dataset_id}@{revision}" if revision else dataset_id})
    # Local folders, demo and generated datasets: where this run read them.
    return "local", json.dumps({"uri": str(fetched["path"])})


def dataset_input(fetched: Mapping[str, Any], *, context: str = "training"):
    """The MLflow ``DatasetInput`` of a fetched dataset record (``FetchResult`` / ``TextFetchResult`` dict)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source_type, source = dataset_source(fetched)
    profile = {key: fetched[key] for key in ("num_episodes", "num_frames", "num_rows", "fps", "version")
               if fetched.get(key) is not None}  # fmt: skip
    profile.update(
        train=len(fetched.get("train_episodes") or ()), held_out=len(fetched.get("val_episodes") or ())
    )
    if fetched.get("revision"):
        profile["revision"] = fetched["revision"]
    dataset = Dataset(name=str(fetched["dataset_id"]), digest=str(fetched.get("fingerprint") or "")[:36],
                      source_type=source_type, source=source, profile=json.dumps(profile))  # fmt: skip
    return DatasetInput(dataset=dataset, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)])


def log_dataset_input(tracking_uri: str, run_id: str, fetched: Mapping[str, Any]) -> None:
    """Log the fetched dataset as the run's training input (MLflow keeps one link per dataset and digest).
    Callers set up MLflow's HTTP client first (``tracking.configure_mlflow_env``; tracking imports this module)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).log_inputs(run_id, datasets=[dataset_input(fetched)])
