"""Tracking against a real `mlflow server` (behind a TCP proxy the tests take down): registration linked
to the logged model, names with quotes, promotion, concurrent registrations, and metric delivery through
an outage (each point once, in order), with its bounded wait and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steps.registry import register, tracking
from steps.train.tracking_queue import TrackingQueue, TrackingUnavailable
from tests.mlflow_helpers import mlflow_server
from tests.tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(proxy, URI through the proxy) of one `mlflow server` for the module."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(root) as direct:
        proxy = TcpProxy(int(direct.rsplit(":", 1)[1]))
        try:
            yield proxy, proxy.url
        finally:
            proxy.close()


@pytest.fixture
def proxy_up(server):
    proxy, uri = server
    yield proxy, uri
    if not proxy.is_up:
        proxy.up()


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    client = tracking.client_for(uri)
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


# --- names (fast) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "match"),
    [
        (
            "my model/with slashes",
            r"^--model_name: 'my model/with slashes' contains '/', which MLflow does not allow",
        ),
        ("a:b", r"contains ':'"),
        ("", r"must not be empty"),
        ("..", r"not a valid MLflow model name"),
        (" padded", r"not a valid MLflow model name"),
        ("x" * 257, r"longer than 256 characters"),
        ('it\'s "both"', r"contains both ' and \""),
    ],
)
def test_model_names_are_checked_against_mlflow_rules(name, match):
    with pytest.raises(ValueError, match=match):
        register.check_model_name(name)


def test_start_refuses_a_bad_model_name_and_credentials_in_the_uri(tmp_path):
    from steps.config.validate import InputError, validate_run_inputs

    ok = {"config_type": "pi05_metaworld", "demo": True, "tracking_uri": f"sqlite:///{tmp_path}/m.db"}
    with pytest.raises(InputError, match=r"^--model_name: 'my model/with slashes' contains '/'"):
        validate_run_inputs(**ok, model_name="my model/with slashes")
    assert validate_run_inputs(**ok, model_name="it's mine").model_name == "it's mine"
    with pytest.raises(InputError) as err:
        validate_run_inputs(**{**ok, "tracking_uri": "http://admin:s3cr3t-pw@127.0.0.1:5000"})
    message = str(err.value)
    assert "s3cr3t-pw" not in message and "admin" not in message
    assert message.startswith("MLFLOW_TRACKING_URI: http://[credentials]@127.0.0.1:5000 carries credentials")
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)" in message


# --- registration through the server -----------------------------------------------------------------


@pytest.mark.slow
def test_register_links_the_version_to_its_logged_model_and_promotes(proxy_up, tmp_path):
    """The VLA task's sequence (pyfunc logged model -> version) on a server, for a name with a quote:
    one READY version naming the logged model, the run still RUNNING, idempotent, loadable by alias,
    promotable, listable."""
    import mlflow
    import numpy as np

    from data_adapters.registry import get_config_type
    from steps.registry import model_logging, promote
    from steps.tasks.vla import _model_source
    from tests.policy_helpers import make_tiny_export

    _, uri = proxy_up
    name = "it's pi05"
    run_id, _ = tracking.get_or_create_run(uri, "register-test", "SFTFlow-r1")
    export = make_tiny_export(tmp_path, "pi05_metaworld")
    calls = []

    def log_model():
        calls.append(1)
        return _model_source(model_logging.log_policy_model(export, run_id=run_id, tracking_uri=uri, step=4))

    kwargs = dict(name=name, model_dir=export, run_id=run_id, lineage_id="SFTFlow-r1",
                  tags={"config_type": "pi05_metaworld"}, metrics={"val_loss": 0.5}, log_model=log_model)  # fmt: skip
    first = register.register_model(uri, **kwargs)
    again = register.register_model(uri, **{**kwargs, "metrics": {"val_loss": 0.25}})
    assert first.created and not again.created and first.version == again.version and calls == [1]
    client = tracking.client_for(uri)
    version = client.get_model_version(name, first.version)
    assert version.status == "READY" and version.run_id == run_id
    assert version.source.startswith("models:/m-")
    assert version.tags["vla_sft.lineage_id"] == "SFTFlow-r1"
    assert float(version.tags["metric.val_loss"]) == 0.25
    logged = client.get_logged_model(version.source[len("models:/") :])
    assert logged.source_run_id == run_id and str(logged.status) == "READY"
    # The server links a version to the logged model it names (the REST ModelVersion omits model_id).
    links = json.loads(logged.tags["mlflow.modelVersions"])
    assert [(m["name"], str(m["version"])) for m in links] == [(name, first.version)]
    assert client.get_run(run_id).info.status == "RUNNING"  # register closes the run itself, later
    assert [v.version for v in client.search_model_versions(register.name_filter(name))] == [first.version]
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
        actions = np.asarray(model.predict(model_logging.example_input(get_config_type("pi05_metaworld"))))
    finally:
        mlflow.set_tracking_uri(None)
    assert actions.shape == (1, 5, 4) and np.isfinite(actions).all()
    result = promote.promote(name, first.version, to="champion", gates=["val_loss<=1"], tracking_uri=uri)
    assert result.promoted
    assert str(client.get_registered_model(name).aliases["champion"]) == first.version
    assert "champion" in promote.list_versions(name, tracking_uri=uri)


CONCURRENT_REGISTER = """
import json, sys, time
from pathlib import Path
from steps.registry import register, tracking
uri, lineage, folder, start = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
run_id, _ = tracking.get_or_create_run(uri, "concurrent", lineage)
while time.time() < start:
    time.sleep(0.01)
