"""Inputs a run needs besides a fetched dataset: the prompt tokenizer, and the ``--demo`` dataset.

Tokenizer specs (``--tokenizer``):

- ``tiny``: a small SentencePiece model trained offline and deterministically (tests, ``--demo``);
- a local ``.model`` file;
- ``https://...``: downloaded once into the cache (default: PaliGemma's public tokenizer, as openpi
  uses it; about 4 MB);
- ``hf://<org>/<repo>/<file>[@revision]``: a file of a Hub model repo (``HF_TOKEN`` from the environment).

The demo dataset: for Meta-World config types, the expert demonstrations shipped with the repository
(``steps.sim.metaworld.demonstrations.DEMO_DATASET``: 3 tasks x 5 episodes, real renders), named
``demo://metaworld_demo``; for LIBERO config types, scripted reach-and-grasp episodes rendered in LIBERO
with openpi's conventions, shipped too (``demo://libero_demo``: 1 libero_spatial task x 6 episodes, 128²,
regenerated with ``python -m steps.sim.libero.demonstrations``); for ManiSkill ones the motion-planned
PickCube-v1 demonstrations (``demo://maniskill_demo``); for the others a small synthetic LeRobot v3.0
dataset in the config type's schema (``data_adapters.synthetic``), cached by a key of everything that
shapes it, named ``demo://synthetic/<config type>`` with that key as its revision. The name is what
MLflow (params, tags, dataset input), the model card and the registered version's tags show.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

PALIGEMMA_TOKENIZER_URL = "https://storage.googleapis.com/big_vision/paligemma_tokenizer.model"
TINY_TOKENIZER = "tiny"
TINY_VOCAB = 512
# Demo dataset shape: enough frames for a few batches and held-out episodes, small images.
DEMO_EPISODES = 8
DEMO_LENGTH = (16, 24)
DEMO_IMAGE_SIZE = 32
DEMO_GENERATOR_VERSION = 1  # bump when the demo data change for the same config type


def default_cache_dir() -> Path:
    """``$VLA_SFT_CACHE`` or ``~/.cache/vla-sft``."""
    from steps.cache import default_cache_root

    return default_cache_root()


def check_tokenizer_spec(spec: str) -> None:
    """Raise ValueError (naming --tokenizer) for a spec that cannot work; no download."""
    if spec == TINY_TOKENIZER or spec.startswith(("https://", "http://")):
        return
    if spec.startswith("hf://"):
        if len(spec[len("hf://") :].split("@")[0].split("/")) < 3:
            raise ValueError(f"--tokenizer: {spec!r} must look like hf://<org>/<repo>/<file>[@revision]")
        return
    if not Path(spec).expanduser().is_file():
        raise ValueError(f"--tokenizer: {spec} is not a file, 'tiny', an https:// URL or an hf:// path")


def resolve_tokenizer(spec: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local SentencePiece model file for ``spec`` (downloading or training it once)."""
    check_tokenizer_spec(spec)
    cache = Path(cache_dir or default_cache_dir()) / "tokenizers"
    if spec == TINY_TOKENIZER:
        from data_adapters.tokenizer import train_tiny_tokenizer

        path = cache / f"tiny-{TINY_VOCAB}.model"
        if not path.is_file():
            _atomic_write(path, lambda tmp: train_tiny_tokenizer(tmp, vocab_size=TINY_VOCAB))
        return path
    if spec.startswith(("https://", "http://")):
        digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
        path = cache / f"{digest}-{Path(spec.split('?')[0]).name}"
        if not path.is_file():

            def download(tmp: Path) -> None:
                with urllib.request.urlopen(spec, timeout=60) as response, open(tmp, "wb") as out:
                    shutil.copyfileobj(response, out)

            _atomic_write(path, download)
        return path
    if spec.startswith("hf://"):
        from huggingface_hub import hf_hub_download

        ref, _, revision = spec[len("hf://") :].partition("@")
        org, repo, filename = ref.split("/", 2)
        return Path(hf_hub_download(f"{org}/{repo}", filename, revision=revision or None))
    return Path(spec).expanduser().resolve()


SHIPPED_DEMO_PREFIX = "demo://"  # + the folder's name under data_adapters/demo_data
SYNTHETIC_DEMO_PREFIX = "demo://synthetic/"


def demo_dataset_id(cfg) -> str:
    """The name of ``cfg``'s demo dataset: a shipped simulator dataset, or synthetic data for ``cfg``."""
    shipped = shipped_demo_dataset(cfg)
    return (
        f"{SHIPPED_DEMO_PREFIX}{shipped.name}"
        if shipped is not None
        else f"{SYNTHETIC_DEMO_PREFIX}{cfg.name}"
    )


def shipped_demo_folder(dataset_id: str) -> Path | None:
    """The shipped folder a ``demo://<name>`` id names (``data_adapters/demo_data/<name>``); None otherwise."""
    from data_adapters.lerobot_format import INFO_PATH

    if not dataset_id.startswith(SHIPPED_DEMO_PREFIX) or dataset_id.startswith(SYNTHETIC_DEMO_PREFIX):
        return None
    folder = (
        Path(__file__).resolve().parents[2]
        / "data_adapters"
        / "demo_data"
        / dataset_id[len(SHIPPED_DEMO_PREFIX) :]
    )
    return folder if (folder / INFO_PATH).is_file() else None


