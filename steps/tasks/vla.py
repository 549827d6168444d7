"""The pi0 / pi0.5 task: a LeRobot dataset, exact normalization statistics, offline and closed-loop
evaluation, and the policy registered as an MLflow pyfunc with a model card."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from steps.tasks.base import EvalOutcome, RunIdentity, RunTask
from steps.train.launch import NodeInputs


class VlaTask(RunTask):
    def fetch(self) -> tuple[dict, bytes]:
        from steps.fetch.run_inputs import fetch_run_dataset, resolve_tokenizer

        return fetch_run_dataset(self.rc).to_dict(), resolve_tokenizer(self.rc.data.tokenizer).read_bytes()

    def compute_stats(self, fetched: dict, *, out_path: str | os.PathLike, who: RunIdentity) -> dict:
        from steps.stats.norm_stats import compute_norm_stats

        # The held-out episodes are checked too (every episode before training); a Hub snapshot is
        # trusted by its commit, a local or S3 folder by its files' identities.
        revision = fetched["revision"] if fetched["source"] == "hub" else None
        stats = compute_norm_stats(self.rc.config_type, fetched["path"], fetched["train_episodes"],
                                   check_episodes=fetched["val_episodes"], revision=revision, out_path=out_path)  # fmt: skip
        self.log_dataset(fetched, who)  # the first step that talks to MLflow after fetch_data
        return stats.to_json_dict()

    def node_inputs(self, fetched: dict, norm_stats: dict, tokenizer_model: bytes,
                    workdir: str | os.PathLike) -> NodeInputs:  # fmt: skip
        from steps.train.launch import node_dataset_root

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        norm_path, tok_path = workdir / "norm_stats.json", workdir / "tokenizer.model"
        norm_path.write_text(json.dumps(norm_stats, indent=2) + "\n")
        tok_path.write_bytes(tokenizer_model)
        return NodeInputs(node_dataset_root(self.rc, fetched), str(norm_path), str(tok_path))

    def evaluate(
        self, export_uri: str, fetched: dict, *, workdir: str | os.PathLike, who: RunIdentity
    ) -> EvalOutcome:
        from steps.evaluate.export_eval import evaluate_export
        from steps.train.launch import local_export, node_dataset_root

        ev, workdir = self.rc.eval, Path(workdir)
        result = evaluate_export(local_export(export_uri, workdir), node_dataset_root(self.rc, fetched),
                                 fetched["val_episodes"], max_samples=ev.samples, out_dir=workdir / "outputs",
                                 device=self.rc.eval_device, sim_episodes=ev.sim_episodes,
                                 sim_max_steps=ev.sim_max_steps, sim_tasks=ev.sim_tasks,
                                 sim_suite=ev.sim_suite, sim_workers=ev.sim_workers)  # fmt: skip
        # Logged to MLflow by register, with the version's tags: evaluate then never imports MLflow (~3 s of
        # import and store set-up). The plots and rollout media are a few MB.
        files = {name: Path(path).read_bytes() for name, path in result.artifacts.items()}
        card = {"metrics": result.metrics, "episodes": result.episodes, "seconds": result.seconds,
                "images": result.artifacts}  # fmt: skip
        return EvalOutcome(metrics=result.metrics, details=result.details, files=files, card=card)

    def register(self, export_uri: str, fetched: dict, *, workdir: str | os.PathLike, who: RunIdentity,
                 metrics: dict[str, float], files: dict[str, bytes], final_step: int) -> dict[str, Any]:  # fmt: skip
        from steps.registry import model_logging, register
        from steps.train.launch import local_export

        export_dir = local_export(export_uri, workdir)
        tags = {**self.lineage_tags(who, fetched), **_content_digest_tag(export_dir)}
        model_logging.write_model_card(export_dir, metrics=metrics, lineage=tags)
        version = register.register_model(
            who.tracking_uri, name=self.rc.model_name, model_dir=export_dir, run_id=who.mlflow_run_id,
            lineage_id=who.lineage_id, tags=tags, metrics=metrics,
            log_model=lambda: _model_source(model_logging.log_policy_model(
                export_dir, run_id=who.mlflow_run_id, tracking_uri=who.tracking_uri, step=final_step)),
        )  # fmt: skip
        register.close_run(who, metrics=metrics, files=files, final_step=final_step)
        return version.to_dict()


def _content_digest_tag(export_dir: Path) -> dict[str, str]:
    """``dataset.content_digest``: the digest of every state / action value the model's statistics read
    (training and held-out episodes), from the export's norm_stats.json. ``dataset.fingerprint`` hashes the
    meta files and file sizes only; this one changes with any value."""
    stats = json.loads((Path(export_dir) / "norm_stats.json").read_text())
    digest = stats.get("metadata", {}).get("dataset", {}).get("content_digest")
    return {"dataset.content_digest": digest} if digest else {}


def _model_source(info) -> tuple[str, str]:
    """(source URI, logged model id) of a logged model, what its registered version must name."""
    return info.model_uri, info.model_id
