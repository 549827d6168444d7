"""The real openpi-client in its own cached venv, and a way to drive it from the main environment.

openpi-client 0.1.2 declares numpy < 2 (the main environment has numpy 2) and imports
typing_extensions without declaring it, so it lives in ``~/.cache/vla-sft/openpi-client-venv``
(``$VLA_SFT_OPENPI_CLIENT_VENV`` overrides), built on first use and reused after:

    python -m tests.openpi_client_venv        # build it now (.ci/run does, before the tests)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

OPENPI_CLIENT_REQUIREMENTS = ("openpi-client==0.1.2", "typing_extensions")
PROBE = Path(__file__).with_name("openpi_probe.py")
_CHECK = "import numpy, typing_extensions, openpi_client.websocket_client_policy; print(numpy.__version__)"


def client_venv() -> Path:
    default = Path.home() / ".cache" / "vla-sft" / "openpi-client-venv"
    return Path(os.environ.get("VLA_SFT_OPENPI_CLIENT_VENV", default))


def _works(python: Path) -> bool:
    if not python.is_file():
        return False
    return subprocess.run([str(python), "-c", _CHECK], capture_output=True, timeout=120).returncode == 0


def client_python() -> str:
    """The venv's python, building the venv first if it is missing or broken."""
    venv = client_venv()
    python = venv / "bin" / "python"
    if _works(python):
        return str(python)
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Another test session may be building it at the same moment: one builder, the others wait.
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _works(python):
            shutil.rmtree(venv, ignore_errors=True)
            base = shutil.which("python3.11") or sys.executable
            subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *OPENPI_CLIENT_REQUIREMENTS], check=True,
                           timeout=900)  # fmt: skip
    if not _works(python):
        raise RuntimeError(
            f"{venv}: openpi-client does not import after installing {OPENPI_CLIENT_REQUIREMENTS}"
        )
    return str(python)


def run_probe(
    job: Mapping[str, Any], arrays: Mapping[str, np.ndarray], workdir: Path, *, timeout_s: float = 600
) -> tuple[dict, dict[str, np.ndarray]]:
    """Run ``openpi_probe.py`` with ``job`` (see its docstring) in the client venv.

    Returns the probe's result.json and the actions it received, by request id.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    np.savez(workdir / "arrays.npz", **arrays)
    (workdir / "job.json").write_text(json.dumps({**job, "arrays": "arrays.npz"}))
    out = workdir / "out"
    proc = subprocess.run([client_python(), str(PROBE), str(workdir / "job.json"), str(out)], capture_output=True,
                          text=True, timeout=timeout_s)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"openpi probe failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads((out / "result.json").read_text())
    actions: dict[str, np.ndarray] = {}
    with contextlib.suppress(FileNotFoundError), np.load(out / "actions.npz", allow_pickle=False) as npz:
        actions = {name: npz[name] for name in npz.files}
    return result, actions


if __name__ == "__main__":
    print(client_python())
