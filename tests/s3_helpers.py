"""A real S3-compatible server for tests: moto's standalone server on 127.0.0.1, spoken to by boto3."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.mlflow_helpers import free_port

# Fake credentials for the local server; a test run must never reach real AWS.
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


@contextlib.contextmanager
def s3_server(root: Path, timeout_s: float = 60.0):
    """Start ``moto_server`` on a free 127.0.0.1 port; yield its endpoint URL."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "s3-server.log", "wb")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **S3_TEST_ENV})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {(root / 's3-server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start in {timeout_s}s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def upload_folder(client, bucket: str, prefix: str, folder: Path) -> int:
    """Put every file under ``folder`` at ``s3://bucket/prefix/<relative path>``; returns the count."""
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
        count += 1
    return count
