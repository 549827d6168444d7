"""The end of a run: the summary the end step prints (steps/registry/summary.py) and the quiet defaults
every task inherits (flows/quiet.py). Through a real run: tests/test_text_flow.py's demo test."""

from __future__ import annotations

from flows.quiet import QUIET_DEFAULTS, quiet_defaults
from steps.registry.summary import browse_command, run_summary

METRICS = {"val_action_mse": 39.308879311169854, "val_action_mae": 3.9, "val_loss": 1.237299919128418,
           "num_samples": 32.0, "sim/success_rate": 0.0, "sim/episodes": 6.0, "sim/success/reach-v3": 0.0}  # fmt: skip


def test_summary_names_model_data_key_metrics_and_where_to_look():
    text = run_summary(model_version={"name": "pi05_metaworld", "version": "3", "alias": "candidate"},
                       metrics=METRICS, mlflow_run_id="abc123", tracking_uri="sqlite:////w/mlflow.db",
                       dataset="demo://metaworld_demo")  # fmt: skip
    lines = text.splitlines()
    assert lines == [
        "Run summary",
        "  model    pi05_metaworld version 3 (alias candidate)",
        "  dataset  demo://metaworld_demo",
        "  metrics  val_loss 1.237 · val_action_mse 39.31 · sim/success_rate 0 (6 episodes)",
        "  MLflow   run abc123 (7 evaluation metrics under eval/) at sqlite:////w/mlflow.db",
        "  browse   mlflow ui --backend-store-uri sqlite:////w/mlflow.db   (then open http://127.0.0.1:5000)",
        "  promote  python -m steps.promote --name pi05_metaworld --version candidate --to champion",
    ]
    assert max(len(line) for line in lines) <= 110


def test_text_metrics_and_a_tracking_server():
    text = run_summary(model_version={"name": "text_sft", "version": "1", "alias": None},
                       metrics={"val_loss": 6.46, "perplexity": 640.97, "val_samples": 2.0}, mlflow_run_id="r",
                       tracking_uri="https://mlflow.internal")  # fmt: skip
    assert "  metrics  val_loss 6.46 · perplexity 641" in text
    assert "  model    text_sft version 1\n" in text and "--version 1 --to champion" in text
    assert browse_command("https://mlflow.internal") == "open https://mlflow.internal in a browser"


def test_quiet_defaults_keep_what_the_user_set():
    env = {"MLFLOW_LOGGING_LEVEL": "DEBUG"}
    quiet_defaults(env)
    assert env == {**QUIET_DEFAULTS, "MLFLOW_LOGGING_LEVEL": "DEBUG"}
    assert env["METAFLOW_PYLINT"] == "false"