def check_demo_dataset_id(dataset_id: str, cfg) -> None:
    """ValueError (naming --dataset) for a ``demo://`` name that is not ``cfg``'s demo dataset."""
    if dataset_id != demo_dataset_id(cfg):
        raise ValueError(f"--dataset: {dataset_id!r} is not a demo dataset of config type {cfg.name!r}; "
                         f"its demo dataset is {demo_dataset_id(cfg)!r}")  # fmt: skip


def synthetic_demo_key(cfg) -> str:
    """The cache key (and revision) of ``cfg``'s synthetic demo dataset: a hash of what shapes it."""
    shape = {
        "config_type": cfg.to_dict(),
        "episodes": DEMO_EPISODES,
        "length": DEMO_LENGTH,
        "image_size": DEMO_IMAGE_SIZE,
        "version": DEMO_GENERATOR_VERSION,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:12]


def demo_dataset(cfg, cache_dir: str | os.PathLike | None = None) -> Path:
    """The demo dataset for config type ``cfg``: shipped Meta-World demos, or synthetic (cached)."""
    shipped = shipped_demo_dataset(cfg)
    return shipped if shipped is not None else synthetic_demo_dataset(cfg, cache_dir)


def shipped_demo_dataset(cfg) -> Path | None:
    """The repository's simulator demos (Meta-World experts, LIBERO scripted episodes, ManiSkill motion-planned
    episodes) when ``cfg`` is a type of that simulator that fits them."""
    from data_adapters.config_types import validate_against_dataset
    from data_adapters.lerobot_format import INFO_PATH

    if cfg.simulator == "metaworld":
        from steps.sim.metaworld.demonstrations import DEMO_DATASET
    elif cfg.simulator == "libero":
        from steps.sim.libero.demonstrations import DEMO_DATASET
    elif cfg.simulator == "maniskill":
        from steps.sim.maniskill.demonstrations import DEMO_DATASET
    else:
        return None
    info = DEMO_DATASET / INFO_PATH
    if not info.is_file():
        return None
    try:
        validate_against_dataset(cfg, json.loads(info.read_text()))
    except ValueError:
        return None  # a custom simulator type with another schema: use synthetic data instead
    return DEMO_DATASET


def synthetic_demo_dataset(cfg, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached synthetic demo dataset for config type ``cfg`` (generated on first use)."""
    from data_adapters.lerobot_format import INFO_PATH
    from data_adapters.synthetic import make_synthetic_dataset

    key = synthetic_demo_key(cfg)
    root = Path(cache_dir or default_cache_dir()) / "demo_datasets" / f"{cfg.name}-{key}"
    if (root / INFO_PATH).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        make_synthetic_dataset(staging / "data", cfg, num_episodes=DEMO_EPISODES, min_len=DEMO_LENGTH[0],
                               max_len=DEMO_LENGTH[1], image_size=DEMO_IMAGE_SIZE, seed=0)  # fmt: skip
        try:
            os.replace(staging / "data", root)
        except OSError:
            if not (root / "meta" / "info.json").is_file():  # lost a race to an identical copy: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def fetch_run_dataset(rc, cache_dir: str | os.PathLike | None = None):
    """``steps.fetch.dataset.fetch_dataset`` for a run config: the demo dataset, a generated ``metaworld://``,
    ``libero://`` or ``maniskill://`` dataset, a Hub id, an S3 prefix or a local folder, with
    ``rc.eval.episodes`` held out."""
    from steps.fetch.dataset import fetch_dataset

    cfg, kind, dataset = rc.config_type, rc.data.dataset_kind, rc.data.dataset
    if kind == "demo":
        dataset = str(demo_dataset(cfg, cache_dir))
    elif kind == "metaworld":
        from steps.sim.metaworld.demonstrations import fetch_metaworld

        dataset = str(fetch_metaworld(dataset))
    elif kind == "libero":
        from steps.sim.libero.demonstrations import fetch_libero

        dataset = str(fetch_libero(dataset))
    elif kind == "maniskill":
        from steps.sim.maniskill.demonstrations import fetch_maniskill

        dataset = str(fetch_maniskill(dataset))
    result = fetch_dataset(
        cfg, dataset=dataset, revision=rc.data.dataset_revision, val_episodes=rc.eval.episodes
    )
    if kind not in ("demo", "metaworld", "libero", "maniskill"):
        return result
    # Named as the run names it (not by the cache folder it was read from); a synthetic demo's revision is the
    # key of what generated it.
    revision = synthetic_demo_key(cfg) if rc.data.dataset.startswith(SYNTHETIC_DEMO_PREFIX) else None
    return dataclasses.replace(result, dataset_id=rc.data.dataset, source=kind, revision=revision)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
