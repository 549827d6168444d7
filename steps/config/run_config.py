"""RunConfig: one run's every choice, resolved once in the flow's ``start`` and passed on as it is.

``steps.config.validate.resolve_run_config`` checks the command-line values and the cluster shape and
builds it; the flow stores ``to_dict()`` as the ``run_config`` artifact, and every later step and every
training process rebuilds it with ``from_dict`` (no config type name is looked up and no YAML file is read
again after ``start``: the resolved config type travels inside, so a remote node needs no local file).

Sections: ``model`` (which network, which weights), ``data`` (config type, dataset, tokenizer),
``train`` (overrides of the config type's training preset), ``lora`` (None = full fine-tuning),
``eval`` (held-out episodes, closed-loop settings), ``cluster`` (nodes and processes). No torch import.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from data_adapters.config_types import ConfigType
from data_adapters.registry import config_type_from_dict
from data_adapters.text_config import TextConfigType
from model_zoo.lora_settings import LoraSettings

KINDS = ("vla", "text")


@dataclass(frozen=True)
class ModelSection:
    # "pi0" | "pi05" (VLA) or "causal_lm" (text).
    type: str
    # "real" (published sizes) or "tiny" (the --demo / test size). Text models are always "real".
    variant: str
    # Base weights: local folder/file or Hub id (safetensors); None = random init (VLA) / the config's model.
    pretrained: str | None = None


@dataclass(frozen=True)
class DataSection:
    # The resolved config type: key mapping, horizon, normalization, training preset.
    config_type: ConfigType | TextConfigType
    # The dataset: local path (absolute), Hub id, s3://, metaworld://, libero:// or maniskill:// URI, or the
    # demo marker.
    dataset: str
    # "local" | "hub" | "s3" | "metaworld" | "libero" | "maniskill" | "demo".
    dataset_kind: str
    dataset_revision: str | None = None
    # VLA: a SentencePiece spec ("tiny", a file, https://, hf://); text: a tokenizer folder / Hub id or
    # None (the model's own).
    tokenizer: str | None = None


@dataclass(frozen=True)
class TrainSection:
    # None: the config type's preset.
    max_steps: int | None = None
    global_batch: int | None = None
    peak_lr: float | None = None
    # Further TrainConfig fields (``--train_options``), checked in start.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSection:
    # Episodes (text: rows) held out from training and evaluated offline, and frames evaluated.
    episodes: int
    samples: int
    # Closed loop (simulator config types): episodes per task (0 = off), step limit (None: the benchmark's),
    # tasks (None: default), LIBERO suite (None for other simulators), simulator processes (None: per core).
    sim_episodes: int = 0
    sim_max_steps: int | None = 1
    sim_tasks: tuple[str, ...] | None = None
    sim_suite: str | None = None
    sim_workers: int | None = None


@dataclass(frozen=True)
class ClusterSection:
    nodes: int = 1
    procs_per_node: int = 1
    # GPUs per node (0: CPU); evaluation runs on "cuda" when > 0.
    gpus_per_node: int = 0

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclass(frozen=True)
class RunConfig:
    """Everything a run decided in ``start``. Frozen; ``to_dict`` / ``from_dict`` round-trip exactly."""

    # "vla" (pi0 / pi0.5 on a LeRobot dataset) or "text" (a causal LM on chat rows).
    kind: str
    demo: bool
    tracking_uri: str
    experiment: str
    # Registered-model name in MLflow.
    model_name: str
    model: ModelSection
    data: DataSection
    train: TrainSection
    lora: LoraSettings | None
    eval: EvalSection
    cluster: ClusterSection

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"run config: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def config_type(self) -> ConfigType | TextConfigType:
        return self.data.config_type

    @property
    def finetune(self) -> str:
        return "full" if self.lora is None else "lora"

    @property
    def eval_device(self) -> str:
        return "cuda" if self.cluster.gpus_per_node else "cpu"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (the flow artifact)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("model", "train", "eval", "cluster"):
            out[name] = dataclasses.asdict(out[name])
        out["train"]["options"] = dict(self.train.options)
        out["data"] = {**dataclasses.asdict(dataclasses.replace(self.data, config_type=None)),
                       "config_type": self.data.config_type.to_dict()}  # fmt: skip
        out["lora"] = self.lora.to_dict() if self.lora is not None else None
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        values = dict(data)
        values["model"] = ModelSection(**values["model"])
        values["data"] = DataSection(**{**values["data"],
                                        "config_type": config_type_from_dict(values["data"]["config_type"])})  # fmt: skip
        values["train"] = TrainSection(**values["train"])
        ev = dict(values["eval"])
        ev["sim_tasks"] = tuple(ev["sim_tasks"]) if ev.get("sim_tasks") is not None else None
        values["eval"] = EvalSection(**ev)
        values["cluster"] = ClusterSection(**values["cluster"])
        values["lora"] = LoraSettings.from_dict(values["lora"]) if values.get("lora") else None
        return cls(**values)

    def flat_params(self) -> dict[str, str]:
        """``{"data.dataset": ..., "lora.rank": ...}`` for MLflow params (the config type by name)."""
        out: dict[str, str] = {"kind": self.kind, "demo": str(self.demo), "finetune": self.finetune,
                               "experiment": self.experiment, "model_name": self.model_name}  # fmt: skip
        sections = self.to_dict()
        sections["data"]["config_type"] = self.config_type.name
        for name in ("model", "data", "train", "eval", "cluster", "lora"):
            for key, value in (sections[name] or {}).items():
                out[f"{name}.{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        return out
