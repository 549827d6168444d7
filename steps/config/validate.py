"""Everything the flow's ``start`` step can check in seconds, before any heavy work.

``validate_run_inputs`` takes the command-line values as given and returns the ``RunConfig``
(``steps.config.run_config``) every later step reads: the config type resolved once, the dataset and
where it lives, batch, steps, learning rate, LoRA, evaluation, cluster shape, tracking URI. Each problem
raises ``InputError`` with one line that names the option and the bad value, so the user fixes it
without reading a traceback.

Checked: config type (name or YAML), numeric overrides, LoRA rank (only with --lora), pretrained weights
(a local file's safetensors header, length and pi0 / pi0.5 keys; a Hub id's form), dataset (a local folder
must exist and match the config type's schema; ``metaworld://`` / ``libero://`` URIs must parse, ``maniskill://`` ones too and fit the config type; Hub ids must be cached or
exist on the Hub), held-out episodes against meta/info.json's episode count, global batch divisible by the
world size, every ``--train_options`` value (type, then the TrainConfig's own validation), MLflow
reachability (``steps.config.input_checks`` holds the checks that read files).
No torch, no mlflow import: this runs in the first seconds of a run.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from model_zoo.lora_settings import LoraSettings
from steps.config.input_checks import (
    InputError,
    check_eval_episodes,
    check_pretrained_weights,
    check_train_config,
    check_train_option_types,
    dataset_info,
    yaml_names_dataset,
)
from steps.config.run_config import (
    ClusterSection,
    DataSection,
    EvalSection,
    ModelSection,
    RunConfig,
    TrainSection,
)
from steps.evaluate.settings import check_sim_suite, check_sim_tasks, check_sim_workers, sim_settings
from steps.fetch.run_inputs import (
    PALIGEMMA_TOKENIZER_URL,
    TINY_TOKENIZER,
    check_tokenizer_spec,
    demo_dataset_id,
)
from steps.train.launch import check_train_options

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEMO_PREFIX = "demo://"  # --demo datasets (steps.fetch.run_inputs.demo_dataset_id names them)
# --demo defaults: a few steps of the tiny model, small batches, frequent checkpoints (for resume).
DEMO_DEFAULTS = {"max_steps": 40, "batch_size": 4, "learning_rate": 1e-3, "eval_samples": 32}
DEFAULT_EVAL_SAMPLES = 256


def _positive(name: str, value: Any, kind=int) -> None:
    if value is None:
        return
    ok = isinstance(value, kind) and not isinstance(value, bool) and value > 0
    if kind is float:
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        )
    if not ok:
        raise InputError(
            f"--{name}: must be a positive {'number' if kind is float else 'integer'}, got {value!r}"
        )


def classify_dataset(dataset: str) -> str:
    """'local' | 's3' | 'metaworld' | 'libero' | 'maniskill' | 'hub' | 'demo' for a --dataset value."""
    if dataset.startswith(DEMO_PREFIX):
        return "demo"
    if dataset.startswith("s3://"):
        return "s3"
    if dataset.startswith("metaworld://"):
        return "metaworld"
    if dataset.startswith("libero://"):
        return "libero"
    if dataset.startswith("maniskill://"):
        return "maniskill"
    if dataset.startswith(("/", "./", "../", "~", "file://")) or Path(dataset).exists():
        return "local"
    if _HUB_ID.match(dataset):
        return "hub"
    return "local"  # neither a URI nor an org/name id: the user meant a path


def check_local_dataset(path: Path, config_type) -> dict:
    """The folder exists, is a LeRobot dataset, and has the keys and dims of the config type; returns its
    meta/info.json."""
    from data_adapters.config_types import validate_against_dataset
    from data_adapters.lerobot_format import INFO_PATH

    if not path.exists():
        raise InputError(f"--dataset: local path {path} does not exist")
    info = path / INFO_PATH
    if not info.is_file():
        raise InputError(f"--dataset: {path} is not a LeRobot dataset (no {INFO_PATH})")
    try:
        meta_info = json.loads(info.read_text())
        validate_against_dataset(config_type, meta_info)
    except (ValueError, KeyError) as exc:
        raise InputError(
            f"--dataset: {path} does not match config type {config_type.name!r}: {exc}"
        ) from None
    return meta_info


def check_hub_dataset(repo_id: str, revision: str | None, timeout_s: float = 10.0) -> str | None:
    """A Hub dataset is in the local cache (returns the snapshot folder), or the Hub answers that it exists
    (one request, short timeout; returns None)."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        # cached: no network needed
        return snapshot_download(
            repo_id=repo_id, repo_type="dataset", revision=revision, local_files_only=True
        )
    except Exception:  # noqa: BLE001 - not cached (any reason): ask the Hub below
        pass
    where = f"Hub dataset {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    if constants.HF_HUB_OFFLINE:
        raise InputError(f"--dataset: {where} is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        HfApi().dataset_info(repo_id, revision=revision, timeout=timeout_s)
    except GatedRepoError:
        raise InputError(
            f"--dataset: {where} is gated: accept its terms on the Hub and set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise InputError(f"--dataset: {where}: the revision does not exist") from None
    except RepositoryNotFoundError:
        raise InputError(f"--dataset: {where} does not exist (or is private: set HF_TOKEN)") from None
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise InputError(
            f"--dataset: {where} is not cached and the Hub cannot be reached ({type(exc).__name__}); "
            "run with network access, or pass a local folder"
        ) from None
    return None


def check_s3_dataset(uri: str, ct, check_remote: bool = True, timeout_s: float = 5.0) -> dict | None:
    """An s3:// dataset: a well-formed URI and, when checking remotely, its meta/info.json read (one
    request, short timeout, no retries), checked against the config type's keys and dims and returned."""
    from data_adapters.config_types import validate_against_dataset
    from steps.fetch import s3 as s3_dataset

    try:
        bucket, prefix = s3_dataset.parse_s3_uri(uri)
        if not check_remote:
            return None
        client = s3_dataset.s3_client(connect_timeout=timeout_s, attempts=1)
        key = "/".join(p for p in (prefix, s3_dataset.INFO_KEY) if p)
        body = s3_dataset.s3_call(uri, client.get_object, Bucket=bucket, Key=key)["Body"].read()
        info = json.loads(body)
        validate_against_dataset(ct, info)
    except ValueError as exc:
        raise InputError(f"--dataset: {_one_line(exc)}") from None
    return info


def _check_pretrained(pretrained: str | None, demo: bool, model_type: str, variant: Any = "real") -> None:
    if pretrained is None:
        return
    if demo:
        raise InputError("--pretrained: not used with --demo (the demo trains the tiny model from scratch)")
    if pretrained.startswith(("/", "./", "../", "~")) or Path(pretrained).exists():
        if not Path(pretrained).expanduser().exists():
            raise InputError(f"--pretrained: local path {pretrained} does not exist")
        from model_zoo.config import MODEL_BUNDLES

        # The model size the weights must fit (--train_options may pick another; a bad name is its own error).
        check_pretrained_weights(pretrained, model_type, variant if variant in MODEL_BUNDLES else "real")
        return
    if "@" in pretrained and _HUB_ID.match(pretrained.split("@")[0]):
        raise InputError(
            f"--pretrained: {pretrained!r}: give the Hub id alone (org/name) and the revision as "
            f'--train_options \'{{"pretrained_revision": "{pretrained.split("@", 1)[1]}"}}\''
        )
    if not _HUB_ID.match(pretrained):
        raise InputError(
            f"--pretrained: {pretrained!r} is neither an existing path nor a Hub id like org/name"
        )


def _check_vla_dataset(kind: str, dataset: str, revision: str | None, ct, check_remote: bool) -> dict | None:
    """Check a VLA dataset as far as its kind allows without reading data; its meta/info.json if known."""
    from steps.fetch.run_inputs import DEMO_EPISODES, check_demo_dataset_id, shipped_demo_dataset

    if kind == "local":
        return check_local_dataset(Path(dataset.removeprefix("file://")).expanduser().resolve(), ct)
    if kind == "metaworld":
        from steps.sim.metaworld.demonstrations import parse_metaworld_uri

        try:
            parse_metaworld_uri(dataset)
        except ValueError as exc:
            raise InputError(f"--dataset: {_one_line(exc)}") from None
        return None  # generated in fetch_data: its episode count is known only then
    if kind == "libero":
        from steps.sim.libero.demonstrations import parse_libero_uri

        try:
            parse_libero_uri(dataset)
        except ValueError as exc:
            raise InputError(f"--dataset: {_one_line(exc)}") from None
        return None
    if kind == "maniskill":
        from steps.sim.maniskill.demonstrations import check_maniskill_source

        try:
            check_maniskill_source(dataset, ct)
        except ValueError as exc:
            raise InputError(f"--dataset: {_one_line(exc)}") from None
        return None
    if kind == "hub" and check_remote:
        snapshot = check_hub_dataset(dataset, revision)
        return dataset_info(snapshot) if snapshot else None
    if kind == "s3":
        return check_s3_dataset(dataset, ct, check_remote)
    if kind == "demo":
        try:
            check_demo_dataset_id(dataset, ct)
        except ValueError as exc:
            raise InputError(_one_line(exc)) from None
        shipped = shipped_demo_dataset(ct)
        return dataset_info(shipped) if shipped else {"total_episodes": DEMO_EPISODES}
    return None


def validate_run_inputs(
    *,
    config_type: str,
    dataset: str | None = None,
    dataset_revision: str | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    lora: bool = False,
    lora_rank: int | None = None,
    pretrained: str | None = None,
    eval_episodes: int = 2,
    eval_samples: int | None = None,
    demo: bool = False,
    nodes: int = 1,
    procs_per_node: int = 1,
    gpus_per_node: int = 0,
    tracking_uri: str | None = None,
    check_tracking: bool = True,
    check_remote: bool = True,
    remote: bool = False,
    tokenizer: str | None = None,
    train_options: dict | None = None,
    sim_episodes: int | None = None,
    sim_max_steps: int | None = None,
    sim_tasks: str | None = None,
    sim_suite: str | None = None,
    sim_workers: int | None = None,
    experiment: str = "vla-sft",
    model_name: str | None = None,
) -> RunConfig:
    """Validate the run's command-line values; return the resolved run config or raise InputError."""
    from data_adapters.config_types import require_dataset
    from data_adapters.registry import get_config_type
    from steps.registry import tracking

    if not config_type:
        raise InputError("--config_type: required (a built-in name such as pi05_metaworld, or a YAML path)")
    given_dataset = dataset
    try:
        ct = get_config_type(config_type)
    except (ValueError, OSError) as exc:
        raise InputError(f"--config_type: {_one_line(exc)}") from None
    is_text = getattr(ct, "kind", None) == "text"

    _positive("max_steps", max_steps)
    _positive("batch_size", batch_size)
    _positive("learning_rate", learning_rate, float)
    _positive("eval_samples", eval_samples)
    _positive("nodes", nodes)
    _positive("procs_per_node", procs_per_node)
    if lora_rank is not None and not lora:
        raise InputError(
            f"--lora_rank {lora_rank}: given without --lora, so it would be ignored; add --lora (LoRA "
            "fine-tuning with that rank) or drop --lora_rank (full fine-tuning)"
        )
    if lora_rank is not None and (
        not isinstance(lora_rank, int) or isinstance(lora_rank, bool) or lora_rank < 1
    ):
        raise InputError(f"--lora_rank: must be an integer >= 1 when --lora is on, got {lora_rank!r}")
    if not isinstance(eval_episodes, int) or eval_episodes < 0:
        raise InputError(f"--eval_episodes: must be an integer >= 0, got {eval_episodes!r}")
    if not is_text:  # text: --pretrained names the base model, with or without --demo
        _check_pretrained(pretrained, demo, ct.model_type, (train_options or {}).get("model_variant", "real"))

    if demo:
        max_steps = max_steps or DEMO_DEFAULTS["max_steps"]
        batch_size = batch_size or DEMO_DEFAULTS["batch_size"]
        learning_rate = learning_rate or DEMO_DEFAULTS["learning_rate"]
        eval_samples = eval_samples or DEMO_DEFAULTS["eval_samples"]
    world_size = nodes * procs_per_node
    global_batch = batch_size or ct.train.global_batch
    if global_batch % world_size:
        raise InputError(
            f"--batch_size: global batch {global_batch} is not divisible by the world size {world_size} "
            f"({nodes} node(s) x {procs_per_node} process(es))"
        )

    if is_text:
        from steps.text.flow_steps import check_text_inputs

        try:
            text = check_text_inputs(
                ct, dataset=dataset, pretrained=pretrained, tokenizer=tokenizer, demo=demo
            )
        except ValueError as exc:
            raise InputError(_one_line(exc)) from None
        dataset, kind = text["dataset"], text["dataset_kind"]
        pretrained, tokenizer = text["model"], text["tokenizer"]
        if kind == "hub" and check_remote:
            check_hub_dataset(dataset, dataset_revision)
    elif dataset is None and demo and not (yaml_names_dataset(config_type) and ct.dataset_id):
        dataset, dataset_revision = demo_dataset_id(ct), None
    else:
        try:
            dataset, dataset_revision = require_dataset(ct, dataset, dataset_revision)
        except ValueError as exc:
            raise InputError(f"--dataset: {_one_line(exc)}") from None
    # --demo on the dataset a YAML names (the user named it: never silently replaced by generated data).
    demo_on_named = demo and not is_text and not dataset.startswith(DEMO_PREFIX) and given_dataset is None
    if not is_text:
        kind = classify_dataset(dataset)
        try:
            info = _check_vla_dataset(kind, dataset, dataset_revision, ct, check_remote)
        except InputError as exc:
            if not demo_on_named:
                raise
            raise InputError(
                f"{exc}; to run --demo on its demo dataset instead, add --dataset {demo_dataset_id(ct)}"
            ) from None
        if kind == "local":
            dataset = str(Path(dataset.removeprefix("file://")).expanduser().resolve())
        where = "the demo dataset" if kind == "demo" else dataset
        check_eval_episodes(eval_episodes, (info or {}).get("total_episodes"), where)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    try:
        tracking.check_no_credentials(uri)  # before anything prints or stores the URI
    except tracking.TrackingError as exc:
        raise InputError(f"MLFLOW_TRACKING_URI: {exc}") from None
    if remote and not uri.startswith(("http://", "https://", "databricks")):
        raise InputError(
            f"MLFLOW_TRACKING_URI: {uri} is a file on one machine; remote runs need a tracking server "
            "(export MLFLOW_TRACKING_URI=http(s)://...)"
        )
    if check_tracking:
        try:
            tracking.check_reachable(uri)
        except tracking.TrackingError as exc:
            raise InputError(f"MLFLOW_TRACKING_URI: {exc}") from None

    from steps.registry.register import check_model_name

    try:
        check_model_name(
            model_name or ct.name, "--model_name" if model_name else "--model_name (the config type's name)"
        )
        check_train_options(train_options)
        check_train_option_types(train_options or {})
        if not is_text:
            tokenizer = tokenizer or (TINY_TOKENIZER if demo else PALIGEMMA_TOKENIZER_URL)
            check_tokenizer_spec(tokenizer)
        episodes, steps = sim_settings(demo, sim_episodes, sim_max_steps)
        simulator = None if is_text else ct.simulator
        suite = check_sim_suite(sim_suite, simulator)
        tasks = check_sim_tasks(sim_tasks, simulator, suite)
        workers = check_sim_workers(sim_workers)
        if simulator == "maniskill" and episodes > 0:
            from steps.sim.maniskill.demonstrations import check_simulator_fit

            check_simulator_fit(ct)
    except ValueError as exc:
        raise InputError(_one_line(exc)) from None
    rc = RunConfig(
        kind="text" if is_text else "vla",
        demo=demo,
        tracking_uri=uri,
        experiment=experiment,
        model_name=model_name or ct.name,
        # Text: the model is --pretrained or the config type's, also with --demo.
        model=ModelSection(
            type=ct.model_type, variant="tiny" if demo and not is_text else "real", pretrained=pretrained
        ),  # fmt: skip
        data=DataSection(
            config_type=ct,
            dataset=dataset,
            dataset_kind=kind,
            dataset_revision=dataset_revision,
            tokenizer=tokenizer,
        ),  # fmt: skip
        train=TrainSection(
            max_steps=max_steps,
            global_batch=global_batch,
            peak_lr=float(learning_rate) if learning_rate is not None else None,
            options=dict(train_options or {}),
        ),  # fmt: skip
        # --lora alone: the LoRA settings' own rank.
        lora=(LoraSettings(rank=lora_rank) if lora_rank is not None else LoraSettings()) if lora else None,
        eval=EvalSection(
            episodes=eval_episodes,
            samples=eval_samples or DEFAULT_EVAL_SAMPLES,
            sim_episodes=episodes,
            sim_max_steps=steps,
            sim_tasks=tasks,
            sim_suite=suite,
            sim_workers=workers,
        ),  # fmt: skip
        cluster=ClusterSection(nodes=nodes, procs_per_node=procs_per_node, gpus_per_node=gpus_per_node),
    )
    check_train_config(rc, world_size)
    if demo_on_named:
        print(f"--demo: training the tiny model on {dataset}, the dataset {config_type} names "
              f"(for its demo dataset instead: --dataset {demo_dataset_id(ct)})")  # fmt: skip
    return rc


def running_remotely(backend: str = "local") -> bool:
    """True for a Kubernetes / AWS Batch run (by the cluster Config, or by the task's environment)."""
    import os

    return (
        backend != "local"
        or os.environ.get("METAFLOW_RUNTIME_ENVIRONMENT", "local") != "local"
        or "KUBERNETES_SERVICE_HOST" in os.environ
        or "AWS_BATCH_JOB_ID" in os.environ
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
