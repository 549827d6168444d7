"""Deploy-time shape of an SFT run (a Metaflow ``Config``) and the code that must travel with the flow.

``parse_cluster`` reads the ``--config cluster FILE`` / ``--config-value cluster JSON`` value (JSON or
YAML) into a checked dict; decorators read it (``@resources(gpu=cluster.gpus_per_node)``,
``self.next(self.train, num_parallel=cluster.nodes)``). Keys and defaults: ``CLUSTER_DEFAULTS``.

``sft_deployment`` is a FlowMutator that

- wraps every step in ``flows.run_status.tracked`` (the MLflow run's status, ``train``'s retry policy);
- ships ``steps/``, ``model_zoo/``, ``data_adapters/`` and ``flows/`` in the code package (Metaflow
  packages only the flow file's folder; remote tasks import these packages from the package root);
- with ``backend: kubernetes`` or ``batch`` in the Config, puts every step on that compute with the
  Config's image (and shared memory for DataLoader workers on Kubernetes). ``--with kubernetes``
  on the command line works as well; the Config just records the choice with the run. On those backends it
  also hands every task the ``MLFLOW_TRACKING_URI`` of the machine that launches or deploys the run
  (``@environment``; a URI with credentials is refused) and the Config's ``secrets`` (Kubernetes secrets,
  or ``@secrets`` sources on Batch), where tracking credentials belong: they never enter the spec.

Retries of ``train``: ``retries`` attempts after the first, each ``retry_backoff_s`` seconds after the
failure (remote schedulers wait ``@retry(minutes_between_retries=...)``, rounded up to whole minutes; local
runs, where Metaflow does not wait, sleep in the step: ``steps.train.attempts``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from metaflow import FlowMutator
from metaflow.exception import MetaflowException

CLUSTER_DEFAULTS: dict = {
    "nodes": 1,  # training nodes (@torchrun num_parallel)
    "gpus_per_node": 0,  # 0 = CPU
    "procs_per_node": None,  # torchrun processes per node; None = gpus_per_node, or 1 on CPU
    "cpu": 2,
    "memory": 8000,  # MB
    "disk": None,  # MB (Kubernetes/Batch); None = the backend's default
    "shared_memory": None,  # MB of /dev/shm on Kubernetes (DataLoader workers); None = default
    "image": None,  # container image for remote backends
    "backend": "local",  # "local" | "kubernetes" | "batch"
    "retries": 1,  # @retry on train: a retried attempt resumes from the last checkpoint
    # Seconds between a failed train attempt and the next: long enough for a tracking server or a node to
    # come back (a preempted node is replaced, a restarted server answers again).
    "retry_backoff_s": 120,
    "secrets": [],  # Kubernetes secrets (backend kubernetes) / @secrets sources (batch) for every task
    "checkpoint_root": None,  # None = <datastore root>/vla_sft/checkpoints (S3 for remote datastores)
    "timeout_hours": 72,  # @timeout on train
}
BACKENDS = ("local", "kubernetes", "batch")
DERIVED = (
    "eval_gpus",
    "retry_backoff_minutes",
)  # computed from the keys above (a given value is overwritten)
PACKAGES = ("steps", "model_zoo", "data_adapters", "flows")
PACKAGE_SUFFIXES = (".py", ".yaml", ".yml", ".json")


class ClusterConfigError(ValueError):
    pass


class DeploymentInputError(MetaflowException):
    """Shown by Metaflow as headline + one line (no traceback) when the flow is launched or deployed."""

    headline = "Invalid input"


def parse_cluster(text: str) -> dict:
    """The cluster Config: JSON or YAML text over CLUSTER_DEFAULTS; unknown keys and bad values raise."""
    text = (text or "").strip()
    if not text:
        data = {}
    elif text.startswith("{"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ClusterConfigError(f"cluster config must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(CLUSTER_DEFAULTS) - set(DERIVED))
    if unknown:
        raise ClusterConfigError(
            f"cluster config: unknown key(s) {unknown}; known: {sorted(CLUSTER_DEFAULTS)}"
        )
    out = {**CLUSTER_DEFAULTS, **data}
    for key in ("nodes", "cpu", "memory"):
        if not isinstance(out[key], int) or out[key] < 1:
            raise ClusterConfigError(f"cluster config: {key} must be an integer >= 1, got {out[key]!r}")
    for key in ("gpus_per_node", "retries"):
        if not isinstance(out[key], int) or out[key] < 0:
            raise ClusterConfigError(f"cluster config: {key} must be an integer >= 0, got {out[key]!r}")
    if out["procs_per_node"] is None:
        out["procs_per_node"] = max(1, out["gpus_per_node"])
    if not isinstance(out["procs_per_node"], int) or out["procs_per_node"] < 1:
        raise ClusterConfigError(
            f"cluster config: procs_per_node must be >= 1, got {out['procs_per_node']!r}"
        )
    out["eval_gpus"] = min(1, out["gpus_per_node"])  # derived: evaluate uses at most one GPU
    backoff = out["retry_backoff_s"]
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff <= 86400:
        raise ClusterConfigError(
            f"cluster config: retry_backoff_s must be seconds in [0, 86400], got {backoff!r}"
        )
    out["retry_backoff_minutes"] = math.ceil(backoff / 60)  # @retry(minutes_between_retries) takes minutes
    secrets = out["secrets"]
    if not isinstance(secrets, list) or not all(isinstance(x, str) and x for x in secrets):
        raise ClusterConfigError(f"cluster config: secrets must be a list of secret names, got {secrets!r}")
    if out["backend"] not in BACKENDS:
        raise ClusterConfigError(f"cluster config: backend must be one of {BACKENDS}, got {out['backend']!r}")
    if out["backend"] != "local" and out["nodes"] > 1 and not out["image"]:
        raise ClusterConfigError("cluster config: a multi-node remote run needs an image")
    return out


def remote_environment() -> dict[str, str]:
    """What every remote task needs from the launching machine's environment: the tracking URI (never with
    credentials in it: those come from the Config's ``secrets``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return {}
    from steps.registry.tracking import TrackingError, check_no_credentials

    try:
        check_no_credentials(uri)
    except TrackingError as exc:
        raise DeploymentInputError(f"MLFLOW_TRACKING_URI: {exc}") from None
    return {"MLFLOW_TRACKING_URI": uri}