v = register.register_model(uri, name="shared model", model_dir=folder, run_id=run_id, lineage_id=lineage,
                            tags={"who": lineage})
print("RESULT" + json.dumps({"lineage": lineage, "run_id": run_id, "version": v.version}))
"""


@pytest.mark.slow
def test_concurrent_runs_each_register_their_own_version(proxy_up, tmp_path):
    _, uri = proxy_up
    procs = []
    start = time.time() + 15  # every process has imported MLflow and made its run by then
    for i in range(4):
        folder = tmp_path / f"model{i}"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(bytes([i]) * 16)
        procs.append(subprocess.Popen([sys.executable, "-c", CONCURRENT_REGISTER, uri, f"SFTFlow-c{i}", str(folder),
                                       str(start)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        results.append(
            json.loads(next(x for x in out.splitlines() if x.startswith("RESULT"))[len("RESULT") :])
        )
    assert sorted(int(r["version"]) for r in results) == [1, 2, 3, 4]
    client = tracking.client_for(uri)
    for r in results:
        version = client.get_model_version("shared model", r["version"])
        assert version.run_id == r["run_id"] and version.tags["vla_sft.lineage_id"] == r["lineage"]
        assert version.tags["who"] == r["lineage"]


# --- metric delivery through an outage -------------------------------------------------------------------


@pytest.mark.slow
def test_points_survive_an_outage_and_a_resume_each_exactly_once(proxy_up, capsys):
    proxy, uri = proxy_up
    run_id, _ = tracking.get_or_create_run(uri, "queue-test", "SFTFlow-q1")
    queue = TrackingQueue(uri, run_id, retry_s=(0.5,))
    queue.put_params({"lr": 0.1})
    queue.put_metrics([("train/loss", 1.0 / s, s) for s in range(1, 6)])
    assert queue.wait_empty(60)
    proxy.down()
    started = time.monotonic()
    for s in range(6, 16):
        queue.put_metrics([("train/loss", 1.0 / s, s), ("val/loss", 2.0 / s, s)])
    assert time.monotonic() - started < 0.5  # the trainer's side never waits for the server
    time.sleep(3)  # several failed sends
    unsent = queue.unsent()
    assert [p[2] for p in unsent if p[0] == "train/loss"] == list(range(6, 16))
    assert "does not answer" in capsys.readouterr().err
    proxy.up()
    assert queue.wait_empty(60)
    queue.close(wait_s=10)
    assert "answers again" in capsys.readouterr().err
    assert _history(uri, run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 16)]
    # A resumed process requeues what its checkpoint said was unsent (here: all of it arrived), then its own.
    resumed = TrackingQueue(uri, run_id)
    resumed.put_metrics(unsent)
    resumed.put_metrics([("train/loss", 1.0 / s, s) for s in range(16, 19)])
    resumed.close(wait_s=60)
    assert _history(uri, run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 19)]
    assert [s for s, _ in _history(uri, run_id, "val/loss")] == list(range(6, 16))
    assert tracking.client_for(uri).get_run(run_id).data.params == {"lr": "0.1"}


@pytest.mark.slow
def test_close_waits_a_bounded_time_then_fails_with_one_line(proxy_up):
    proxy, uri = proxy_up
    run_id, _ = tracking.get_or_create_run(uri, "queue-test", "SFTFlow-q2")
    proxy.down()
    queue = TrackingQueue(uri, run_id, retry_s=(0.2,))
    queue.put_metrics([("train/loss", 0.5, 1), ("train/loss", 0.4, 2)])
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as err:
        queue.close(wait_s=2)
    assert 2 <= time.monotonic() - started < 8
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"MLflow tracking server {uri} did not take the last 2")
    assert "resume" in message


@pytest.mark.slow
def test_an_error_a_retry_cannot_fix_stops_sending_and_is_reported(proxy_up):
    _, uri = proxy_up
    queue = TrackingQueue(uri, "0" * 32, retry_s=(0.2,))  # no such run: HTTP 404 on every call
    queue.put_metrics([("train/loss", 0.5, 1)])
    with pytest.raises(TrackingUnavailable, match=r"refused the run's metrics .*1 item\(s\) not logged"):
        queue.close(wait_s=30)
    assert queue.permanent_error is not None


def test_a_failed_run_is_marked_and_a_resume_takes_it_back(tmp_path):
    """mark_failed names the step; claim_run by the resume sets RUNNING and keeps the history in tags; a run
    whose previous owner never reported (still RUNNING under another pathspec) is recorded as interrupted."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id, _ = tracking.get_or_create_run(uri, "exp", "SFTFlow-1", tags={tracking.PATHSPEC_TAG: "SFTFlow/1"})
    client = tracking.client_for(uri)
    assert tracking.claim_run(uri, run_id, pathspec="SFTFlow/1") is None  # its own run: nothing to do
    tracking.mark_failed(uri, run_id, step="train", pathspec="SFTFlow/1/train/4")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["vla_sft.failed_step"] == "train"
    assert tracking.claim_run(uri, run_id, pathspec="SFTFlow/2") == "FAILED"
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and "vla_sft.failed_step" not in run.data.tags
    assert run.data.tags["vla_sft.resumed_after"] == "train failed in SFTFlow/1"
    assert (
        run.data.tags[tracking.PATHSPEC_TAG] == "SFTFlow/2" and tracking.INTERRUPTED_TAG not in run.data.tags
    )
    # SFTFlow/2 is killed outright (nothing marks the run); the next resume finds it RUNNING under SFTFlow/2.
    assert tracking.claim_run(uri, run_id, pathspec="SFTFlow/3") == "killed"
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags[tracking.INTERRUPTED_TAG] == "SFTFlow/2"
