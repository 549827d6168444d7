"""The few lines a run ends with: which model version it registered, on which data, its key metrics, and
where to look next (the MLflow UI for the run's tracking URI, the promote command). Every metric is in
MLflow (``eval/...`` on the run, ``metric.<key>`` on the version); this names only those promotion gates
read. No MLflow import: the flow's ``end`` step prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from steps.registry.promote import KEY_METRICS


def browse_command(tracking_uri: str) -> str:
    """How to open the MLflow UI on ``tracking_uri``."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    if tracking_uri.startswith("databricks"):
        return "open the experiment in your Databricks workspace"
    return f"mlflow ui --backend-store-uri {tracking_uri}   (then open http://127.0.0.1:5000)"


def run_summary(*, model_version: Mapping[str, Any], metrics: Mapping[str, float], mlflow_run_id: str,
                tracking_uri: str, dataset: str | None = None) -> str:  # fmt: skip
    name, version, alias = model_version["name"], model_version["version"], model_version.get("alias")
    shown = [f"{key} {metrics[key]:.4g}" for key in KEY_METRICS if key in metrics]
    if "sim/episodes" in metrics and "sim/success_rate" in metrics:
        shown[-1] += f" ({int(metrics['sim/episodes'])} episodes)"
    rows = [
        ("model", f"{name} version {version}" + (f" (alias {alias})" if alias else "")),
        ("dataset", dataset or "-"),
        ("metrics", " · ".join(shown) or "-"),
        ("MLflow", f"run {mlflow_run_id} ({len(metrics)} evaluation metrics under eval/) at {tracking_uri}"),
        ("browse", browse_command(tracking_uri)),
        ("promote", f"python -m steps.promote --name {name} --version {alias or version} --to champion"),
    ]
    return "\n".join(["Run summary", *(f"  {label:<8} {value}" for label, value in rows)])