def project_root() -> Path:
    """The folder holding steps/, model_zoo/, data_adapters/: the repo root, or the code package root."""
    here = Path(__file__).resolve().parent
    return here if (here / "steps").is_dir() else here.parent


def project_files(root: Path | None = None):
    """(absolute path, archive name) of every project source file that remote tasks need."""
    root = root or project_root()
    for package in PACKAGES:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix in PACKAGE_SUFFIXES and "__pycache__" not in path.parts:
                yield str(path), path.relative_to(root).as_posix()


class sft_deployment(FlowMutator):  # noqa: N801 - used as a lower-case decorator, like Metaflow's own
    """Ship the project packages with the flow and apply the cluster Config's compute backend."""

    def pre_mutate(self, mutable_flow) -> None:
        from flows.run_status import tracked

        for _, step in mutable_flow.steps:
            step.add_decorator(tracked)  # MLflow run status and train's retry policy (flows/run_status.py)
        cluster = dict(dict(mutable_flow.configs).get("cluster") or {})
        backend = cluster.get("backend", "local")
        if backend == "local":
            return
        kwargs = {}
        if cluster.get("image"):
            kwargs["image"] = cluster["image"]
        if cluster.get("disk"):
            kwargs["disk"] = cluster["disk"]
        if backend == "kubernetes" and cluster.get("shared_memory"):
            kwargs["shared_memory"] = cluster["shared_memory"]
        if backend == "kubernetes" and cluster.get("secrets"):
            kwargs["secrets"] = list(cluster["secrets"])
        environment = remote_environment()
        for _, step in mutable_flow.steps:
            step.add_decorator(backend, deco_kwargs=kwargs)
            if environment:
                step.add_decorator("environment", deco_kwargs={"vars": environment})
            if backend == "batch" and cluster.get("secrets"):
                step.add_decorator("secrets", deco_kwargs={"sources": list(cluster["secrets"])})

    def add_to_package(self):
        from metaflow.packaging_sys import ContentType

        for path, arcname in project_files():
            yield path, arcname, ContentType.USER_CONTENT
