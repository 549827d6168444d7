"""The flow on a remote-style setup: Metaflow's S3 datastore, checkpoints and the export on S3.

A real local Metaflow run whose datastore is an S3 bucket on the test S3 server (moto on 127.0.0.1):
checkpoints default to ``<datastore root>/vla_sft/checkpoints/<lineage>``, a preemption is resumed by
@retry from the S3 checkpoint, and evaluate / register read the export back from S3.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.test_flow import flow_env, run_flow


@pytest.mark.slow
def test_demo_flow_on_an_s3_datastore_resumes_from_s3_checkpoints(s3_env, s3_endpoint, tmp_path):
    bucket = f"mf-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(Bucket=bucket)
    env = flow_env(tmp_path, METAFLOW_DEFAULT_DATASTORE="s3", METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{bucket}/metaflow",
                   METAFLOW_S3_ENDPOINT_URL=s3_endpoint, VLA_SFT_FAIL_AFTER_STEP="6")  # fmt: skip
    result = run_flow(tmp_path, "--config-value", "cluster", '{"retries": 1, "retry_backoff_s": 2}', "run", "--demo",
                      "--max_steps", "12", "--sim_episodes", "0", env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = [x[x.index("{") :] for x in (result.stdout + result.stderr).splitlines() if '"final_step"' in x]
    train = json.loads(lines[-1])
    prefix = f"metaflow/vla_sft/checkpoints/{train['checkpoint_dir'].rsplit('/', 1)[-1]}"
    assert train["checkpoint_dir"] == f"s3://{bucket}/{prefix}"
    assert (train["resumed_from"], train["final_step"]) == (6, 12)  # attempt 1 continued from S3
    listing = s3_env.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    keys = {o["Key"][len(prefix) + 1 :] for o in listing.get("Contents", [])}
    assert "export/COMPLETE" in keys and "export/model.safetensors" in keys
    assert any(k.startswith("step_") and k.endswith("/COMPLETE") for k in keys)
    assert not list(tmp_path.rglob("checkpoints/SFTFlow-*"))  # no checkpoint went to a local folder
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (model,) = client.search_registered_models()
    version = client.get_model_version_by_alias(model.name, "candidate")
    assert version.tags["vla_sft.lineage_id"] == train["checkpoint_dir"].rsplit("/", 1)[-1]
    assert client.get_run(version.run_id).data.metrics["eval/val_loss"] > 0
