"""Text SFT through the same flow (issue 9): start's checks for text inputs, and a demo-sized run end to end.

The flow runs as a real local Metaflow run in a subprocess (isolated datastore, Metaflow home, sqlite
MLflow and caches under tmp, as in tests/test_flow.py) on a tiny random Llama, a tokenizer made
locally and a small chat jsonl (tests/text_helpers.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from steps.config.validate import InputError, validate_run_inputs
from tests.test_flow import FLOW, flow_env, inspect_run, run_flow
from tests.text_helpers import chat_rows, make_model_folder, write_jsonl, write_text_yaml


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    base = tmp_path_factory.mktemp("text_flow")
    model = make_model_folder(base / "model")
    data = write_jsonl(base / "chat.jsonl", chat_rows())
    yaml_path = write_text_yaml(base / "tiny_text.yaml", model=model, dataset=data)
    bad = base / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no chat here"}) + "\n")
    return {"base": base, "model": model, "data": data, "yaml": yaml_path, "bad": bad}


# --- start: text inputs (fast) ----------------------------------------------------------------------


def test_text_plan_resolves_model_dataset_and_keeps_real_variant(assets, tmp_path):
    rc = validate_run_inputs(config_type=str(assets["yaml"]), demo=True, lora=True, lora_rank=4,
                             tracking_uri=f"sqlite:///{tmp_path}/m.db")  # fmt: skip
    assert rc.kind == "text" and rc.model.type == "causal_lm"
    assert rc.model.pretrained == str(assets["model"].resolve()) and rc.data.dataset == str(
        assets["data"].resolve()
    )
    assert rc.data.dataset_kind == "local" and rc.model.variant == "real" and rc.lora.rank == 4
    assert rc.train.max_steps and rc.train.global_batch and rc.data.tokenizer is None


@pytest.mark.parametrize(
    ("case", "match"),
    [
        (
            "bad_fields",
            r"--dataset: .*bad\.jsonl row 0 has no field\(s\) \['prompt', 'completion'\].*'messages'",
        ),
        ("missing_dataset", r"--dataset: local path /no/such/chat\.jsonl does not exist"),
        ("missing_model", r"--pretrained: /no/model is not a Hugging Face model folder"),
        ("no_model", r"--pretrained: config type 'text_sft' names no model"),
        ("no_dataset", r"--dataset: required for config type 'text_sft'"),
        ("batch", r"--batch_size: global batch 5 is not divisible by the world size 2"),
        ("lora", r"--lora_rank: must be an integer >= 1"),
    ],
)
def test_bad_text_inputs_are_rejected(assets, tmp_path, case, match):
    args = {"config_type": str(assets["yaml"]), "demo": True, "tracking_uri": f"sqlite:///{tmp_path}/m.db"}
    args.update({
        "bad_fields": {"dataset": str(assets["bad"])},
        "missing_dataset": {"dataset": "/no/such/chat.jsonl"},
        "missing_model": {"pretrained": "/no/model"},
        "no_model": {"config_type": "text_sft", "dataset": str(assets["data"]), "demo": False},
        "no_dataset": {"config_type": "text_sft", "pretrained": str(assets["model"]), "demo": False},
        "batch": {"batch_size": 5, "nodes": 2},
        "lora": {"lora": True, "lora_rank": 0},
    }[case])  # fmt: skip
    with pytest.raises(InputError, match=match):
        validate_run_inputs(**args)


def test_bad_text_dataset_fails_in_start(assets, tmp_path):
    """Through the flow: one 'Invalid input' line naming the dataset, the row and the fields; nothing else ran."""
    root = tmp_path / "bad"
    root.mkdir()
    proc = subprocess.run([sys.executable, str(FLOW), "run", "--config_type", str(assets["yaml"]), "--demo",
                           "--dataset", str(assets["bad"])], cwd=root, env=flow_env(root), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "Invalid input:" in out, out[-2000:]
    expected = "bad.jsonl row 0 has no field(s) ['prompt', 'completion']: expected 'messages' (chat)"
    assert [line for line in out.splitlines() if "--dataset:" in line and expected in line], out[-2000:]
    assert "/fetch_data/" not in out and "Traceback" not in out


def test_a_bad_row_past_what_start_reads_fails_in_one_line_before_training(assets, tmp_path):
    """start reads the first 50 rows; row 60 without fields is found when the rows are tokenized (before any
    model is built: fetch_data reads every row) and shown like start's errors: 'Dataset error' and one line
    naming the file and row, no traceback, and no later step ran."""
    rows = [*chat_rows(60), {"text": "no chat here"}]
    data = write_jsonl(tmp_path / "late_bad.jsonl", rows)
    root = tmp_path / "run"
    root.mkdir()
    proc = subprocess.run([sys.executable, str(FLOW), "run", "--config_type", str(assets["yaml"]), "--demo",
                           "--dataset", str(data)], cwd=root, env=flow_env(root), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "Dataset error:" in out, out[-3000:]
    expected = f"dataset: {data} row 60 has no field(s) ['messages']: expected 'messages' (chat)"
    assert [line for line in out.splitlines() if "/fetch_data/" in line and expected in line], out[-3000:]
    (kept,) = (root / "cache" / "errors").rglob("fetch_data-*.txt")  # the traceback, for whoever wants it
    assert "TextDatasetError" in kept.read_text()
    assert "Traceback" not in out and "Internal error" not in out, out[-3000:]
    assert "/fetch_data/" in out and "/compute_norm_stats/" not in out and "/train/" not in out


def test_text_dataset_files_that_cannot_be_read_name_the_file(tmp_path):
    """A parquet file cut short, a .json file and a .jsonl line that are not JSON: a user error
    ('Dataset error') naming the file (and line), not a pyarrow / json traceback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from steps import errors
    from steps.text.data import TextDatasetError, load_rows

    good = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": ["a"] * 100, "completion": ["b"] * 100}), good)
    assert len(load_rows(str(good))) == 100
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    broken_json = tmp_path / "rows.json"
    broken_json.write_text('[{"prompt": "a", ')
    broken_line = tmp_path / "rows.jsonl"
    broken_line.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    for path, match in ((cut, rf"dataset: {cut} cannot be read as parquet: "),
                        (broken_json, rf"dataset: {broken_json} is not valid JSON"),
                        (broken_line, rf"dataset: {broken_line} line 2 is not valid JSON")):  # fmt: skip
        with pytest.raises(TextDatasetError, match=match) as info:
            load_rows(str(path))
        assert errors.is_user_error(info.value) and errors.headline(info.value) == "Dataset error"


