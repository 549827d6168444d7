"""A real request body for a registered model, built from a frame (or row) of its dataset.

    python -m steps.registry.request_example --model "models:/pi05_metaworld@candidate" --out body.json
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d @body.json

The model version names its dataset (tag ``dataset.id``, at ``dataset.revision``) and its export holds the
config type; the body is one ``dataframe_records`` row in the pyfunc's input encoding:

- a policy: one base64-PNG column per camera key, ``state`` (list, robot units) and ``task``, from frame
  ``--frame`` of episode ``--episode`` (``steps.registry.pyfunc`` decodes it);
- a text model: ``messages``, a conversation of row ``--row`` up to its last answer, and ``params``
  (``max_new_tokens``).

Where the dataset is read: the shipped / generated demo datasets, a local folder, or a Hub dataset already
in the Hugging Face cache (no download); ``--dataset`` points at a local copy instead (S3 and
``metaworld://`` datasets need it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class RequestExampleError(ValueError):
    """The body cannot be built (one line naming what to fix)."""


def resolve_version(client, model_uri: str):
    """The ``ModelVersion`` of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""
    from mlflow.exceptions import MlflowException

    match = _MODEL_URI.match(model_uri)
    if not match:
        raise RequestExampleError(
            f"--model: {model_uri!r} is not models:/<name>@<alias> or models:/<name>/<version>"
        )
    name, alias, version = match["name"], match["alias"], match["version"]
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as err:
        raise RequestExampleError(f"--model: {model_uri}: {str(err).splitlines()[0]}") from None


def read_config_type(client, version, tracking_uri: str) -> dict[str, Any]:
    """The exported ``config_type.json`` of a registered version (policy pyfunc or text pyfunc)."""
    import mlflow

    base = client.get_model_version_download_uri(version.name, version.version).rstrip("/")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/artifacts/export/config_type.json",
                                                    tracking_uri=tracking_uri)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - MLflow raises several types for a missing artifact
        raise RequestExampleError(f"--model: version {version.version} of {version.name!r} has no exported "
                                  f"config_type.json (not a vla-sft model?): {str(err).splitlines()[0]}") from None  # fmt: skip
    return json.loads(Path(local).read_text())


def locate_dataset(dataset_id: str, revision: str | None, config_type: Mapping[str, Any]) -> Path:
    """A local copy of the dataset a version was trained on (no download)."""
    from steps.fetch.run_inputs import SYNTHETIC_DEMO_PREFIX, shipped_demo_folder
    from steps.text.demo import DEMO_DATASET as TEXT_DEMO
    from steps.text.demo import DEMO_ROWS

    if shipped_demo_folder(dataset_id) is not None:
        return shipped_demo_folder(dataset_id)
    if dataset_id == TEXT_DEMO:
        return DEMO_ROWS
    if dataset_id.startswith(SYNTHETIC_DEMO_PREFIX):
        from data_adapters.config_types import ConfigType
        from steps.fetch.run_inputs import synthetic_demo_dataset

        return synthetic_demo_dataset(ConfigType.from_dict(dict(config_type)))
    if Path(dataset_id).expanduser().exists():
        return Path(dataset_id).expanduser()
    if (
        dataset_id.startswith(("s3://", "metaworld://", "libero://", "maniskill://"))
        or dataset_id.count("/") != 1
    ):
        raise RequestExampleError(
            f"dataset {dataset_id!r} is not on this machine: pass --dataset /a/local/copy"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                dataset_id, repo_type="dataset", revision=revision or None, local_files_only=True
            )
        )
    except Exception:  # noqa: BLE001 - not cached, for any reason
        raise RequestExampleError(f"Hub dataset {dataset_id!r} (revision {revision or 'latest'}) is not in the Hugging "
                                  "Face cache: pass --dataset /a/local/copy") from None  # fmt: skip


