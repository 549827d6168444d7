"""The registered MLflow pyfunc: load by alias, same actions as the policy, served over HTTP."""

from __future__ import annotations

import json
import os
import sys
import urllib.request

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")

from steps.policy import Policy  # noqa: E402
from steps.registry.model_logging import example_input, log_policy_model, policy_signature, write_model_card  # noqa: E402
from steps.registry.pyfunc import decode_image, encode_image  # noqa: E402
from steps.registry.register import lineage_tags  # noqa: E402
from tests.policy_helpers import make_tiny_export  # noqa: E402
from tests.server_helpers import free_port, local_server  # noqa: E402


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyfunc")
    export = make_tiny_export(root, "pi05_metaworld")
    lineage = lineage_tags(lineage_id="SFTFlow-1", pathspec="SFTFlow/1", config_type="pi05_metaworld",
                           dataset="demo://metaworld_demo", dataset_revision=None, dataset_fingerprint="f1ng3r",
                           base_checkpoint=None, finetune="full", git_commit="abc")  # fmt: skip
    write_model_card(export, metrics={"val_loss": 0.5}, lineage=lineage)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # Artifacts in the temp folder, not ./mlruns (sqlite stores default to the working directory).
    mlflow.MlflowClient().create_experiment("pyfunc-test", artifact_location=str(root / "artifacts"))
    mlflow.set_experiment("pyfunc-test")
    client = mlflow.MlflowClient()
    run = client.create_run(client.get_experiment_by_name("pyfunc-test").experiment_id)
    info = log_policy_model(export, run_id=run.info.run_id, tracking_uri=uri)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # logging the model does not end the run
    client.create_registered_model("pi05_metaworld_test")
    version = client.create_model_version("pi05_metaworld_test", info.model_uri, run_id=run.info.run_id,
                                          model_id=info.model_id)  # fmt: skip
    client.set_registered_model_alias("pi05_metaworld_test", "champion", version.version)
    yield {"export": export, "uri": uri, "model_uri": "models:/pi05_metaworld_test@champion", "root": root}
    # set_registry_uri also exports MLFLOW_REGISTRY_URI, which every later subprocess (a flow run) would inherit.
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)


def _frame(rng, rows=2):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "observation.image": encode_image(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)),
                "state": rng.normal(size=4).tolist(),
                "task": "push the puck",
            }
            for _ in range(rows)
        ]
    )


def test_image_encoding_round_trip():
    image = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(image), column="c", row=0), image)
    with pytest.raises(ValueError, match="row 3, column 'cam': not a base64-encoded PNG/JPEG image"):
        decode_image("not an image", column="cam", row=3)


def test_pyfunc_by_alias_equals_policy(registered):
    model = mlflow.pyfunc.load_model(registered["model_uri"])
    df = _frame(np.random.default_rng(0))
    got = np.asarray(model.predict(df))
    policy = Policy.from_export(registered["export"], device="cpu")
    observations = [
        {"images": {"observation.image": decode_image(r["observation.image"], column="", row=0)},
         "state": r["state"], "task": r["task"]}
        for r in df.to_dict(orient="records")
    ]  # fmt: skip
    np.testing.assert_allclose(got, policy.predict(observations), atol=1e-6)
    assert got.shape == (2, 5, 4)


def test_logged_model_carries_export_and_card(registered):
    local = mlflow.artifacts.download_artifacts(registered["model_uri"])
    files = {p.name for p in __import__("pathlib").Path(local).rglob("*")}
    for name in (
        "model.safetensors",
        "norm_stats.json",
        "config_type.json",
        "tokenizer.model",
        "README.md",
        "MLmodel",
    ):
        assert name in files, name
    assert not any(name.endswith((".pkl", ".pickle")) for name in files)


def test_pyfunc_bad_input_is_clear(registered):
    model = mlflow.pyfunc.load_model(registered["model_uri"])
    df = _frame(np.random.default_rng(1), rows=1)
    with pytest.raises(
        Exception, match="observation 0: state has 2 values, config type 'pi05_metaworld' expects 4"
    ):
        model.predict(df.assign(state=[[0.0, 1.0]]))
    # MLflow's schema check names the missing column before the policy sees the row.
    with pytest.raises(Exception, match=r"missing inputs \['observation.image'\]"):
        model.predict(df.drop(columns=["observation.image"]))


def test_example_input_matches_schema(registered):
    policy = Policy.from_export(registered["export"], device="cpu")
    df = example_input(policy.config_type)
    assert list(df.columns) == ["observation.image", "state", "task"]


