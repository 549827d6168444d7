"""Promotion gates and alias moves against a real MLflow store (sqlite) and a real server."""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from steps.registry.promote import Gate, PromotionError, list_versions, main, promote  # noqa: E402
from tests.mlflow_helpers import mlflow_server  # noqa: E402

NAME = "pi05_demo"


def _make_version(client: MlflowClient, tmp_path, metrics: dict[str, float], tag_metrics=None) -> str:
    exp = client.get_experiment_by_name("promote-test")
    exp_id = (
        exp.experiment_id if exp else client.create_experiment("promote-test", str(tmp_path / "artifacts"))
    )
    run = client.create_run(exp_id)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    folder = tmp_path / f"model-{run.info.run_id}"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\n")
    # A server accepts only sources inside the run's artifact root: log the folder there first.
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    try:
        client.get_registered_model(NAME)
    except Exception:
        client.create_registered_model(NAME)
    tags = {f"metric.{k}": str(v) for k, v in (tag_metrics or {}).items()}
    source = f"{client.get_run(run.info.run_id).info.artifact_uri}/model"
    version = client.create_model_version(NAME, source, run_id=run.info.run_id, tags=tags)
    return str(version.version)


def _champion(client: MlflowClient) -> str | None:
    holder = client.get_registered_model(NAME).aliases.get("champion")
    return None if holder is None else str(holder)


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_gate_parsing():
    gate = Gate.parse("val_action_mse <= 0.05")
    assert (gate.metric, gate.op, gate.threshold) == ("val_action_mse", "<=", 0.05)
    assert gate.passes(0.05) and not gate.passes(0.051) and gate.lower_is_better
    assert Gate.parse("success_rate>0.5").passes(0.6)
    assert Gate.parse("x==1e-3").threshold == 1e-3
    for bad in ("val_loss", "val_loss <= abc", "<= 3", "val_loss =< 3", "val loss < 1"):
        with pytest.raises(PromotionError, match="malformed gate"):
            Gate.parse(bad)


def test_gate_pass_moves_alias_and_records_who_why(store, tmp_path, monkeypatch):
    uri, client = store
    monkeypatch.setenv("USERNAME", "alice")
    v1 = _make_version(client, tmp_path, {"val_loss": 0.2, "val_action_mse": 0.04})
    result = promote(NAME, v1, gates=["val_action_mse<=0.05"], reason="first", tracking_uri=uri)
    assert result.promoted and not result.failures
    assert _champion(client) == v1
    tags = client.get_model_version(NAME, v1).tags
    assert tags["promoted.champion.by"] == "alice"
    assert tags["promoted.champion.reason"] == "first"
    assert "val_action_mse=0.04" in tags["promoted.champion.checks"]


def test_failing_gate_leaves_alias_untouched(store, tmp_path):
    uri, client = store
    v1 = _make_version(client, tmp_path, {"val_action_mse": 0.01})
    v2 = _make_version(client, tmp_path, {"val_action_mse": 0.09})
    assert promote(NAME, v1, tracking_uri=uri).promoted
    result = promote(NAME, v2, gates=["val_action_mse<=0.05"], tracking_uri=uri)
    assert not result.promoted
    assert [c.what for c in result.failures] == ["gate val_action_mse<=0.05"]
    assert _champion(client) == v1
    assert "promoted.champion.by" not in client.get_model_version(NAME, v2).tags


def test_must_beat_compares_with_current_holder(store, tmp_path):
    uri, client = store
    v1 = _make_version(client, tmp_path, {"val_loss": 0.30, "success_rate": 0.5})
    v2 = _make_version(client, tmp_path, {"val_loss": 0.35, "success_rate": 0.7})
    v3 = _make_version(client, tmp_path, {"val_loss": 0.25, "success_rate": 0.4})
    # No holder yet: the first champion passes must-beat.
    assert promote(NAME, v1, must_beat="champion", tracking_uri=uri).promoted
    # Worse val_loss (lower is better by default): refused.
    r2 = promote(NAME, v2, must_beat="champion", tracking_uri=uri)
    assert not r2.promoted and r2.failures[0].detail == "0.35 > 0.3"
    # The same version wins when the gate says success_rate is higher-is-better.
    r2b = promote(NAME, v2, must_beat="champion", gates=["success_rate>=0.6"], tracking_uri=uri)
    assert r2b.promoted and r2b.previous_holder == v1
    # v3 beats v2 on val_loss but fails the success gate.
    r3 = promote(NAME, v3, must_beat="champion", metric="val_loss", tracking_uri=uri)
    assert r3.promoted
    r_again = promote(
        NAME, v2, must_beat="champion", metric="success_rate", higher_is_better=True, tracking_uri=uri
    )
    assert r_again.promoted and _champion(client) == v2


def test_version_tags_override_run_metrics(store, tmp_path):
    uri, client = store
    v1 = _make_version(client, tmp_path, {"val_action_mse": 0.9}, tag_metrics={"val_action_mse": 0.01})
    assert promote(NAME, v1, gates=["val_action_mse<0.02"], tracking_uri=uri).promoted


