"""The flow the way the README runs it remotely, on this machine: a real `mlflow server` on 127.0.0.1 (its
artifacts on the S3 test server) reached through a TCP proxy that the tests take down, and Metaflow's S3
datastore. Training rides out a tracking outage; a worker killed during one is resumed; credentials work
and never leak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.mlflow_helpers import mlflow_server
from tests.s3_helpers import S3_TEST_ENV
from tests.tcp_proxy import TcpProxy
from tests.test_flow import FLOW, flow_env, inspect_run, run_flow

OUTAGE_S = 22


def _train_steps(client, run_id: str, key: str = "train/loss") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def _wait_for(predicate, timeout_s: float, what: str, proc=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the flow ended before {what}: {proc.stdout.read()[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


class _Output:
    """A flow's combined output read line by line in a thread, so a test can act when a line shows up."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # end of output
            self._cond.notify_all()

    def wait_for(self, *needles: str, timeout_s: float) -> None:
        """Until a line holds every one of ``needles`` (AssertionError when the output ends first)."""

        def seen() -> bool:
            return any(all(n in x for n in needles) for x in self.lines)

        with self._cond:
            self._cond.wait_for(lambda: seen() or self.lines[-1:] == [""], timeout_s)
            if not seen():
                raise AssertionError(f"no line with {needles} in the output: {''.join(self.lines)[-4000:]}")

    def text(self) -> str:
        """Everything the process printed (call after it ended to have all of it)."""
        self._reader.join(timeout=30)
        return "".join(self.lines)


def _first_mlflow_run(client, experiment: str = "vla-sft"):
    experiment = client.get_experiment_by_name(experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id])
    return runs[0] if runs else None


@pytest.mark.slow
def test_demo_flow_against_a_tracking_server_rides_out_an_outage(s3_env, s3_endpoint, tmp_path):
    """README's remote configuration: MLflow server (artifacts on S3) + S3 datastore. The tracking server is
    unreachable for 22 s during training; the run finishes without a retry, every training step's loss is in
    MLflow once, the version is READY with lineage tags and alias candidate, the pyfunc loads by alias from
    the server and predicts, and promotion through the server works."""
    from mlflow.tracking import MlflowClient

    bucket = f"mf-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(Bucket=bucket)
    server_env = {**S3_TEST_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    with mlflow_server(
        tmp_path / "mlflow", artifacts_destination=f"s3://{bucket}/mlflow", env=server_env
    ) as direct:
        proxy = TcpProxy(int(direct.rsplit(":", 1)[1]))
        env = flow_env(tmp_path, METAFLOW_DEFAULT_DATASTORE="s3", METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{bucket}/metaflow",
                       METAFLOW_S3_ENDPOINT_URL=s3_endpoint, MLFLOW_TRACKING_URI=proxy.url)  # fmt: skip
        cmd = [sys.executable, str(FLOW), "--config-value", "cluster", '{"retries": 1, "retry_backoff_s": 5}', "run",
               "--demo", "--max_steps", "12", "--sim_episodes", "0"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        client = MlflowClient(direct)  # the test itself goes around the proxy
        try:
            run = _wait_for(lambda: _first_mlflow_run(client), 300, "the MLflow run", proc)
            _wait_for(lambda: _train_steps(client, run.info.run_id), 600, "the first training step", proc)
            proxy.down()
            down_at = time.time()
            time.sleep(OUTAGE_S)
            proxy.up()
            up_at = time.time()
            out, _ = proc.communicate(timeout=1500)
        finally:
            if proc.poll() is None:
                proc.kill()
            proxy.close()
        assert proc.returncode == 0, out[-5000:]
        assert "does not answer" in out and "answers again" in out, out[-5000:]
        info = inspect_run(tmp_path)
        assert info["successful"] and info["attempts"]["train"] == 0  # no retry
        run = client.get_run(info["mlflow_run_id"])
        assert run.info.status == "FINISHED" and "vla_sft.failed_step" not in run.data.tags
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, 13))  # every step exactly once
        # Training went on during the outage: points measured (timestamped) while the server was away.
        assert any(down_at * 1000 < m.timestamp < up_at * 1000 for m in history)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [3, 6, 9, 12]
        assert any(k.startswith("system/cpu") for k in run.data.metrics)
        assert run.data.params["data.config_type"] == "pi05_metaworld" and "eval/val_loss" in run.data.metrics
        # Artifacts went through the server to S3.
        keys = [o["Key"] for o in s3_env.list_objects_v2(Bucket=bucket, Prefix="mlflow/")["Contents"]]
        assert any(k.endswith("eval/plots/action_trajectories.png") for k in keys)
        assert any("/models/m-" in k and k.endswith("model.safetensors") for k in keys)
        # One READY version with its lineage and alias; the pyfunc by alias from the server.
        mv = info["model_version"]
        (version,) = client.search_model_versions(f"name = '{mv['name']}'")
        assert version.status == "READY" and version.run_id == run.info.run_id
        assert version.tags["vla_sft.lineage_id"] == info["lineage_id"]
        assert (
            version.tags["metaflow.pathspec"] == f"SFTFlow/{info['id']}"
            and version.tags["dataset.fingerprint"]
        )
        assert str(client.get_registered_model(mv["name"]).aliases["candidate"]) == version.version
        _predict_by_alias(direct, f"models:/{mv['name']}@candidate")
        promoted = subprocess.run([sys.executable, "-m", "steps.promote", "--name", mv["name"], "--version",
                                   version.version, "--to", "champion", "--gate", "val_loss<=100"],
                                  env={**env, "MLFLOW_TRACKING_URI": direct}, capture_output=True, text=True,
                                  timeout=300)  # fmt: skip
        assert promoted.returncode == 0, promoted.stderr[-3000:]
        assert str(client.get_registered_model(mv["name"]).aliases["champion"]) == version.version