def policy_record(config_type: Mapping[str, Any], root: Path, *, episode: int = 0, frame: int = 0) -> dict:
    """One observation row of the policy pyfunc from frame ``frame`` of episode ``episode``."""
    from data_adapters.config_types import ConfigType
    from data_adapters.lerobot_reader import LeRobotFrames
    from steps.registry.pyfunc import encode_image

    ct = ConfigType.from_dict(dict(config_type))
    try:
        frames = LeRobotFrames(root, state_keys=ct.state_keys, action_keys=ct.action_keys, camera_keys=ct.camera_keys,
                               horizon=ct.action_horizon, episodes=[episode])  # fmt: skip
    except (ValueError, KeyError) as err:
        raise RequestExampleError(f"--episode: {episode}: {' '.join(str(err).split())}") from None
    length = frames.episode_lengths[episode]
    if not 0 <= frame < length:
        raise RequestExampleError(f"--frame: {frame} is outside episode {episode} (frames 0..{length - 1})")
    item = frames[frame]
    row: dict[str, Any] = {key: encode_image(item["images"][key]) for key in ct.camera_keys}
    row["state"] = [float(x) for x in item["state"]]
    row["task"] = str(item["task"])
    return row


def text_record(root: Path, *, row: int = 0) -> dict:
    """The conversation of row ``row`` up to (without) its last answer, as the text pyfunc takes it."""
    from steps.text import data as text_data

    rows = text_data.load_rows(str(root))
    if not 0 <= row < len(rows):
        raise RequestExampleError(f"--row: {row} is outside the dataset's {len(rows)} rows")
    item = rows[row]
    if "messages" not in item:
        return {"prompt": str(item["prompt"])}
    messages = list(item["messages"])
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return {"messages": messages[:last]}


def request_body(model_uri: str, *, tracking_uri: str | None = None, dataset: str | None = None,
                 episode: int = 0, frame: int = 0, row: int = 0, max_new_tokens: int = 64) -> dict:  # fmt: skip
    """The ``POST /invocations`` body for ``model_uri`` (see the module docstring)."""
    from mlflow.tracking import MlflowClient

    from steps.registry.tracking import configure_mlflow_env, resolve_tracking_uri

    configure_mlflow_env()
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = resolve_version(client, model_uri)
    config_type = read_config_type(client, version, uri)
    tags = version.tags or {}
    if dataset is None and not tags.get("dataset.id"):
        raise RequestExampleError(f"--model: {model_uri} names no dataset (tag dataset.id): pass --dataset")
    root = Path(dataset).expanduser() if dataset else locate_dataset(tags["dataset.id"], tags.get("dataset.revision"),
                                                                     config_type)  # fmt: skip
    if config_type.get("kind") == "text":
        return {
            "dataframe_records": [text_record(root, row=row)],
            "params": {"max_new_tokens": max_new_tokens},
        }
    return {"dataframe_records": [policy_record(config_type, root, episode=episode, frame=frame)]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m steps.registry.request_example", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", required=True, help="models:/<name>@<alias> or models:/<name>/<version>")
    p.add_argument("--out", default="-", help="file to write the JSON body to (default: stdout)")
    p.add_argument(
        "--dataset", help="a local copy of the dataset (default: the one the version was trained on)"
    )
    p.add_argument("--episode", type=int, default=0, help="policy: episode of the frame (default 0)")
    p.add_argument("--frame", type=int, default=0, help="policy: frame within the episode (default 0)")
    p.add_argument("--row", type=int, default=0, help="text: dataset row (default 0)")
    p.add_argument("--max_new_tokens", type=int, default=64, help="text: tokens to generate (default 64)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: MLFLOW_TRACKING_URI or sqlite)")
    args = p.parse_args(argv)
    try:
        body = request_body(args.model, tracking_uri=args.tracking_uri, dataset=args.dataset, episode=args.episode,
                            frame=args.frame, row=args.row, max_new_tokens=args.max_new_tokens)  # fmt: skip
    except RequestExampleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(body)
    if args.out == "-":
        print(text)
        return 0
    from steps.cache import atomic_write_text

    atomic_write_text(args.out, text + "\n")
    print(f"wrote {os.path.abspath(args.out)} ({len(text)} bytes): POST it to /invocations", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
