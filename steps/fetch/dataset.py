"""Fetch step: resolve a dataset (local folder, Hub id or s3:// URI), check it fits the config type, split.

    python -m steps.fetch.dataset --config_type pi05_metaworld                # the type's default dataset
    python -m steps.fetch.dataset --config_type pi0_libero --dataset /data/libero --val_fraction 0.05

A Hub id is downloaded with ``huggingface_hub.snapshot_download(repo_type="dataset")`` into the Hugging
Face cache (``cache_dir``, default ``$HF_HUB_CACHE``) and pinned: the result records the commit hash, so
a later run with that revision reads the very same files. With ``HF_HUB_OFFLINE=1`` (or no network) a
cached snapshot is used; a dataset that is not cached fails with an error saying how to fix it. An
``s3://`` URI is downloaded once per content version into ``$VLA_SFT_CACHE/datasets`` and pinned the same
way (:mod:`steps.fetch.s3`).
The result (path, codebase version, fingerprint, train/validation episodes, dataset id, revision) is a
small JSON-able record, used as a flow artifact.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.errors import UserError

# owner/name on the Hub (letters, digits, "-", "_", "."), nothing else.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class FetchResult:
    """Where the dataset is and how it is split (all fields JSON-able)."""

    # Local dataset root (for a Hub id: the pinned snapshot folder in the HF cache).
    path: str
    # LeRobot codebase version: "v2.0", "v2.1" or "v3.0".
    version: str
    # Stable hash of the metadata and data/video file names and sizes (lerobot_format.fingerprint).
    fingerprint: str
    train_episodes: list[int]
    val_episodes: list[int]
    # Hub id or s3:// URI, or the local path as given.
    dataset_id: str
    # Commit hash of the snapshot (Hub), listing digest (S3), or None for a local folder.
    revision: str | None
    # "hub", "s3" or "local" ("demo" / "metaworld" for those, see steps.fetch.run_inputs.fetch_run_dataset).
    source: str
    num_episodes: int
    num_frames: int
    fps: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fetch_dataset(
    cfg: Any,
    *,
    dataset: str | os.PathLike | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    val_episodes: int | None = None,
    s3_cache_dir: str | os.PathLike | None = None,
    check_files: bool = True,
) -> FetchResult:
    """Resolve, validate and split the dataset for config type ``cfg``.

    Args:
        cfg: a ConfigType, or a config type name / YAML path.
        dataset: local folder, Hub id or ``s3://bucket/prefix`` (default: the config type's dataset).
        revision: Hub branch, tag or commit (default: the config type's, else the latest commit); for
            S3, the snapshot digest a run recorded (see :mod:`steps.fetch.s3`).
        cache_dir: Hugging Face cache folder for Hub datasets (default: huggingface_hub's).
        s3_cache_dir: where S3 snapshots go (default: ``$VLA_SFT_CACHE/datasets``).
        val_fraction: share of episodes held out for validation (deterministic for a seed).
        seed: split seed.
        val_episodes: hold out exactly this many episodes instead (overrides ``val_fraction``).
        check_files: prove that every data and video file opens and covers its episodes
            (:mod:`steps.fetch.verify`; files unchanged since a previous check are skipped).

    Raises:
        UserError (a ValueError; ``DatasetFormatError`` for the files): no dataset known for the config type (e.g. ManiSkill: the message points to the
            custom YAML route), a missing folder, a Hub dataset that cannot be reached (the message says
            how to fix it), a dataset that is not LeRobot v2.0/v2.1/v3.0 or lacks the config type's keys
            and dims, a split that leaves no training episode, or a data or video file that does not open
            or is cut short.
    """
    from data_adapters.config_types import ConfigType, require_dataset, validate_against_dataset
    from data_adapters.lerobot_format import DatasetFormatError, fingerprint, read_meta, split_episodes
    from data_adapters.registry import get_config_type

    cfg = cfg if isinstance(cfg, ConfigType) else get_config_type(str(cfg))
    try:
        spec, revision = require_dataset(cfg, str(dataset) if dataset is not None else None, revision)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    local = Path(spec).expanduser()
    if spec.startswith("s3://"):
        from steps.fetch.s3 import fetch_s3_dataset

        snapshot = fetch_s3_dataset(spec, revision, s3_cache_dir)
        root, source, pinned = snapshot.path, "s3", snapshot.revision
    elif local.exists():
        if not local.is_dir():
            raise UserError(f"dataset {spec!r} is a file; expected a LeRobot dataset folder")
        root, source, pinned = local.resolve(), "local", None
    elif _HUB_ID.match(spec) and not spec.startswith((".", "~")):
        root, source = _download(spec, revision, cache_dir), "hub"
        pinned = root.name  # the snapshot folder is named after its commit hash
    else:
        raise UserError(f"dataset {spec!r}: no such folder, and not a Hub id of the form 'owner/name'")

    meta = read_meta(root)
    try:
        validate_against_dataset(cfg, meta.info)
    except DatasetFormatError:
        raise
    except ValueError as exc:
        raise UserError(f"dataset {root} does not match config type {cfg.name!r}: {exc}") from None
    indices = list(meta.episodes)
    if val_episodes is not None:
        if not isinstance(val_episodes, int) or not 0 <= val_episodes < len(indices):
            raise UserError(f"val_episodes must be an integer in 0..{len(indices) - 1} (the dataset has "
                             f"{len(indices)} episodes and training needs one), got {val_episodes!r}")  # fmt: skip
        val_fraction = val_episodes / len(indices)
    train, val = split_episodes(indices, val_fraction, seed)
    if check_files:
        from steps.fetch.verify import verify_dataset_files

        print(f"dataset {root}: {verify_dataset_files(meta).line()}", file=sys.stderr)
    return FetchResult(
        path=str(root),
        version=meta.version,
        fingerprint=fingerprint(root),
        train_episodes=train,
        val_episodes=val,
        dataset_id=spec,
        revision=pinned,
        source=source,
        num_episodes=len(indices),
        num_frames=meta.total_frames,
        fps=meta.fps,
    )


def _download(repo_id: str, revision: str | None, cache_dir) -> Path:
    """snapshot_download with errors that say what to do."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from steps.progress import hub_progress_class

    where = f"Hub dataset {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    try:
        # tqdm_class: the Hub's progress bars as lines every 10 s (in a flow task it sees no terminal).
        path = snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision,
                                 cache_dir=str(cache_dir) if cache_dir is not None else None,
                                 tqdm_class=hub_progress_class())  # fmt: skip
    except LocalEntryNotFoundError as err:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise UserError(
            f"{where} is not in the Hugging Face cache {cache} and the Hub cannot be reached{offline}. "
            f"Fix: run once with network access (and HF_HUB_OFFLINE unset) to download it into the cache; "
            f"or point --cache_dir / HF_HUB_CACHE at a cache that holds it; or pass --dataset "
            f"/path/to/a/local/copy. ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err
    except GatedRepoError as err:
        raise UserError(f"{where} is gated: accept its terms on the Hub and set HF_TOKEN ({err})") from err
    except RevisionNotFoundError as err:
        raise UserError(f"{where}: the revision does not exist ({err})") from err
    except RepositoryNotFoundError as err:
        raise UserError(f"{where} does not exist (or is private: set HF_TOKEN) ({err})") from err
    except HfHubHTTPError as err:  # may pass on a retry: not a user error
        raise ValueError(f"{where} could not be downloaded: {err}") from err
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steps.fetch.dataset", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config_type", required=True, help="built-in config type name or a .yaml file")
    parser.add_argument("--dataset", help="local folder, Hub id or s3:// URI (default: the config type's)")
    parser.add_argument("--revision", help="Hub branch, tag or commit (default: latest)")
    parser.add_argument("--cache_dir", help="Hugging Face cache folder (default: $HF_HUB_CACHE)")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--val_episodes", type=int, help="hold out exactly this many episodes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        result = fetch_dataset(args.config_type, dataset=args.dataset, revision=args.revision,
                               cache_dir=args.cache_dir, val_fraction=args.val_fraction, seed=args.seed,
                               val_episodes=args.val_episodes)  # fmt: skip
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
