"""The text task: supervised fine-tuning of a Hugging Face causal LM on chat rows (``steps.text``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from steps.tasks.base import EvalOutcome, RunIdentity, RunTask
from steps.train.launch import NodeInputs


class TextTask(RunTask):
    def fetch(self) -> tuple[dict, bytes]:
        from steps.text.flow_steps import fetch_text_dataset

        return fetch_text_dataset(
            self.rc
        ).to_dict(), b""  # the tokenizer comes with the model (or --tokenizer)

    def compute_stats(self, fetched: dict, *, out_path: str | os.PathLike, who: RunIdentity) -> dict:
        from steps.text.flow_steps import compute_text_run_stats

        self.log_dataset(fetched, who)
        return compute_text_run_stats(self.rc, fetched, out_path=out_path, tracking_uri=who.tracking_uri,
                                      run_id=who.mlflow_run_id)  # fmt: skip

    def node_inputs(self, fetched: dict, norm_stats: dict, tokenizer_model: bytes,
                    workdir: str | os.PathLike) -> NodeInputs:  # fmt: skip
        import json

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        norm_path = workdir / "norm_stats.json"  # token statistics: recorded with the checkpoints
        norm_path.write_text(json.dumps(norm_stats, indent=2) + "\n")
        # The rows: a local file or a Hub id at the commit fetch_data pinned; "" tokenizer = the model's own.
        return NodeInputs(
            fetched["path"], str(norm_path), self.rc.data.tokenizer or "", fetched.get("revision")
        )

    def evaluate(
        self, export_uri: str, fetched: dict, *, workdir: str | os.PathLike, who: RunIdentity
    ) -> EvalOutcome:
        from steps.text.flow_steps import evaluate_text_run
        from steps.train.launch import local_export

        result = evaluate_text_run(local_export(export_uri, workdir), self.rc, fetched, tracking_uri=who.tracking_uri,
                                   run_id=who.mlflow_run_id, device=self.rc.eval_device)  # fmt: skip
        return EvalOutcome(metrics=result.metrics, details=result.details)

    def register(self, export_uri: str, fetched: dict, *, workdir: str | os.PathLike, who: RunIdentity,
                 metrics: dict[str, float], files: dict[str, bytes], final_step: int) -> dict[str, Any]:  # fmt: skip
        from steps.registry import register
        from steps.text.flow_steps import text_registry_folder
        from steps.text.model_logging import write_text_model_card
        from steps.train.launch import local_export

        export_dir, tags = local_export(export_uri, workdir), self.lineage_tags(who, fetched)
        write_text_model_card(export_dir, metrics=metrics, lineage=tags)
        folder = text_registry_folder(export_dir, workdir)
        version = register.register_model(who.tracking_uri, name=self.rc.model_name, model_dir=folder,
                                          run_id=who.mlflow_run_id, lineage_id=who.lineage_id, tags=tags,
                                          metrics=metrics)  # fmt: skip
        register.close_run(who, metrics=metrics, files=files, final_step=final_step)
        return version.to_dict()