def test_bad_requests_are_clear(store, tmp_path):
    uri, client = store
    v1 = _make_version(client, tmp_path, {"val_loss": 0.2})
    with pytest.raises(PromotionError, match=r"model 'pi05_demo' has no version 7 \(versions: 1\)"):
        promote(NAME, 7, tracking_uri=uri)
    with pytest.raises(PromotionError, match="no registered model named 'nope'"):
        promote("nope", 1, tracking_uri=uri)
    with pytest.raises(
        PromotionError, match=r"version 1 of 'pi05_demo' has no metric 'val_action_mse' \(has: val_loss\)"
    ):
        promote(NAME, v1, gates=["val_action_mse<=0.05"], tracking_uri=uri)
    with pytest.raises(PromotionError, match="malformed gate"):
        promote(NAME, v1, gates=["val_loss<<1"], tracking_uri=uri)
    assert "champion" not in client.get_registered_model(NAME).aliases


def test_cli_list_and_exit_codes(store, tmp_path, capsys):
    uri, client = store
    v1 = _make_version(client, tmp_path, {"val_loss": 0.2})
    v2 = _make_version(client, tmp_path, {"val_loss": 0.5})
    assert main(["--name", NAME, "--version", v1, "--tracking-uri", uri]) == 0
    assert main(["--name", NAME, "--version", v2, "--must-beat", "champion", "--tracking-uri", uri]) == 1
    assert main(["--name", NAME, "--version", "9", "--tracking-uri", uri]) == 2
    assert "has no version 9" in capsys.readouterr().err
    table = list_versions(NAME, tracking_uri=uri)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["version", "aliases", "created", "val_loss"]
    assert lines[2].split()[:2] == ["1", "champion"] and lines[3].split()[:2] == ["2", "-"]


def test_a_version_is_named_by_number_or_alias(store, tmp_path, capsys):
    uri, client = store
    _make_version(client, tmp_path, {"val_loss": 0.3})
    v2 = _make_version(client, tmp_path, {"val_loss": 0.2})
    client.set_registered_model_alias(NAME, "candidate", v2)  # what register does
    result = promote(NAME, "candidate", tracking_uri=uri)
    assert result.promoted and result.version == v2 and _champion(client) == v2
    assert main(["--name", NAME, "--from", "candidate", "--to", "staging", "--tracking-uri", uri]) == 0
    assert client.get_registered_model(NAME).aliases["staging"] == int(v2)
    with pytest.raises(PromotionError, match=r"no version or alias 'latest' \(aliases: candidate \(v2\), "
                                             r"champion \(v2\), staging \(v2\)\)"):  # fmt: skip
        promote(NAME, "latest", tracking_uri=uri)


def test_ties_read_as_ties_and_close_values_are_told_apart(store, tmp_path):
    uri, client = store
    v1 = _make_version(client, tmp_path, {"val_action_mse": 39.308879311169854})
    v2 = _make_version(client, tmp_path, {"val_action_mse": 39.308879311169854})
    v3 = _make_version(client, tmp_path, {"val_action_mse": 39.30887})
    assert promote(NAME, v1, tracking_uri=uri).promoted
    tie = promote(NAME, v2, must_beat="champion", metric="val_action_mse", tracking_uri=uri)
    assert not tie.promoted and tie.failures[0].detail == "39.3089 = 39.3089 (tie: not better)"
    close = promote(NAME, v3, must_beat="champion", metric="val_action_mse", tracking_uri=uri)
    assert close.promoted and close.checks[0].detail == "39.30887 < 39.30888"  # the digits that differ
    assert "39.30887" in close.table and "39.30888" in close.table


def test_list_shows_the_gated_metrics_within_100_columns(store, tmp_path):
    uri, client = store
    long_names = {f"eval/a_rather_long_metric_name_{i}": 0.5 for i in range(6)}
    v1 = _make_version(client, tmp_path, {"val_loss": 0.25, "train/loss": 0.1, **long_names},
                       tag_metrics={"val_action_mse": 39.308879311169854, "sim/success_rate": 0.5})  # fmt: skip
    _make_version(client, tmp_path, {"val_loss": 0.3})
    client.set_registered_model_alias(NAME, "candidate", v1)
    client.set_registered_model_alias(NAME, "champion", v1)
    lines = list_versions(NAME, tracking_uri=uri).splitlines()
    assert lines[0].split() == [
        "version",
        "aliases",
        "created",
        "val_loss",
        "val_action_mse",
        "sim/success_rate",
    ]
    assert lines[2].split()[:2] == ["1", "candidate,champion"] and lines[2].split()[-3:] == [
        "0.25",
        "39.31",
        "0.5",
    ]
    assert lines[3].split()[-3:] == ["0.3", "-", "-"]
    chosen = list_versions(NAME, metrics=("train/loss", *long_names), tracking_uri=uri).splitlines()
    assert max(len(line) for line in chosen) <= 100
    note = " ".join(
        line for line in chosen if not line[:1].isdigit() and "version" not in line and "--" not in line[:2]
    )
    assert chosen[0].split()[3] == "train/loss" and "choose with --metrics" in note
    assert "eval/a_rather_long_metric_name_5" in note


@pytest.mark.slow
def test_register_and_promote_over_http(tmp_path):
    with mlflow_server(tmp_path / "server") as uri:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        v1 = _make_version(client, tmp_path, {"val_action_mse": 0.03})
        v2 = _make_version(client, tmp_path, {"val_action_mse": 0.02})
        assert promote(NAME, v1, gates=["val_action_mse<=0.05"], tracking_uri=uri).promoted
        assert not promote(NAME, v2, gates=["val_action_mse<=0.01"], tracking_uri=uri).promoted
        assert promote(
            NAME, v2, must_beat="champion", gates=["val_action_mse<=0.05"], tracking_uri=uri
        ).promoted
        assert _champion(MlflowClient(tracking_uri=uri, registry_uri=uri)) == v2