# --- end to end (slow) -------------------------------------------------------------------------------


@pytest.mark.slow
def test_text_demo_flow_end_to_end_registers_a_generating_model(tmp_path):
    """`run --config_type text_sft --demo`: the built-in tiny model (built offline, steps/text/demo.py) on
    the shipped chat rows, through every step to a registered pyfunc that generates."""
    import mlflow
    from mlflow.tracking import MlflowClient

    proc = run_flow(tmp_path, "run", "--config_type", "text_sft", "--demo", "--max_steps", "8", "--lora",
                    "--lora_rank", "4", "--model_name", "tiny-text-flow", env=flow_env(tmp_path, HF_HUB_OFFLINE="1"))  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # Quiet: no notice or warning for what every run does; progress and a summary at the end.
    for noise in ("Pylint", " INFO mlflow", "Warning", "Add type hints"):
        assert noise not in out, [line for line in out.splitlines() if noise in line][:3]
    assert "offline eval: 2/2 rows (100%)" in out and "export: done in" in out
    summary = [line.split("] ", 1)[-1] for line in out.splitlines() if "/end/" in line][1:]
    assert "Run summary" in summary and "model    tiny-text-flow version 1 (alias candidate)" in summary
    assert "dataset  demo://chat_demo" in summary and any(
        line.startswith("metrics  val_loss ") for line in summary
    )
    info = inspect_run(tmp_path)
    assert info["successful"] and all(info["steps"].values()), info["steps"]
    assert set(info["steps"]) >= {"start", "fetch_data", "compute_norm_stats", "train", "join", "evaluate",
                                  "register", "end"}  # fmt: skip
    assert info["run_config"]["kind"] == "text" and info["run_config"]["lora"]["rank"] == 4
    assert info["train_result"]["final_step"] == 8
    m = info["eval_metrics"]
    assert m["val_samples"] == 2 and m["perplexity"] == pytest.approx(math.exp(m["val_loss"]))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.get_run(info["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["kind"] == "text" and run.data.params["lora.rank"] == "4"
    metrics = run.data.metrics
    assert metrics["eval/val_loss"] == pytest.approx(m["val_loss"]) and "eval/perplexity" in metrics
    assert metrics["data/count"] == 38 and metrics["data/label_tokens_total"] > 0  # 40 rows, 2 held out
    assert run.data.params["model.pretrained"] == "demo://tiny_chat_lm"
    assert run.data.params["data.dataset"] == "demo://chat_demo"
    assert "train/loss" in metrics and "train/lr" in metrics, sorted(metrics)
    assert [h.step for h in client.get_metric_history(run.info.run_id, "val/loss")] == [2, 4, 6, 8]
    dl = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="eval/completions.json",
                                                  dst_path=str(tmp_path / "dl"), tracking_uri=uri))  # fmt: skip
    table = json.loads(dl.read_text())
    assert table["columns"] == ["row", "prompt", "reference", "completion"] and len(table["data"]) == 2

    mv = info["model_version"]
    assert (mv["name"], mv["alias"]) == ("tiny-text-flow", "candidate")
    version = client.get_model_version_by_alias("tiny-text-flow", "candidate")
    assert str(version.version) == mv["version"] and version.run_id == run.info.run_id
    assert version.tags["finetune"] == "lora" and "metric.perplexity" in version.tags
    # One name for the dataset: params, version tags and the run's dataset input (digest = fingerprint).
    assert version.tags["dataset.id"] == "demo://chat_demo" and version.tags["dataset.fingerprint"]
    inputs = [(i.dataset.name, i.dataset.digest) for i in run.inputs.dataset_inputs]
    assert inputs == [("demo://chat_demo", version.tags["dataset.fingerprint"])]
    assert run.data.tags["mlflow.user"] == "dev" and run.data.tags["mlflow.source.name"].endswith(
        "sft_flow.py"
    )
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/tiny-text-flow@candidate")
    out = model.predict(
        {"messages": [[{"role": "user", "content": "What does the demo train?"}]]},
        params={"max_new_tokens": 5},
    )
    assert len(out) == 1 and isinstance(out[0], str) and out[0]
    # The version's model card, fetched as the README says, names the dataset and base model as the run does.
    card = Path(mlflow.artifacts.download_artifacts("models:/tiny-text-flow@candidate/artifacts/export/README.md",
                                                    dst_path=str(tmp_path / "card"))).read_text().splitlines()  # fmt: skip
    assert f"- dataset: demo://chat_demo (fingerprint {version.tags['dataset.fingerprint']})" in card
    assert "- base model: demo://tiny_chat_lm; fine-tuning: lora, step 8" in card
    # The README's serving example: a body built from a row of the version's dataset (demo://chat_demo).
    import pandas as pd

    from steps.registry.request_example import request_body

    body = request_body("models:/tiny-text-flow@candidate", tracking_uri=uri, row=1, max_new_tokens=4)
    assert body["dataframe_records"] == [
        {"messages": [{"role": "user", "content": "Which steps does the flow run?"}]}
    ]
    answer = model.predict(pd.DataFrame(body["dataframe_records"]), params=body["params"])
    assert len(answer) == 1 and isinstance(answer[0], str)


