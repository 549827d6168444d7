"""Save a text export as a self-contained MLflow pyfunc folder (``steps.text.pyfunc`` as code).

``register.register_model(model_dir=save_text_pyfunc(...))`` then uploads a folder that
``mlflow.pyfunc.load_model("models:/<name>@candidate")`` loads and generates with.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

PYFUNC_FILE = Path(__file__).resolve().with_name("pyfunc.py")


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
