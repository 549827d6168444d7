"""``--model`` -> the training export folder that ``Policy.from_export`` loads.

Accepted: a training export folder (``config_type.json``, weights, ...), a pyfunc model folder as
``mlflow.artifacts.download_artifacts`` leaves it (the export under ``artifacts/export``), or any
MLflow URI (``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run id>/<path>``, ...),
downloaded first. The pyfunc itself is not loaded: its logged code copy would be imported instead
of this checkout's, and the three inference paths would no longer be one.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

# Where log_policy_model puts the export inside a logged pyfunc model.
PYFUNC_EXPORT = Path("artifacts") / "export"
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")


class ModelSourceError(ValueError):
    """``--model`` names nothing this server can load; the message says why."""


def resolve_export(model: str, download_dir: Path, tracking_uri: str | None = None) -> Path:
    """The export folder behind ``model``; an MLflow URI is downloaded into ``download_dir``."""
    path = Path(model).expanduser()
    if path.is_dir():
        return _export_in(path, model)
    if not _URI.match(model):
        raise ModelSourceError(
            f"--model: {model} is neither a folder nor an MLflow model URI "
            "(models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/<path>)"
        )
    import mlflow

    from steps.registry.tracking import configure_mlflow_env, resolve_tracking_uri

    configure_mlflow_env()
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(download_dir))
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelSourceError(
            f"--model: cannot download {model} from MLflow at {without_credentials(uri)}: {first}"
        ) from None
    return _export_in(Path(local), model)


def _export_in(folder: Path, model: str) -> Path:
    for candidate in (folder, folder / PYFUNC_EXPORT):
        if (candidate / "config_type.json").is_file():
            return candidate
    raise ModelSourceError(
        f"--model: {model} holds no vla-sft export (no config_type.json in it or in {PYFUNC_EXPORT})"
    )


def without_credentials(uri: str) -> str:
    """``uri`` with any user:password@ removed, for messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
