"""Real MLflow backends for tests: a real `mlflow server` process on 127.0.0.1 with a sqlite store."""

from __future__ import annotations

import contextlib
import sys
import uuid
from pathlib import Path

from tests.server_helpers import free_port, local_server


@contextlib.contextmanager
def mlflow_server(
    root: Path,
    timeout_s: float = 120.0,
    *,
    artifacts_destination: str | None = None,
    env: dict | None = None,
    admin_password: str | None = None,
):
    """Start `mlflow server` on 127.0.0.1 with a sqlite backend under ``root``; yield its URI.

    ``artifacts_destination``: where the server stores artifacts (it proxies them; default a folder under
    ``root``), e.g. ``s3://bucket/prefix`` with ``env`` naming the S3 endpoint and credentials.
    ``admin_password``: run the ``basic-auth`` app, every request then needs user ``admin`` and it.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", artifacts_destination or str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = dict(env or {})
    if admin_password is not None:
        config = root / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{root / 'auth.db'}\nadmin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        cmd += ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
                   MLFLOW_FLASK_SERVER_SECRET_KEY=uuid.uuid4().hex)  # CSRF key the auth app requires  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    # /health answers without credentials, also on the basic-auth app.
    with local_server(cmd, f"{uri}/health", root / "server.log", env=env, timeout_s=timeout_s):
        yield uri
