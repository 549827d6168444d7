"""What the flow's ``train`` step needs around ``steps.train.trainer``: node-local inputs, the TrainConfig of a
run, and where the exported model lives afterwards.

Nodes never share a local path (each node of a remote run has its own disk): each training node re-creates its inputs from
flow artifacts — the norm stats and tokenizer travel as small artifacts, the dataset is used in place
when this machine has it (local runs) and fetched again by id/revision into the node's cache
otherwise, with the fingerprint checked against the one ``fetch_data`` recorded.

Checkpoints live under ``<checkpoint_root>/<lineage_id>``: a resumed run (same lineage) or a retried
task finds them and continues. On S3 the export folder is uploaded next to them, so ``evaluate`` and
``register`` (possibly on other machines) can download it.

Fault injection, FOR TESTS ONLY: ``VLA_SFT_FAIL_AFTER_STEP=<n>`` in the environment of a run makes
training SIGKILL itself right after the checkpoint of step ``n`` is complete (TrainConfig
``fail_after_step``), like a preempted node; ``resume`` (without the variable) then continues from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.train.config import TrainConfig

FAULT_ENV = "VLA_SFT_FAIL_AFTER_STEP"
# torchrun runs the trainer as a module (`python -m steps.train`), so its package folder never lands on
# sys.path[0] (where names like `setup` or `config` would shadow other top-level modules).
TRAIN_ENTRYPOINT = "steps.train"
TORCHRUN_ARGS = {"module": ""}  # metaflow-torchrun turns "" into the bare flag `--module`
# --demo training settings (the tiny model on a few dozen frames, on 2 CPU cores).
# Checkpoints and validation every quarter of the run (set in build_train_config).
DEMO_TRAIN = {"val_samples": 16, "log_every": 1, "num_workers": 0, "augment": False, "warmup_steps": 2}


@dataclass(frozen=True)
class NodeInputs:
    dataset_root: str
    norm_stats_path: str
    tokenizer_path: str
    dataset_revision: str | None = None  # the commit fetch_data pinned (text datasets read from the Hub)


def checkpoint_dir_for(checkpoint_root: str, lineage_id: str) -> str:
    return f"{checkpoint_root.rstrip('/')}/{lineage_id}"


def node_dataset_root(rc, fetched: dict) -> str:
    """The dataset on this machine: fetch_data's folder when it is here, else fetched again by id."""
    from data_adapters.lerobot_format import INFO_PATH

    if (Path(fetched["path"]) / INFO_PATH).is_file():
        return fetched["path"]
    return _refetch(rc, fetched)


def _refetch(rc, fetched: dict) -> str:
    from steps.fetch.run_inputs import fetch_run_dataset

    if rc.data.dataset_kind in ("local", "demo"):
        raise ValueError(
            f"dataset: {fetched['path']} is a local path of the machine that ran fetch_data and is not on "
            "this node; multi-node and remote runs need a Hub id, an s3:// URI or a metaworld:// dataset"
        )
    # The revision fetch_data pinned (a Hub commit, an S3 listing digest): every node reads the same files.
    pinned = dataclasses.replace(
        rc.data, dataset_revision=fetched.get("revision") or rc.data.dataset_revision
    )
    again = fetch_run_dataset(dataclasses.replace(rc, data=pinned))
    if again.fingerprint != fetched["fingerprint"]:
        raise ValueError(
            f"dataset: {rc.data.dataset} fetched on this node has fingerprint {again.fingerprint}, but fetch_data "
            f"saw {fetched['fingerprint']}; the dataset changed between the two fetches"
        )
    return str(again.path)


