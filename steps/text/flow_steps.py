"""The flow's steps for a text config type (``text_sft`` or a YAML with ``kind: text``).

The flow runs the same steps for a causal LM as for pi0 / pi0.5; where a step differs, the text task
calls one function here:

- start: ``check_text_inputs`` (model, dataset and tokenizer exist; the dataset's first rows have the
  expected fields; a validation split to evaluate on) — no torch / transformers import;
- fetch_data: ``fetch_text_dataset`` (rows, deterministic train / validation row split, fingerprint);
- compute_norm_stats: ``compute_text_run_stats`` (token-length statistics, logged to MLflow);
- evaluate: ``evaluate_text_run`` (validation loss, perplexity, completions table in MLflow);
- register: ``text_registry_folder`` (the export as a generating MLflow pyfunc).

``steps.tasks.text.TextTask`` calls them.

For text, the ``episodes`` of the generic artifacts are row indices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PEEK_ROWS = 50  # rows of a local file checked in start (the rest are checked when tokenized)
SPLIT_SEED = 0


def _looks_local(value: str) -> bool:
    return (
        value.startswith(("/", "./", "../", "~", "file://"))
        or Path(value).exists()
        or not _HUB_ID.match(value)
    )


def _local(value: str) -> Path:
    return Path(value.removeprefix("file://")).expanduser().resolve()


def check_text_inputs(
    ct, *, dataset: str | None, pretrained: str | None, tokenizer: str | None, demo: bool = False
) -> dict[str, Any]:
    """The text run's model, dataset and tokenizer, resolved; ValueError with one line naming the option.

    With ``demo`` and no model (``--pretrained`` or the config type's), the tiny demo model
    (``steps.text.demo``); with ``demo`` and no dataset, the shipped chat rows.
    Returns ``{"model", "dataset", "dataset_kind", "tokenizer"}`` (local paths made absolute).
    """
    from steps.text.demo import DEMO_DATASET, DEMO_MODEL, DEMO_ROWS

    model = pretrained or ct.model or (DEMO_MODEL if demo else None)
    if not model:
        raise ValueError(
            f"--pretrained: config type {ct.name!r} names no model: pass a Hub id or a local folder "
            "(or --demo for the built-in tiny model)"
        )
    option = "--pretrained" if pretrained else "model (config type)"
    if model == DEMO_MODEL:
        pass  # built locally when first loaded
    elif _looks_local(model):
        path = _local(model)
        if not (path / "config.json").is_file():
            raise ValueError(f"{option}: {path} is not a Hugging Face model folder (no config.json)")
        model = str(path)
    tok = tokenizer or ct.tokenizer
    if tok and _looks_local(tok):
        if not _local(tok).exists():
            raise ValueError(f"--tokenizer: {_local(tok)} does not exist (a tokenizer folder or a Hub id)")
        tok = str(_local(tok))
    if not ct.val_fraction > 0:
        raise ValueError(f"val_fraction: config type {ct.name!r} holds out no rows; the flow evaluates on them "
                         "(set val_fraction > 0)")  # fmt: skip
    source = dataset or ct.dataset_id or (DEMO_DATASET if demo else None)
    if not source:
        raise ValueError(f"--dataset: required for config type {ct.name!r} ({ct.dataset_hint})")
    if source == DEMO_DATASET:
        check_rows_fields(DEMO_ROWS)
        return {"model": model, "dataset": source, "dataset_kind": "demo", "tokenizer": tok}
    if not _looks_local(source):
        return {"model": model, "dataset": source, "dataset_kind": "hub", "tokenizer": tok}
    path = _local(source)
    if not path.exists():
        raise ValueError(f"--dataset: local path {path} does not exist ({ct.dataset_hint})")
    check_rows_fields(path)
    return {"model": model, "dataset": str(path), "dataset_kind": "local", "tokenizer": tok}


def check_rows_fields(path: Path) -> None:
    """The first rows of a local .jsonl file (or the columns of a .parquet file) have the expected fields."""
    from steps.text.data import row_format

    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".parquet"))
    )
    if not files:
        if path.is_dir() and not any(path.rglob("*.json")):
            raise ValueError(f"--dataset: {path} has no .jsonl, .json or .parquet files")
        return
    first = files[0]
    if first.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [dict.fromkeys(pq.read_schema(first).names)]
    elif first.suffix == ".jsonl":
        rows = []
        with open(first) as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"--dataset: {first} line {n} is not valid JSON: {err}") from None
                if len(rows) >= _PEEK_ROWS:
                    break
        if not rows:
            raise ValueError(f"--dataset: {first} has no rows")
    else:
        return  # a .json file is read whole; the fetch step checks it
    try:
        row_format(rows, str(first))
    except ValueError as err:
        raise ValueError(f"--{err}") from None


@dataclass(frozen=True)
class TextFetchResult:
    """What ``fetch_data`` records for text (the fields the flow reads of a ``FetchResult``)."""

    path: str  # local file / folder, or the Hub dataset id
    train_episodes: list[int]  # row indices
    val_episodes: list[int]
    dataset_id: str
    revision: str | None
    source: str  # "local" | "hub" | "demo"
    fingerprint: str  # hash of the rows' content
    num_rows: int
    version: str = "text"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fetch_text_dataset(rc) -> TextFetchResult:
    """All rows of the run config's dataset, split deterministically into train / validation row indices."""
    from steps.text import data as text_data
    from steps.text.demo import resolve_dataset

    ct, data = rc.config_type, rc.data
    source = resolve_dataset(data.dataset)  # the demo id -> the shipped rows file
    # A Hub branch or tag is pinned to the commit read here: stats, training and evaluation read that commit
    # (and lineage records it), even if the branch moves during the run.
    path, commit = text_data.locate(source, revision=data.dataset_revision or ct.dataset_revision)
    rows = text_data.read_rows(path, source)
    text_data.row_format(rows, source)
    train, val = text_data.split_rows(len(rows), ct.val_fraction, SPLIT_SEED)
    return TextFetchResult(path=source, train_episodes=train, val_episodes=val, dataset_id=data.dataset,
                           revision=commit, source=data.dataset_kind, fingerprint=_rows_fingerprint(rows),
                           num_rows=len(rows))  # fmt: skip


def _rows_fingerprint(rows: list) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")
    return digest.hexdigest()[:16]


def compute_text_run_stats(
    rc, fetched: dict, *, out_path: str | os.PathLike, tracking_uri: str, run_id: str
) -> dict:
    """Token-length statistics of the training rows, written to ``out_path`` and logged to MLflow."""
    from steps.registry import tracking
    from steps.text.stats import compute_text_stats

    ct = rc.config_type
    tokenizer = rc.data.tokenizer or ct.tokenizer or rc.model.pretrained or ct.model
    data = compute_text_stats(
        ct,
        fetched["path"],
        fetched["train_episodes"],
        out_path=out_path,
        tokenizer=tokenizer,
        revision=fetched["revision"],
    )
    tracking.log_metrics(tracking_uri, run_id, {f"data/{k}": v for k, v in data["text_stats"].items()})
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).log_artifact(run_id, str(out_path), "data")
    return data


def evaluate_text_run(
    export_dir: str, rc, fetched: dict, *, tracking_uri: str, run_id: str, device: str = "cpu"
):
    """Validation loss / perplexity of the export on the held-out rows; completions logged as a table."""
    from steps.text.evaluate import evaluate_text_export, log_completions

    result = evaluate_text_export(export_dir, fetched["path"], fetched["val_episodes"], revision=fetched["revision"],
                                  max_samples=rc.eval.samples, device=device)  # fmt: skip
    log_completions(tracking_uri, run_id, result.details["completions"])
    return result


def text_registry_folder(export_dir: str, workdir: str | os.PathLike) -> str:
    """The export as an MLflow pyfunc folder that generates text (what gets registered)."""
    from steps.text.model_logging import save_text_pyfunc

    return str(save_text_pyfunc(export_dir, Path(workdir) / "pyfunc"))
