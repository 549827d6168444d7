"""Local server processes for tests: a free 127.0.0.1 port, start, wait until it answers, stop."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_server(
    cmd: Sequence[str], probe_url: str, log_path: Path, *, env: dict | None = None, timeout_s: float = 90.0
) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` (output to ``log_path``) until ``probe_url`` answers; stop it on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        list(cmd), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(probe_url, timeout=2):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd)} did not answer {probe_url} in {timeout_s}s")
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
