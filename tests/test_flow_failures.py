"""Failures of real local flow runs and how they are recorded: an error a retry cannot fix is attempted once
and marks the MLflow run FAILED with the failing step, also for two first runs started at once in a new
folder (one MLflow database, created once)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_flow import FLOW, flow_env, inspect_run


def corrupt_image_dataset(root: Path) -> Path:
    """A pi05_metaworld-shaped LeRobot dataset whose PNG frames are not images: nothing before training
    decodes them (statistics read state and actions only), so it fails in train, the same way every time."""
    from data_adapters.registry import get_config_type
    from data_adapters.synthetic import make_synthetic_dataset

    dataset = make_synthetic_dataset(root, get_config_type("pi05_metaworld"), num_episodes=6, min_len=12,
                                     max_len=16, image_size=32, image_storage="image")  # fmt: skip
    for path in dataset.glob("data/*/*.parquet"):
        table = pq.read_table(path)
        column = table.column("observation.image").combine_chunks()
        junk = pa.array([b"not a png"] * len(table), pa.binary())
        images = pa.StructArray.from_arrays([junk, column.field("path")], names=["bytes", "path"])
        index = table.schema.get_field_index("observation.image")
        pq.write_table(table.set_column(index, table.schema.field(index), images), path)
    return dataset


@pytest.mark.slow
def test_two_first_runs_at_once_fail_a_deterministic_train_error_once_and_mark_mlflow(tmp_path):
    """Two runs start at the same time in a folder with no MLflow database yet (both starts must succeed);
    each trains on a dataset with corrupt images: train fails with one 'Dataset error' line, is not retried
    although the cluster Config allows a retry (the trainer runs once: one torchrun), and the MLflow run is
    FAILED with vla_sft.failed_step = train."""
    dataset = corrupt_image_dataset(tmp_path / "bad_dataset")
    root = tmp_path / "runs"  # one folder: one mlflow.db, one Metaflow datastore
    root.mkdir()
    env = flow_env(root)
    cmd = [sys.executable, str(FLOW), "--config-value", "cluster", '{"retries": 1, "retry_backoff_s": 1}', "run",
           "--demo", "--dataset", str(dataset), "--max_steps", "2", "--sim_episodes", "0"]  # fmt: skip
    procs = [subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    mlflow_runs = set()
    for proc, out in zip(procs, outputs):
        assert proc.returncode != 0, out[-3000:]
        assert "alembic" not in out and "Online migration" not in out, out[-3000:]
        assert "This failed task will not be retried." in out, out[-3000:]
        assert "corrupt image 'observation.image'" in out, out[-3000:]
        lines = out.splitlines()
        run_id = next(x.split("/", 1)[0].rsplit("[", 1)[-1] for x in lines if "/start/" in x)
        task = "\n".join(x for x in lines if f"[{run_id}/train/" in x)
        assert "Dataset error" in task and "Traceback" not in task and "ChildFailedError" not in task, task
        # (The runtime then ends with Metaflow's own "The terminal step end was not successful" line, which it
        # prints whenever a task is not retried.) One train task, started once (each attempt logs its start):
        assert sum("Task is starting" in x for x in task.splitlines()) == 1, task
        info = inspect_run(root, run_id)
        assert info["steps"]["start"] and info["steps"].get("train") is False
        assert info["attempts"]["train"] == 0  # the cluster Config allowed one retry; none was made
        tags = [t for t in info["tags"] if t.startswith("mlflow_run_id:")]
        (mlflow_run_id,) = [t.split(":", 1)[1] for t in tags]
        run = client.get_run(mlflow_run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["vla_sft.failed_step"] == "train"
        assert run.data.tags["vla_sft.failed_task"].startswith(f"SFTFlow/{run_id}/train/")
        mlflow_runs.add(mlflow_run_id)
    assert len(mlflow_runs) == 2


def test_a_retry_after_a_deterministic_failure_stops_before_training(tmp_path):
    """The remote half of the policy (a scheduler retries whatever the exit code): the retry reads the
    previous attempt's record and stops at once; a transient failure waits the backoff instead."""
    from steps.train import attempts

    ckpt = str(tmp_path / "ckpt" / "SFTFlow-1")
    slept: list[float] = []
    attempts.before_attempt(ckpt, 0, backoff_s=30, remote=False, sleep=slept.append)
    assert slept == []  # the first attempt never waits
    attempts.record_failure(ckpt, 0, retryable=True, headline="Error", message="node lost")
    attempts.before_attempt(ckpt, 1, backoff_s=30, remote=False, sleep=slept.append)
    attempts.before_attempt(ckpt, 1, backoff_s=30, remote=True, sleep=slept.append)  # the scheduler waited
    assert slept == [30]
    attempts.record_failure(ckpt, 1, retryable=False, headline="Dataset error", message="corrupt image 'x'")
    started = time.monotonic()
    with pytest.raises(attempts.NotRetried, match=r"^corrupt image 'x'$") as err:
        attempts.before_attempt(ckpt, 2, backoff_s=30, remote=True, sleep=slept.append)
    assert err.value.headline == "Dataset error" and slept == [30] and time.monotonic() - started < 1
    # No record (the attempt was killed before it could write one): retried, after the backoff.
    attempts.before_attempt(ckpt, 4, backoff_s=5, remote=False, sleep=slept.append)
    assert slept == [30, 5]