def test_explicit_signature_matches_a_real_prediction(registered):
    """The signature is written from the config type (no model run at logging time): it must equal what
    MLflow infers from the example input and the policy's real output."""
    from mlflow.models import infer_signature

    from steps.registry.pyfunc import PolicyModel

    wrapper = PolicyModel()
    wrapper.policy = Policy.from_export(registered["export"], device="cpu")
    example = example_input(wrapper.policy.config_type)
    inferred = infer_signature(example, wrapper.predict(None, example))
    explicit = policy_signature(wrapper.policy.config_type)
    assert explicit.to_dict() == inferred.to_dict()
    logged = mlflow.pyfunc.load_model(registered["model_uri"]).metadata.signature
    assert logged.to_dict() == explicit.to_dict()


def test_model_card_names_the_dataset_as_the_run_does(registered):
    card = (registered["export"] / "README.md").read_text().splitlines()
    # The lineage tags' id and fingerprint; no revision is known for the shipped folder, so none is shown.
    assert "- dataset: demo://metaworld_demo (fingerprint f1ng3r)" in card
    assert not any("lerobot/metaworld_mt50" in line or "n/a" in line for line in card if "dataset" in line)


def test_model_card_example_request_is_accepted(registered):
    import pandas as pd

    card = (registered["export"] / "README.md").read_text()
    body = json.loads(card.split("```json\n", 1)[1].split("\n```", 1)[0])
    model = mlflow.pyfunc.load_model(registered["model_uri"])
    assert np.asarray(model.predict(pd.DataFrame(body["dataframe_records"]))).shape == (1, 5, 4)


def test_request_example_is_a_real_frame_the_model_accepts(registered, tmp_path, capsys):
    """python -m steps.registry.request_example: a frame of the version's dataset (tag dataset.id) as a body."""
    import pandas as pd

    from data_adapters.lerobot_reader import LeRobotFrames
    from data_adapters.registry import get_config_type
    from steps.registry.request_example import main, request_body
    from steps.sim.metaworld.demonstrations import DEMO_DATASET

    client = mlflow.MlflowClient(registered["uri"])
    version = client.get_model_version_by_alias("pi05_metaworld_test", "champion")
    client.set_model_version_tag(version.name, version.version, "dataset.id", "demo://metaworld_demo")
    body = request_body(registered["model_uri"], tracking_uri=registered["uri"], episode=3, frame=7)
    (row,) = body["dataframe_records"]
    ct = get_config_type("pi05_metaworld")
    frames = LeRobotFrames(DEMO_DATASET, state_keys=ct.state_keys, action_keys=ct.action_keys,
                           camera_keys=ct.camera_keys, horizon=ct.action_horizon, episodes=[3])  # fmt: skip
    item = frames[7]
    np.testing.assert_array_equal(
        decode_image(row["observation.image"], column="i", row=0), item["images"]["observation.image"]
    )
    assert row["state"] == [float(x) for x in item["state"]] and row["task"] == item["task"]
    model = mlflow.pyfunc.load_model(registered["model_uri"])
    assert np.asarray(model.predict(pd.DataFrame(body["dataframe_records"]))).shape == (1, 5, 4)

    out = tmp_path / "body.json"
    assert (
        main(["--model", registered["model_uri"], "--out", str(out), "--tracking-uri", registered["uri"]])
        == 0
    )
    assert set(json.loads(out.read_text())["dataframe_records"][0]) == {"observation.image", "state", "task"}
    assert main(["--model", "models:/pi05_metaworld_test@nope", "--tracking-uri", registered["uri"]]) == 2
    assert (
        main(["--model", registered["model_uri"], "--frame", "999", "--tracking-uri", registered["uri"]]) == 2
    )
    assert main(["--model", "pi05_metaworld_test", "--tracking-uri", registered["uri"]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-3].startswith("error: --model: models:/pi05_metaworld_test@nope: ")
    assert err[-2] == "error: --frame: 999 is outside episode 0 (frames 0..45)"
    assert (
        err[-1]
        == "error: --model: 'pi05_metaworld_test' is not models:/<name>@<alias> or models:/<name>/<version>"
    )


@pytest.mark.slow
def test_served_endpoint_answers(registered):
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", registered["model_uri"],
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {"MLFLOW_TRACKING_URI": registered["uri"]}
    with local_server(cmd, f"http://127.0.0.1:{port}/ping", registered["root"] / "serve.log", env=env,
                      timeout_s=180):  # fmt: skip
        df = _frame(np.random.default_rng(2), rows=1)
        body = json.dumps({"dataframe_records": df.to_dict(orient="records")}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.loads(resp.read())
    served = np.asarray(answer["predictions"], dtype=np.float32)
    local = np.asarray(mlflow.pyfunc.load_model(registered["model_uri"]).predict(df))
    np.testing.assert_allclose(served, local, atol=1e-5)
