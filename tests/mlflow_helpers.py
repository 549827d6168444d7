"""Real MLflow backends for tests: a real `mlflow server` process on 127.0.0.1 with a sqlite store."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from tests.server_helpers import free_port, local_server


@contextlib.contextmanager
def mlflow_server(root: Path, timeout_s: float = 90.0):
    """Start `mlflow server` on 127.0.0.1 with a sqlite backend under ``root``; yield its URI."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    with local_server(cmd, f"{uri}/health", root / "server.log", timeout_s=timeout_s):
        yield uri
