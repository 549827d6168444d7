"""Download a checkpoint folder from the Hugging Face Hub (safetensors and JSON only).

Kept apart from `checkpoint.py` so the loading logic can be read (and tested) without the network:
everything here reduces a Hub id to a local folder, and `checkpoint.py` only ever reads local files.
"""

from __future__ import annotations

import re
from pathlib import Path

# Pickle-based weights are never fetched (and never loaded): only safetensors and the JSON beside them.
HUB_ALLOW_PATTERNS = ("*.safetensors", "*.json")

# "owner/name" with the characters the Hub allows in repo ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
