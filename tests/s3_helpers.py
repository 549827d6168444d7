"""A real S3-compatible server for tests: moto's standalone server on 127.0.0.1, spoken to by boto3."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from tests.server_helpers import free_port, local_server

# Fake credentials for the local server; a test run must never reach real AWS.
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


@contextlib.contextmanager
def s3_server(root: Path, timeout_s: float = 60.0):
    """Start moto's server on a free 127.0.0.1 port; yield its endpoint URL."""
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    with local_server(cmd, f"{url}/moto-api/", root / "s3-server.log", env=S3_TEST_ENV, timeout_s=timeout_s):
        yield url


def upload_folder(client, bucket: str, prefix: str, folder: Path) -> int:
    """Put every file under ``folder`` at ``s3://bucket/prefix/<relative path>``; returns the count."""
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
        count += 1
    return count
