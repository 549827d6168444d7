"""Log a training export as an MLflow pyfunc model (models-from-code) with a model card.

The logged model folder carries the export as an artifact (weights as safetensors, norm_stats.json,
config_type.json, train_config.json, tokenizer.model, README.md model card) plus the project's code,
so ``mlflow.pyfunc.load_model("models:/<name>@champion")`` works wherever the runtime dependencies
are installed, and no pickle is ever loaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PYFUNC_FILE = Path(__file__).resolve().with_name("pyfunc.py")
CODE_PACKAGES = ("steps", "model_zoo", "data_adapters")


def example_input(config_type, *, image_size: int = 64):
    """A one-row DataFrame in the pyfunc's input encoding (base64 PNG images)."""
    import numpy as np
    import pandas as pd

    from steps.registry.pyfunc import encode_image

    row: dict[str, Any] = {}
    for i, key in enumerate(config_type.camera_keys):
        image = np.full((image_size, image_size, 3), 40 * (i + 1), dtype=np.uint8)
        row[key] = encode_image(image)
    row["state"] = [0.0] * config_type.state_dim
    row["task"] = "reach the goal"
    return pd.DataFrame([row])


def example_records(config_type: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``example_input`` as JSON-ready records, from a config type dict (an export's config_type.json)."""
    from data_adapters.config_types import ConfigType

    return example_input(ConfigType.from_dict(config_type)).to_dict(orient="records")


def dataset_line(lineage: Mapping[str, Any]) -> str:
    """``<id> (revision R, fingerprint F)`` from the lineage tags (``register.lineage_tags``), the parts known."""
    known = [f"{name} {lineage[f'dataset.{name}']}" for name in ("revision", "fingerprint")
             if lineage.get(f"dataset.{name}")]  # fmt: skip
    return str(lineage.get("dataset.id") or "unknown") + (f" ({', '.join(known)})" if known else "")


def write_model_card(
    export_dir: str | Path, *, metrics: Mapping[str, float], lineage: Mapping[str, Any]
) -> Path:
    """README.md in the export folder: what the model is, its data, config, metrics and lineage."""
    export_dir = Path(export_dir)
    config_type = json.loads((export_dir / "config_type.json").read_text())
    meta_path = export_dir / "vla_sft_export.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    cams = ", ".join(
        f"{slot} <- {'+'.join(keys) or '(missing)'}" for slot, keys in config_type["cameras"].items()
    )
    lines = [
        f"# {config_type['name']} policy ({config_type['model_type']})",
        "",
        "Fine-tuned with vla-sft. Load it with "
        "`mlflow.pyfunc.load_model(uri).predict(df)`; see the project README for the input encoding.",
        "",
        "## Data and config",
        "",
        f"- dataset: {dataset_line(lineage)}",
        f"- cameras: {cams}",
        f"- state: {' + '.join(config_type['state_keys'])} ({config_type['state_dim']} dims); "
        f"actions: {' + '.join(config_type['action_keys'])} ({config_type['action_dim']} dims)",
        f"- action horizon {config_type['action_horizon']}, normalization {config_type['normalization']}, "
        f"delta mask {config_type['delta_mask']}",
        f"- fine-tuning: {meta.get('finetune', 'n/a')}, step {meta.get('step', 'n/a')}, "
        f"weights from {meta.get('weights_from', 'n/a')} (EMA: {meta.get('ema', 'n/a')})",
        "",
        "## Metrics",
        "",
    ]
    lines += [f"- {k}: {v:.6g}" for k, v in sorted(metrics.items())] or ["- none recorded"]
    lines += ["", "## Lineage", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(lineage.items())] or ["- none recorded"]
    lines += ["", "## Example request", "",
              "Body of a `POST /invocations` to `mlflow models serve` (images: base64 PNG, state in robot units):",
              "", "```json", json.dumps({"dataframe_records": example_records(config_type)}), "```"]  # fmt: skip
    path = export_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def policy_signature(config_type):
    """The pyfunc's MLflow signature, from the config type alone (no model is loaded or run).

    Inputs: one base64-PNG string column per dataset camera key, ``state`` (array of doubles) and
    ``task`` (string); output: float32 action chunks [rows, action_horizon, action_dim]. MLflow enforces
    the input schema on every ``predict`` (a missing camera column is named before the policy runs).
    ``tests/test_pyfunc.py`` checks it equals what ``infer_signature`` derives from a real prediction.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import Array

    columns = [ColSpec("string", key) for key in config_type.camera_keys]
    columns += [ColSpec(Array("double"), "state"), ColSpec("string", "task")]
    shape = (-1, config_type.action_horizon, config_type.action_dim)
    return ModelSignature(inputs=Schema(columns), outputs=Schema([TensorSpec(np.dtype(np.float32), shape)]))


def log_policy_model(
    export_dir: str | Path, *, run_id: str, tracking_uri: str, name: str = "policy", step: int = 0
):
    """Log ``export_dir`` as a pyfunc model of the MLflow run ``run_id``; returns MLflow's ModelInfo.

    MLflow 3 keeps a logged model as its own entity (``models:/m-<id>``) linked to the run that made it.
    The model is created first (``create_logged_model``, source run = ``run_id``), the pyfunc is logged into
    it (``log_model(model_id=...)``) and the run records it as an output at ``step``: the same links
    ``mlflow.start_run`` + ``log_model`` make, without an active run whose end would mark the flow's run
    FINISHED before ``register`` has finished. The version registered from it must name that model id
    (``register.register_model``): a tracking server refuses a ``models:/m-...`` source without it.

    Nothing here loads the model: the signature comes from the export's config type, and no
    ``input_example`` is passed, because MLflow would then load the logged model (torch, weights) and
    predict on the example just to validate it (~5 s of the register step on 2 cores). The model card
    (README.md, ``write_model_card``) carries an example request instead; the tests load the logged
    model by alias and predict (``tests/test_pyfunc.py``, and the demo flow's end-to-end test).
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput

    from data_adapters.config_types import ConfigType
    from steps.registry import tracking

    mlflow.set_tracking_uri(tracking_uri)  # log_model's artifact upload resolves the global URI
    client = tracking.client_for(tracking_uri)
    export_dir = Path(export_dir)
    config_type = ConfigType.from_dict(json.loads((export_dir / "config_type.json").read_text()))
    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                       params=dict(run.data.params))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vla-sft-code-") as code_dir:
        kwargs = dict(
            name=name,
            model_id=model.model_id,
            python_model=str(PYFUNC_FILE),
            artifacts={"export": str(export_dir)},
            code_paths=_stage_code(Path(code_dir)),
            signature=policy_signature(config_type),
            # Explicit requirements: MLflow would otherwise load the model in a subprocess to infer them
            # (~15 s of imports on a 2-core machine) and would still miss packages imported lazily.
            pip_requirements=runtime_requirements(),
        )
        with warnings.catch_warnings():
            # "An input example was not provided": deliberate, see the docstring.
            warnings.filterwarnings(
                "ignore", message=".*input example was not provided", category=UserWarning
            )
            info = mlflow.pyfunc.log_model(**kwargs)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
    return info


# What the pyfunc imports when it loads and predicts (steps.policy, model_zoo, data_adapters).
RUNTIME_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "pillow", "pyarrow", "av", "safetensors",
                    "sentencepiece", "pyyaml", "huggingface-hub")  # fmt: skip


def runtime_requirements() -> list[str]:
    """The runtime packages pinned to the versions installed here."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in RUNTIME_PACKAGES:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def _stage_code(dest: Path) -> list[str]:
    """Copies of the project packages the pyfunc imports, without caches or shipped demo data."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "demo_data")
    paths = []
    for pkg in CODE_PACKAGES:
        shutil.copytree(PROJECT_ROOT / pkg, dest / pkg, ignore=ignore)
        paths.append(str(dest / pkg))
    return paths
