"""Save a text export as a self-contained MLflow pyfunc folder (``steps.text.pyfunc`` as code).

``register.register_model(model_dir=save_text_pyfunc(...))`` then uploads a folder that
``mlflow.pyfunc.load_model("models:/<name>@candidate")`` loads and generates with.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PYFUNC_FILE = Path(__file__).resolve().with_name("pyfunc.py")


def write_text_model_card(
    export_dir: str | Path, *, metrics: Mapping[str, float], lineage: Mapping[str, Any]
) -> Path:
    """README.md in the text export: the model, its data (named as the run names it), metrics, lineage and an
    example request body (the same place and layout as the policy's card, ``steps.registry.model_logging``)."""
    from steps.registry.model_logging import dataset_line

    export_dir = Path(export_dir)
    ct = json.loads((export_dir / "config_type.json").read_text())
    meta_path = export_dir / "vla_sft_export.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    example = {"dataframe_records": [{"messages": [{"role": "user", "content": "Hello!"}]}],
               "params": {"max_new_tokens": 64}}  # fmt: skip
    lines = [f"# {ct['name']} causal LM", "",
             "Fine-tuned with vla-sft. Load it with `mlflow.pyfunc.load_model(uri).predict(rows, params=...)`: rows "
             "with `messages` (chat) or `prompt`; one generated string per row.", "",
             "## Data and config", "", f"- dataset: {dataset_line(lineage)}",
             f"- base model: {meta.get('base_model', 'n/a')}; fine-tuning: {meta.get('finetune', 'n/a')}, "
             f"step {meta.get('step', 'n/a')}",
             f"- max_seq_len {ct['max_seq_len']}, truncation {ct['truncation']}, packing {ct['packing']}", "",
             "## Metrics", ""]  # fmt: skip
    lines += [f"- {k}: {v:.6g}" for k, v in sorted(metrics.items())] or ["- none recorded"]
    lines += ["", "## Lineage", ""] + (
        [f"- {k}: {v}" for k, v in sorted(lineage.items())] or ["- none recorded"]
    )
    lines += ["", "## Example request", "", "Body of a `POST /invocations` to `mlflow models serve`:", "", "```json",
              json.dumps(example), "```"]  # fmt: skip
    path = export_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def save_text_pyfunc(export_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the pyfunc model folder (MLmodel, the code file, the export as artifact) to ``out_dir``."""
    import mlflow

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    # Params only: rows may carry ``prompt`` or ``messages`` (a nested chat list), checked by the model.
    signature = ModelSignature(params=ParamSchema([ParamSpec("max_new_tokens", "long", 64),
                                                   ParamSpec("temperature", "double", 0.0)]))  # fmt: skip
    with warnings.catch_warnings():
        # "An input example was not provided": deliberate, MLflow would load and run the model to check one.
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        mlflow.pyfunc.save_model(path=str(out_dir), python_model=str(PYFUNC_FILE),
                                 artifacts={"export": str(export_dir)}, signature=signature,
                                 pip_requirements=["mlflow", "pandas", "torch", "transformers", "safetensors"])  # fmt: skip
    return out_dir
