"""The ManiSkill3 venv: mani-skill and its motion planner pin numpy 1.26, the main environment has numpy 2.

mplib 0.1.1 (the planner the shipped solutions use) segfaults under numpy 2, and mani-skill 3.0.1 declares
numpy < 2; with numpy 1.26, opencv-python must stay below 4.12. So ManiSkill runs in
``~/.cache/vla-sft/maniskill-venv`` (``$VLA_SFT_MANISKILL_VENV`` overrides), in simulator worker processes
(``steps.sim.worker``); the project itself is not installed there (the worker runs from the repository on
PYTHONPATH and imports only the numpy-only simulator modules and ``steps.sim.maniskill``).

    python -m steps.sim.maniskill.venv      # build it (once; about 3 minutes and 6 GB, torch included)

SAPIEN also needs a Vulkan device, on a CPU Mesa's lavapipe from Mesa 25 on: ``check_vulkan`` tests it in
a second and fails in one line naming the package (``bash .ci/install_system_packages.sh`` installs it).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = (
    "mani-skill==3.0.1",
    "sapien==3.0.3",
    "mplib==0.1.1",
    "numpy==1.26.4",
    "opencv-python<4.12",
    "scipy",
    "torch",
)
_CHECK = "import numpy, scipy, mplib, sapien, mani_skill.envs; assert numpy.__version__.startswith('1.')"
_VULKAN_CHECK = "import sapien; sapien.render.RenderSystem(sapien.Device('cpu'))"
VULKAN_HINT = (
    "no Vulkan device SAPIEN accepts (ManiSkill3 renders through Vulkan): install mesa-vulkan-drivers >= 25 "
    "(Debian 12: from bookworm-backports; `bash .ci/install_system_packages.sh` does it)"
)


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "vla-sft" / "maniskill-venv"
    return Path(os.environ.get("VLA_SFT_MANISKILL_VENV", default)).expanduser()


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def _works(python: Path) -> bool:
    if not python.is_file():
        return False
    try:
        return subprocess.run([str(python), "-c", _CHECK], capture_output=True, timeout=300).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def is_ready() -> bool:
    """True when the venv exists and imports ManiSkill (no build)."""
    return _works(venv_python())


def require_python() -> str:
    """The venv's python; RuntimeError with the command that builds it when it is missing (no build here:
    an evaluation or a fetch never installs packages behind the user's back)."""
    python = venv_python()
    if not _works(python):
        raise RuntimeError(
            f"{venv_dir()}: no working ManiSkill venv; build it once with `python -m steps.sim.maniskill.venv`"
        )
    return str(python)


def ensure_venv(log=print) -> str:
    """The venv's python, building the venv first if it is missing or broken (needs PyPI)."""
    venv, python = venv_dir(), venv_python()
    if _works(python):
        return str(python)
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Another process may be building it at the same moment: one builder, the others wait.
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _works(python):
            log(f"[maniskill] building {venv} ({', '.join(REQUIREMENTS)})")
            shutil.rmtree(venv, ignore_errors=True)
            base = shutil.which("python3.11") or sys.executable
            subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True, timeout=600
            )
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True, timeout=3600
            )
    if not _works(python):
        raise RuntimeError(f"{venv}: ManiSkill does not import after installing {REQUIREMENTS}")
    return str(python)


def check_vulkan(python: str | None = None) -> None:
    """RuntimeError (one line naming the package) unless SAPIEN can open its CPU render device."""
    python = python or require_python()
    proc = subprocess.run([python, "-c", _VULKAN_CHECK], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{VULKAN_HINT}; SAPIEN said: {last}")


if __name__ == "__main__":
    print(ensure_venv())
    check_vulkan()
    print("Vulkan: ok")
