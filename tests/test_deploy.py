"""The flow compiled for Metaflow's production schedulers, offline: Argo Workflows (Kubernetes, the training
step as a JobSet) and AWS Step Functions (AWS Batch), with the S3 test server (moto) as datastore and AWS
API. The specs are read back and checked; nothing is deployed."""

from __future__ import annotations

import io
import json
import re
import tarfile
import uuid

import pytest
import yaml

from tests.test_flow import flow_env, run_flow

SECRET = "hunter2-do-not-print"
CLUSTER = {"backend": "kubernetes", "nodes": 2, "gpus_per_node": 8, "memory": 400000, "image": "registry/vla-sft:7",
           "retries": 2, "retry_backoff_s": 300, "secrets": ["mlflow-credentials"]}  # fmt: skip


@pytest.fixture
def s3_datastore(s3_env, s3_endpoint, tmp_path):
    bucket = f"mf-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(Bucket=bucket)
    env = flow_env(tmp_path, METAFLOW_DEFAULT_DATASTORE="s3", METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{bucket}/metaflow",
                   METAFLOW_S3_ENDPOINT_URL=s3_endpoint, MLFLOW_TRACKING_URI="http://mlflow.internal:5000",
                   MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=SECRET)  # fmt: skip
    return env


def _yaml_with_argo_expressions(text: str):
    """Argo's ``{{...}}`` expressions stand unquoted in the JobSet manifest; quote them to parse it."""
    quoted = re.sub(r"(:\s*)(\{\{.*\}\})\s*$", lambda m: m.group(1) + "'" + m.group(2).replace("'", "''") + "'",
                    text, flags=re.M)  # fmt: skip
    return yaml.safe_load(quoted)


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def test_argo_workflows_spec_has_a_multi_node_training_jobset(s3_datastore, s3_env, tmp_path):
    result = run_flow(tmp_path, "--datastore", "s3", "--config-value", "cluster", json.dumps(CLUSTER),
                      "argo-workflows", "create", "--only-json", env=s3_datastore, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stdout + result.stderr
    spec = json.loads(result.stdout[result.stdout.index("{") :])
    templates = {t["name"]: t for t in spec["spec"]["templates"]}
    train = templates["train"]
    # Retries: two more attempts, 5 minutes apart (retry_backoff_s 300 s).
    assert train["retryStrategy"]["limit"] == 2 and train["retryStrategy"]["backoff"]["duration"] == "5m"
    jobset = _yaml_with_argo_expressions(train["resource"]["manifest"])
    assert jobset["kind"] == "JobSet"
    jobs = {j["name"]: j for j in jobset["spec"]["replicatedJobs"]}
    assert set(jobs) == {"control", "worker"} and jobs["control"]["replicas"] == 1
    # Workers: num-parallel - 1, where num-parallel is what compute_norm_stats passes at run time (cluster
    # nodes, read from the Config in the code package, checked below).
    assert jobs["worker"]["replicas"] == "{{=asInt(inputs.parameters.workerCount)}}"
    dag = templates["compute-norm-stats-foreach-parallel"]["dag"]["tasks"][0]["arguments"]["parameters"]
    worker_count = next(p["value"] for p in dag if p["name"] == "workerCount")
    assert "sprig.sub(sprig.int(inputs.parameters['num-parallel']),1)" in worker_count
    for job in jobs.values():
        (container,) = job["template"]["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "registry/vla-sft:7"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert container["resources"]["requests"]["memory"] == "400000.0M"
        env = _env(container)
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
        assert not {k for k in env if k in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME",
                                             "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")}  # fmt: skip
        assert container["envFrom"] == [{"secretRef": {"name": "mlflow-credentials"}}]
    # Every other step is one pod (a container template, no JobSet); evaluate gets one GPU.
    steps = ("start", "fetch-data", "compute-norm-stats", "join", "evaluate", "register", "end")
    for name in steps:
        container = templates[name]["container"]
        assert "resource" not in templates[name] and container["image"] == "registry/vla-sft:7"
        assert container["resources"]["limits"].get("nvidia.com/gpu") == ("1" if name == "evaluate" else None)
        assert _env(container)["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    # No secret anywhere in the spec: not the MLflow password, not the S3 key.
    text = result.stdout
    assert (
        SECRET not in text and "AWS_SECRET_ACCESS_KEY" not in text and "MLFLOW_TRACKING_PASSWORD" not in text
    )
    # The code package (uploaded to the S3 datastore) carries the cluster Config the steps read.
    package = _env(templates["start"]["container"])["METAFLOW_CODE_URL"]
    bucket, key = package[len("s3://") :].split("/", 1)
    with tarfile.open(fileobj=io.BytesIO(s3_env.get_object(Bucket=bucket, Key=key)["Body"].read())) as tar:
        config = json.loads(tar.extractfile(".mf_meta/CONFIG").read())["user_configs"]["cluster"][0]
        assert "flows/torchrun_loopback.py" in tar.getnames()
    assert (config["nodes"], config["gpus_per_node"], config["retry_backoff_s"]) == (2, 8, 300)


def test_a_tracking_uri_with_credentials_is_refused_before_deploying(s3_datastore, tmp_path):
    env = {**s3_datastore, "MLFLOW_TRACKING_URI": f"http://admin:{SECRET}@mlflow.internal:5000"}
    result = run_flow(tmp_path, "--datastore", "s3", "--config-value", "cluster", json.dumps(CLUSTER),
                      "argo-workflows", "create", "--only-json", env=env, timeout=300)  # fmt: skip
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert SECRET not in out
    assert "MLFLOW_TRACKING_URI: http://[credentials]@mlflow.internal:5000 carries credentials" in out
    assert "Invalid input" in out and "Traceback" not in out


def _batch_queue(endpoint: str) -> str:
    """A job queue on a managed EC2 compute environment in the test server's AWS Batch (what Metaflow
    describes while compiling)."""
    import boto3

    iam, ec2, batch = (boto3.client(s, endpoint_url=endpoint) for s in ("iam", "ec2", "batch"))
    name = uuid.uuid4().hex[:8]
    role = iam.create_role(RoleName=f"batch-{name}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName=f"ecs-{name}")["InstanceProfile"]["Arn"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"b-{name}", Description="batch", VpcId=vpc)["GroupId"]
    compute = batch.create_compute_environment(
        computeEnvironmentName=f"ce-{name}", type="MANAGED", serviceRole=role, state="ENABLED",
        computeResources={"type": "EC2", "minvCpus": 0, "maxvCpus": 64, "instanceTypes": ["p4d.24xlarge"],
                          "subnets": [subnet], "securityGroupIds": [group], "instanceRole": profile},
    )  # fmt: skip
    batch.create_job_queue(jobQueueName=f"q-{name}", state="ENABLED", priority=1,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": compute["computeEnvironmentArn"]}])  # fmt: skip
    return f"q-{name}"


def test_step_functions_cannot_compile_the_parallel_training_step(s3_datastore, s3_endpoint, tmp_path):
    """Metaflow 2.19's Step Functions compiler refuses any @parallel step (``@torchrun`` is one), after it
    has listed state machines and described / registered AWS Batch job definitions for the steps before it.
    This pins that limit: AWS Batch multi-node runs go through ``run`` (Metaflow's own runtime)."""
    env = {**s3_datastore, "AWS_ENDPOINT_URL_SFN": s3_endpoint, "AWS_ENDPOINT_URL_BATCH": s3_endpoint,
           "METAFLOW_BATCH_JOB_QUEUE": _batch_queue(s3_endpoint),
           "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": "arn:aws:iam::123456789012:role/task",
           "METAFLOW_SFN_IAM_ROLE": "arn:aws:iam::123456789012:role/sfn"}  # fmt: skip
    cluster = {**CLUSTER, "backend": "batch", "secrets": []}
    result = run_flow(tmp_path, "--datastore", "s3", "--config-value", "cluster", json.dumps(cluster),
                      "step-functions", "create", "--only-json", env=env, timeout=300)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "Deploying flows with @parallel decorator(s) to AWS Step Functions is not supported currently." in out
    )
    assert SECRET not in out


def test_cluster_config_retry_backoff_and_secrets():
    from flows.cluster import ClusterConfigError, parse_cluster

    default = parse_cluster("")
    assert (default["retry_backoff_s"], default["retry_backoff_minutes"], default["secrets"]) == (120, 2, [])
    assert parse_cluster('{"retry_backoff_s": 61}')["retry_backoff_minutes"] == 2  # whole minutes, rounded up
    assert parse_cluster('{"retry_backoff_s": 0}')["retry_backoff_minutes"] == 0
    with pytest.raises(ClusterConfigError, match=r"retry_backoff_s must be seconds in \[0, 86400\], got -1"):
        parse_cluster('{"retry_backoff_s": -1}')
    with pytest.raises(ClusterConfigError, match="secrets must be a list of secret names"):
        parse_cluster('{"secrets": "mlflow"}')
