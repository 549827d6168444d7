"""Test-session environment: headless rendering, no network, a Metaflow user name."""

import os

# Before anything imports mujoco: otherwise it falls back to a windowed GL backend that fails headless.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USERNAME", os.environ.get("USER", "vla-sft-tests"))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3-compatible server (moto) on 127.0.0.1 for the session; started only when asked for."""
    from tests.s3_helpers import s3_server

    with s3_server(tmp_path_factory.mktemp("s3-server")) as url:
        yield url


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """boto3 pointed at the test server (fake credentials, AWS_ENDPOINT_URL_S3); returns a client."""
    import boto3

    from tests.s3_helpers import S3_TEST_ENV

    for name, value in {**S3_TEST_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return boto3.client("s3")


@pytest.fixture(scope="session")
def demo_registered_model(tmp_path_factory):
    """A real ``run --demo`` (4 steps, no rollouts), its registered version promoted to ``champion``
    with ``steps.promote``; built once per session, only when a test asks for it.

    Returns {"root", "tracking_uri", "name", "version", "model_uri": "models:/<name>@champion"}.
    """
    from steps.registry.promote import promote
    from tests.test_flow import inspect_run, run_flow

    root = tmp_path_factory.mktemp("demo-registered")
    result = run_flow(root, "run", "--demo", "--max_steps", "4", "--sim_episodes", "0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = inspect_run(root)["model_version"]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    promote(version["name"], version["version"], to="champion", reason="test fixture", tracking_uri=uri)
    return {"root": root, "tracking_uri": uri, "name": version["name"], "version": str(version["version"]),
            "model_uri": f"models:/{version['name']}@champion"}  # fmt: skip