def build_train_config(
    rc,
    inputs: NodeInputs,
    *,
    train_episodes: list[int] | None,
    val_episodes: list[int],
    checkpoint_dir: str,
    export_dir: str,
    metrics_file: str | None,
    tracking_uri: str | None,
    announce: bool = True,
) -> TrainConfig:
    """The run's TrainConfig: the run config's overrides over the config type's preset, then
    ``--train_options``. ``rc`` is the run's ``steps.config.run_config.RunConfig``; ``announce`` False
    leaves fault injection out (``start`` builds a trial copy only to validate it)."""
    fields: dict[str, Any] = {
        "config_type": rc.config_type,
        "dataset_root": inputs.dataset_root,
        # Text: the commit fetch_data read (a local LeRobot root needs none: it is already that revision).
        "dataset_revision": inputs.dataset_revision or rc.data.dataset_revision,
        "norm_stats_path": inputs.norm_stats_path,
        "tokenizer_path": inputs.tokenizer_path,
        "train_episodes": train_episodes,
        "val_episodes": val_episodes,
        "model_variant": rc.model.variant,
        "pretrained": rc.model.pretrained,
        "lora": rc.lora,
        "global_batch": rc.train.global_batch,
        "max_steps": rc.train.max_steps,
        "peak_lr": rc.train.peak_lr,
        "checkpoint_dir": checkpoint_dir,
        "export_dir": export_dir,
        "metrics_file": metrics_file,
        "mlflow": tracking_uri is not None,
        "mlflow_tracking_uri": tracking_uri,
    }
    if rc.demo:
        fields.update(DEMO_TRAIN)
        max_steps = rc.train.max_steps
        fields["decay_steps"] = max(max_steps, fields["warmup_steps"])
        fields["save_every"] = fields["val_every"] = max(1, max_steps // 4)
    fields.update(rc.train.options)
    fault = os.environ.get(FAULT_ENV)
    if fault and announce:
        fields["fail_after_step"] = int(fault)
        print(
            f"{FAULT_ENV}={fault}: training will kill itself after the checkpoint of step {fault}",
            file=sys.stderr,
        )
    return TrainConfig.from_dict(fields)


def worker_environment(
    mlflow_run_id: str, tracking_uri: str, project_root: str | os.PathLike
) -> dict[str, str]:
    """Environment of the torchrun workers: they join the flow's MLflow run and import the project from its
    root (the code package root in a remote task)."""
    return {"MLFLOW_RUN_ID": mlflow_run_id, "MLFLOW_TRACKING_URI": tracking_uri,
            "PYTHONPATH": os.pathsep.join([str(project_root), os.environ.get("PYTHONPATH", "")])}  # fmt: skip


@dataclass(frozen=True)
class TrainingJob:
    """One node's prepared training: the TrainConfig file torchrun's workers read, and where rank 0 writes."""

    config: TrainConfig
    config_path: str
    result_path: str

    @property
    def error_path(self) -> str:
        """Where a worker records a user error (``steps.errors.write_error_file``)."""
        return str(Path(self.result_path).with_name("train_error.json"))

    @property
    def entrypoint_args(self) -> list[str]:
        return [
            "--config",
            self.config_path,
            "--result_json",
            self.result_path,
            "--error_json",
            self.error_path,
        ]

    def read_result(self) -> dict:
        """Rank 0's TrainResult; raises TrackingUnavailable (one line naming the URI) when training finished
        but its last metrics did not reach the tracking server: retrying resumes from the last checkpoint
        and sends them, without training again."""
        result = json.loads(Path(self.result_path).read_text())
        if result.get("tracking_error"):
            from steps.train.tracking_queue import TrackingUnavailable

            raise TrackingUnavailable(result["tracking_error"])
        return result

    @contextlib.contextmanager
    def user_errors(self):
        """Around torchrun: a worker's recorded user error replaces torchrun's failure (one line, no
        traceback), and what torchrun prints after it (its ChildFailedError traceback) goes to a file."""
        from steps import errors

        console = sys.stderr
        sys.stderr = _DivertAfter(
            console, self.error_path, Path(self.result_path).with_name("torchrun_stderr.txt")
        )
        try:
            yield
        except Exception:
            reported = errors.read_error_file(self.error_path)
            if reported is None:
                raise
            raise reported from None
        finally:
            diverted, sys.stderr = sys.stderr, console
            diverted.close()


def prepare_training(task, fetched: dict, norm_stats: dict, tokenizer_model: bytes, *, workdir: str | os.PathLike,
                     checkpoint_dir: str, tracking_uri: str) -> TrainingJob:  # fmt: skip
    """This node's inputs on disk (``task.node_inputs``) and its TrainConfig file, ready for torchrun."""
    workdir = Path(workdir)
    inputs = task.node_inputs(fetched, norm_stats, tokenizer_model, workdir)
    config = build_train_config(task.rc, inputs, train_episodes=fetched["train_episodes"],
                                val_episodes=fetched["val_episodes"], checkpoint_dir=checkpoint_dir,
                                export_dir=export_dir_for(checkpoint_dir, workdir),
                                metrics_file=str(workdir / "metrics.jsonl"), tracking_uri=tracking_uri)  # fmt: skip
    config.to_json(workdir / "train_config.json")
    result_path = workdir / "train_result.json"
    result_path.unlink(missing_ok=True)
    for stale in workdir.glob("train_error*"):  # a previous attempt's error is not this attempt's
        stale.unlink(missing_ok=True)
    return TrainingJob(config, str(workdir / "train_config.json"), str(result_path))


class _DivertAfter:
    """A text stream that writes to ``console`` until ``marker`` exists, then to the file ``divert_to``.

    The drain threads of metaflow-torchrun write torchrun's stderr to ``sys.stderr`` chunk by chunk; a
    worker that hit a user error writes ``marker`` before it exits, so everything torchrun reports after
    that (the failed child, its ChildFailedError traceback) is kept in the file, off the console.
    """

    def __init__(self, console, marker: str, divert_to: Path):
        self.console, self.marker, self.divert_to = console, marker, divert_to
        self._file = None
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if self._file is None and os.path.exists(self.marker):
                self._file = open(self.divert_to, "a")  # noqa: SIM115 - closed in close()
            return (self._file or self.console).write(text)

    def flush(self) -> None:
        with self._lock:
            (self._file or self.console).flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __getattr__(self, name: str):  # encoding, fileno, isatty, ... of the console
        return getattr(self.console, name)


def check_train_options(options: dict | None) -> None:
    """``--train_options`` may set TrainConfig fields, except the ones the flow owns."""
    owned = {"config_type", "dataset_root", "dataset_revision", "norm_stats_path", "tokenizer_path", "train_episodes",
             "val_episodes", "checkpoint_dir", "export_dir", "metrics_file", "mlflow", "mlflow_tracking_uri",
             "fail_after_step", "fail_during_checkpoint_step"}  # fmt: skip
    if not options:
        return
    if not isinstance(options, dict):
        raise ValueError(f"--train_options: must be a JSON object, got {options!r}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"--train_options: unknown TrainConfig field(s) {unknown}")
    taken = sorted(set(options) & owned)
    if taken:
        raise ValueError(f"--train_options: field(s) {taken} are set by the flow itself")


# --- the exported model ------------------------------------------------------------------------


def export_dir_for(checkpoint_dir: str, workdir: str | os.PathLike) -> str:
    """Where rank 0 writes the export: next to local checkpoints, or locally before an S3 upload."""
    if checkpoint_dir.startswith("s3://"):
        return str(Path(workdir) / "export")
    return str(Path(checkpoint_dir) / "export")


def publish_export(export_dir: str, checkpoint_dir: str) -> str:
    """The export's lasting location: itself when local, else uploaded to ``<checkpoint_dir>/export``."""
    if not checkpoint_dir.startswith("s3://"):
        return export_dir
    import boto3

    from steps.fetch.s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(checkpoint_dir, "checkpoint_dir")
    prefix = f"{prefix}/export" if prefix else "export"
    client = boto3.client("s3")
    files = sorted(p for p in Path(export_dir).rglob("*") if p.is_file())
    for path in files:
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(export_dir).as_posix()}")
    # Written last: a reader that sees it knows every file is there (S3 has no rename).
    client.put_object(Bucket=bucket, Key=f"{prefix}/COMPLETE", Body=b"")
    return f"s3://{bucket}/{prefix}"


def local_export(uri: str, cache_dir: str | os.PathLike) -> str:
    """A local folder with the export at ``uri`` (downloaded from S3 when needed)."""
    if not uri.startswith("s3://"):
        if not Path(uri).is_dir():
            raise ValueError(
                f"export: {uri} is not on this machine (run evaluate where train ran, or use S3)"
            )
        return uri
    import boto3

    from model_zoo.files import write_dir_atomically
    from steps.fetch.s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(uri, "export")
    client = boto3.client("s3")
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    if f"{prefix}/COMPLETE" not in keys:
        raise ValueError(f"export: {uri} has no COMPLETE marker (the upload did not finish)")

    def download(staging: Path) -> None:
        for key in keys:
            rel = key[len(prefix) + 1 :]
            if rel == "COMPLETE":
                continue
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(dest))

    # Downloaded beside the target, then swapped in: a killed download never looks like an export.
    return str(write_dir_atomically(Path(cache_dir) / "export", download))


def read_metrics_file(path: str | os.PathLike | None) -> list[dict]:
    """The per-step metrics rank 0 wrote (JSON lines), de-duplicated by step (a resume appends)."""
    if not path or not Path(path).is_file():
        return []
    rows: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]
