"""Test-session environment: headless rendering, no network, a Metaflow user name."""

import os

# Before anything imports mujoco: otherwise it falls back to a windowed GL backend that fails headless.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USERNAME", os.environ.get("USER", "vla-sft-tests"))