@pytest.mark.slow
def test_text_flow_resume_continues_training_from_its_checkpoint(assets, tmp_path):
    """Text SFT through the flow: training killed after the step-4 checkpoint, then `resume`."""
    from mlflow.tracking import MlflowClient

    args = ["run", "--config_type", str(assets["yaml"]), "--demo", "--max_steps", "8", "--lora", "--lora_rank", "4",
            "--model_name", "tiny-text-resume"]  # fmt: skip
    cluster = ["--config-value", "cluster", '{"retries": 0}']
    failed = run_flow(tmp_path, *cluster, *args, env=flow_env(tmp_path, VLA_SFT_FAIL_AFTER_STEP="4"))
    assert failed.returncode != 0
    first = inspect_run(tmp_path)
    assert not first["successful"] and first["steps"].get("train") is False
    resumed = run_flow(tmp_path, "resume", "--origin-run-id", first["id"])
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    info = inspect_run(tmp_path)
    assert info["successful"] and info["lineage_id"] == f"SFTFlow-{first['id']}"
    assert (info["train_result"]["resumed_from"], info["train_result"]["final_step"]) == (4, 8)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(info["mlflow_run_id"], "train/loss")]
    assert sorted(steps) == list(range(1, 9)), steps  # every step once: the resumed run continues the history
    versions = client.search_model_versions("name = 'tiny-text-resume'")
    assert [v.tags["vla_sft.lineage_id"] for v in versions] == [info["lineage_id"]]  # registered once
