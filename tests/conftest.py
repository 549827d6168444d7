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
