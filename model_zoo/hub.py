"""Find the safetensors files of a checkpoint: a local file, a local folder, or a Hub id (downloaded).

Everything here reduces a user's "path or Hub id" to a list of local safetensors files, so that
`checkpoint.py` only ever reads local files. Pickle formats (.bin/.pt/.pth/.ckpt) are refused here:
unpickling can run arbitrary code, and they are never fetched from the Hub either.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Pickle-based weights are never fetched (and never loaded): only safetensors and the JSON beside them.
HUB_ALLOW_PATTERNS = ("*.safetensors", "*.json")

# "owner/name" with the characters the Hub allows in repo ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CheckpointError(ValueError):
    """A checkpoint cannot be (fully) loaded into the model; the message says why (or holds the report)."""


class HubUnavailableError(RuntimeError):
    """A Hub checkpoint could not be fetched (offline, not cached, missing repo or revision)."""


def looks_like_hub_id(text: str) -> bool:
    """True for strings shaped like a Hub repo id ("owner/name"); says nothing about existence."""
    return bool(_HUB_ID.match(text)) and ".." not in text


def download_checkpoint(
    repo_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Fetch (or reuse from the cache) the safetensors + JSON files of a Hub model repo.

    Honours `HF_HUB_OFFLINE`: offline, only the local Hub cache is consulted.

    Args:
        repo_id: Hub model id, e.g. "lerobot/pi05_base".
        revision: branch, tag or commit; None means the default branch.
        cache_dir: Hub cache folder; None means the Hub default (`HF_HUB_CACHE`).

    Returns:
        The local snapshot folder.

    Raises:
        HubUnavailableError: the files cannot be obtained; the message says how to fix it.
    """
    # Imported lazily: the Hub client is only needed for Hub ids, and reading constants at call time
    # picks up an HF_HUB_OFFLINE changed after import (tests, notebooks).
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(HUB_ALLOW_PATTERNS)
        )
    except GatedRepoError as err:
        raise HubUnavailableError(
            f"Hub checkpoint {where} is gated: accept its licence on huggingface.co and log in "
            f"(`hf auth login` or HF_TOKEN). ({err})"
        ) from err
    except RevisionNotFoundError as err:
        raise HubUnavailableError(f"Hub checkpoint {where}: revision not found. ({err})") from err
    except RepositoryNotFoundError as err:
        raise HubUnavailableError(
            f"Hub checkpoint {where}: no such model repo (or it is private and you are not logged in). "
            f"Check the id, or pass a local folder holding model.safetensors. ({err})"
        ) from err
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        offline = constants.HF_HUB_OFFLINE
        state = (
            "HF_HUB_OFFLINE is set and it is not in the local Hub cache"
            if offline
            else "the Hub is unreachable"
        )
        raise HubUnavailableError(
            f"Cannot fetch Hub checkpoint {where}: {state}. Fix: set HF_HUB_OFFLINE=0 on a machine with "
            f"network access, or pre-download it there (`hf download {repo_id} --include '*.safetensors' "
            f"'*.json'`) into the Hub cache{f' ({cache_dir})' if cache_dir else ''}, or pass a local folder "
            f"holding model.safetensors instead of the Hub id. ({type(err).__name__}: {err})"
        ) from err
    return Path(folder)


# ---------------------------------------------------------------------------------------------- locate


def _refuse_pickle(paths: list[Path]) -> CheckpointError:
    names = ", ".join(str(p) for p in paths[:5])
    return CheckpointError(
        f"Refusing to load pickle-based weights ({names}): unpickling can run arbitrary code. Only safetensors "
        f"are loaded. Convert them once, in an environment you trust, e.g. "
        f"`safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')`."
    )


def _weight_files_in(folder: Path) -> list[Path]:
    """The safetensors file(s) of the checkpoint in `folder` (one file, or the shards of an index)."""
    for index in [folder / WEIGHTS_INDEX_NAME, *sorted(folder.glob("*.safetensors.index.json"))]:
        if index.is_file():
            return _weight_files_in_index(index)
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    found = sorted(p for p in folder.glob("*.safetensors") if p.name != ADAPTER_WEIGHTS_NAME)
    if len(found) == 1:
        return found
    if len(found) > 1:
        raise CheckpointError(
            f"{folder} holds several safetensors files {[p.name for p in found]} and no {WEIGHTS_INDEX_NAME}; "
            "pass the file to load"
        )
    # LeRobot training runs keep the weights one level down (checkpoints/<step>/pretrained_model/).
    if (folder / "pretrained_model").is_dir():
        return _weight_files_in(folder / "pretrained_model")
    if (folder / ADAPTER_WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"{folder} holds a LoRA adapter, not full weights; use model_zoo.lora.load_adapter"
        )
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise _refuse_pickle(pickles)
    raise CheckpointError(f"No {WEIGHTS_NAME} (or other safetensors weights) in {folder}")


def resolve_weight_files(
    path_or_hub_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Local safetensors file(s) for a local file, local folder or Hub id (downloaded if needed)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise _refuse_pickle([path])
        if path.name.endswith(".safetensors.index.json"):
            return _weight_files_in_index(path)
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file (nor a .safetensors.index.json)")
        return [path]
    if path.is_dir():
        return _weight_files_in(path)
    text = str(path_or_hub_id)
    if looks_like_hub_id(text):
        return _weight_files_in(download_checkpoint(text, revision=revision, cache_dir=cache_dir))
    raise CheckpointError(
        f"{text!r} is neither an existing file or folder nor a Hub id of the form 'owner/name'"
    )


def _weight_files_in_index(index: Path) -> list[Path]:
    """The shard files named by a `*.safetensors.index.json` (all must exist)."""
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no 'weight_map'; it is not a safetensors shard index")
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    absent = [str(s) for s in shards if not s.is_file()]
    if absent:
        raise CheckpointError(f"{index} names shard(s) that do not exist: {absent[:5]}")
    return shards