def _predict_by_alias(uri: str, model_uri: str) -> None:
    import mlflow
    import numpy as np

    from data_adapters.registry import get_config_type
    from steps.registry.model_logging import example_input

    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
        actions = np.asarray(model.predict(example_input(get_config_type("pi05_metaworld"))))
    finally:
        mlflow.set_tracking_uri(None)
    assert actions.shape == (1, 5, 4) and np.isfinite(actions).all()


SECRET = "pw-" + uuid.uuid4().hex  # the MLflow admin password of this test; must appear in no file or log


def _files_containing(root: Path, secret: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if secret in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_killed_during_an_outage_then_resumed_with_credentials_that_never_leak(tmp_path):
    """A basic-auth tracking server (credentials from MLFLOW_TRACKING_USERNAME / _PASSWORD); a URI carrying
    the password is refused in start, no credentials fail start with one line. Then:

    1. the server goes away as the train task starts and training is killed (SIGKILL after the step-9
       checkpoint) while it is away;
    2. `resume` with the server still away: training continues from step 9 to 12, waits mlflow_wait_s (5 s)
       for the server, then fails with one line naming the URI;
    3. `resume` with the server back: nothing is trained again (resumed from step 12), the points the two
       earlier processes never got through are sent, and the history has every step exactly once.

    The password is in no file of the Metaflow datastore, the MLflow store, the caches, and no log."""
    from mlflow.tracking import MlflowClient

    with mlflow_server(tmp_path / "mlflow", admin_password=SECRET) as direct:
        proxy = TcpProxy(int(direct.rsplit(":", 1)[1]))
        creds = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": SECRET}
        host = proxy.url.removeprefix("http://")
        logs = []
        try:
            leaky = run_flow(tmp_path, "run", "--demo",
                             env=flow_env(tmp_path, MLFLOW_TRACKING_URI=f"http://admin:{SECRET}@{host}"))  # fmt: skip
            logs.append(leaky.stdout + leaky.stderr)
            assert leaky.returncode != 0
            assert f"MLFLOW_TRACKING_URI: http://[credentials]@{host} carries credentials" in logs[-1]
            assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in logs[-1]
            denied = run_flow(
                tmp_path, "run", "--demo", env=flow_env(tmp_path, MLFLOW_TRACKING_URI=proxy.url)
            )
            logs.append(denied.stdout + denied.stderr)
            assert denied.returncode != 0 and "refused the request (HTTP 401)" in logs[-1], logs[-1][-3000:]
            assert "Traceback" not in logs[-1]

            env = flow_env(tmp_path, MLFLOW_TRACKING_URI=proxy.url, VLA_SFT_FAIL_AFTER_STEP="9", **creds)
            cmd = [sys.executable, str(FLOW), "--config-value", "cluster", '{"retries": 0}', "run", "--demo",
                   "--max_steps", "12", "--sim_episodes", "0", "--train_options", '{"mlflow_wait_s": 5}']  # fmt: skip
            proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)  # fmt: skip
            os.environ.update(creds)  # the test's own client reads the server too
            client = MlflowClient(direct)
            output = _Output(proc)
            try:
                # The server goes away as the train task starts: no training step can reach it before the
                # kill, however fast this machine trains (waiting for a first step in MLflow raced a fast
                # trainer that sent all of steps 1-9 before the proxy went down).
                output.wait_for("/train/", "Task is starting", timeout_s=600)
                proxy.down()
                proc.wait(timeout=1200)  # killed after step 9, with the server away
            finally:
                if proc.poll() is None:
                    proc.kill()
            out = output.text()
            logs.append(out)
            assert proc.returncode != 0
            assert "does not answer" in out, out[-4000:]
            first = inspect_run(tmp_path)
            assert first["steps"].get("train") is False
            run = _first_mlflow_run(client)
            assert _train_steps(client, run.info.run_id) == []  # the killed process could send none of them
            assert client.get_run(run.info.run_id).info.status == "RUNNING"  # nobody could tell the server

            resume_env = flow_env(tmp_path, MLFLOW_TRACKING_URI=proxy.url, **creds)
            away = run_flow(tmp_path, "resume", "--origin-run-id", first["id"], env=resume_env)
            logs.append(away.stdout + away.stderr)
            assert away.returncode != 0
            second = inspect_run(tmp_path)
            assert second["id"] != first["id"] and second["steps"].get("train") is False
            lines = [x for x in logs[-1].splitlines() if f"[{second['id']}/train/" in x]
            assert any("resumed from" in x and "step_000000009" in x for x in lines), logs[-1][-4000:]
            assert any("step 12/12" in x for x in lines)
            shown = [x for x in lines if "did not take the last" in x]
            assert shown and f"MLflow tracking server {proxy.url} did not take the last" in shown[-1]
            assert "Tracking unavailable" in logs[-1] and "Traceback" not in "\n".join(lines)

            proxy.up()
            resumed = run_flow(tmp_path, "resume", "--origin-run-id", second["id"], env=resume_env)
            logs.append(resumed.stdout + resumed.stderr)
            assert resumed.returncode == 0, logs[-1][-5000:]
            info = inspect_run(tmp_path)
            assert info["successful"] and info["mlflow_run_id"] == run.info.run_id
            assert (
                info["train_result"]["resumed_from"] == info["train_result"]["final_step"] == 12
            )  # no training
            final = client.get_run(run.info.run_id)
            assert final.info.status == "FINISHED"
            assert (
                final.data.tags["vla_sft.interrupted_run"] == f"SFTFlow/{first['id']}"
            )  # marked by the resume
            assert final.data.tags["metaflow.pathspec"] == f"SFTFlow/{info['id']}"
            assert sorted(_train_steps(client, run.info.run_id)) == list(range(1, 13))
            assert sorted(_train_steps(client, run.info.run_id, "val/loss")) == [3, 6, 9, 12]
            (version,) = client.search_model_versions(f"name = '{info['model_version']['name']}'")
            assert version.tags["vla_sft.lineage_id"] == info["lineage_id"]
        finally:
            for key in creds:
                os.environ.pop(key, None)
            proxy.close()
    assert not [log for log in logs if SECRET in log]
    assert _files_containing(tmp_path, SECRET.encode()) == []  # datastore, MLflow store, caches, cards
    assert SECRET not in json.dumps(info["run_config"])
