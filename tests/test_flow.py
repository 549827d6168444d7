"""The SFT flow: input validation in start, MLflow helpers, registration, packaging, and real runs.

Every flow run here is a real local Metaflow run in a subprocess, with its datastore, Metaflow home,
MLflow database and caches under tmp folders. The end-to-end runs are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from steps.config.validate import InputError, validate_run_inputs
from steps.registry import tracking
from tests.server_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
FLOW = REPO / "flows" / "sft_flow.py"


# --- helpers ---------------------------------------------------------------------------------


def flow_env(root: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_RUN_ID", None)
    env.pop(
        "MLFLOW_REGISTRY_URI", None
    )  # the run's registry is its tracking store, as for a user's first run
    env.update(
        USERNAME="dev",
        METAFLOW_HOME=str(root / "mfhome"),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root / "mfds"),
        METAFLOW_DEFAULT_DATASTORE="local",
        METAFLOW_DEFAULT_METADATA="local",
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        VLA_SFT_CACHE=str(root / "cache"),
        PYTHONPATH=str(REPO),
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


def run_flow(
    root: Path, *args: str, env: dict | None = None, timeout: float = 1500
) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(FLOW), *args], cwd=root, env=env or flow_env(root),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def inspect_run(root: Path, run_id: str | None = None) -> dict:
    """Steps, success and key artifacts of the (latest) SFTFlow run, read with the Metaflow client."""
    script = textwrap.dedent(f"""
        import json
        from metaflow import Flow, Run, namespace
        namespace(None)
        run = Run("SFTFlow/{run_id}") if {run_id!r} else Flow("SFTFlow").latest_run
        out = {{"id": run.id, "successful": run.successful, "finished": run.finished, "tags": sorted(run.tags),
               "steps": {{s.id: all(t.successful for t in s) for s in run}},
               "attempts": {{s.id: max(t.current_attempt for t in s) for s in run}}}}
        data = run["end"].task.data if run.successful else None
        if data is not None:
            dataset = data.norm_stats.get("metadata", {{}}).get("dataset")  # a dict for VLA runs, a name for text
            out.update(lineage_id=data.lineage_id, mlflow_run_id=data.mlflow_run_id, model_version=data.model_version,
                       train_result=data.train_result, eval_metrics=data.eval_metrics, run_config=data.run_config,
                       content_digest=dataset.get("content_digest") if isinstance(dataset, dict) else None)
        print("INSPECT" + json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=flow_env(root), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("INSPECT"))
    return json.loads(line[len("INSPECT") :])


# --- validation in start (fast) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"config_type": "pi05_metaword"},
            r"--config_type: unknown config type 'pi05_metaword'.*pi05_metaworld",
        ),
        ({"dataset": "/no/such/dataset"}, r"--dataset: local path /no/such/dataset does not exist"),
        ({"lora": True, "lora_rank": 0}, r"--lora_rank: must be an integer >= 1"),
        ({"max_steps": 0}, r"--max_steps: must be a positive integer"),
        ({"learning_rate": -1.0}, r"--learning_rate: must be a positive number"),
        ({"batch_size": 5, "nodes": 2}, r"--batch_size: global batch 5 is not divisible by the world size 2"),
        ({"eval_episodes": -1}, r"--eval_episodes"),
        (
            {"pretrained": "/no/weights", "demo": False},
            r"--pretrained: local path /no/weights does not exist",
        ),
        ({"pretrained": "org/weights"}, r"--pretrained: not used with --demo"),
        ({"dataset": "metaworld://tasks=not-a-task"}, r"--dataset:"),
        ({"remote": True}, r"MLFLOW_TRACKING_URI: sqlite:///.* remote runs need a tracking server"),
    ],
)
def test_validate_run_inputs_rejects_bad_values(kwargs, match, tmp_path):
    args = {
        "config_type": "pi05_metaworld",
        "demo": True,
        "tracking_uri": f"sqlite:///{tmp_path}/m.db",
        **kwargs,
    }
    with pytest.raises(InputError, match=match):
        validate_run_inputs(**args)


def test_validate_run_inputs_rejects_a_folder_that_is_not_a_lerobot_dataset(tmp_path):
    folder = tmp_path / "not_lerobot"
    folder.mkdir()
    with pytest.raises(
        InputError, match=rf"^--dataset: {folder} is not a LeRobot dataset \(no meta/info.json\)$"
    ):
        validate_run_inputs(
            config_type="pi05_metaworld", dataset=str(folder), tracking_uri=f"sqlite:///{tmp_path}/m.db"
        )


def test_validate_run_inputs_rejects_dataset_of_another_schema(tmp_path):
    from data_adapters.registry import get_config_type
    from data_adapters.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "libero", get_config_type("pi0_libero"), num_episodes=2,
                                  min_len=4, max_len=5, image_size=8)  # fmt: skip
    with pytest.raises(InputError, match=r"--dataset: .* does not match config type 'pi05_metaworld'"):
        validate_run_inputs(
            config_type="pi05_metaworld", dataset=str(root), tracking_uri=f"sqlite:///{tmp_path}/m.db"
        )
    rc = validate_run_inputs(config_type="pi0_libero", dataset=str(root), eval_episodes=1,
                             tracking_uri=f"sqlite:///{tmp_path}/m.db")  # fmt: skip
    assert (rc.data.dataset_kind, rc.data.dataset, rc.model.variant) == ("local", str(root.resolve()), "real")


def test_unreachable_mlflow_fails_fast():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(
        InputError, match=r"MLFLOW_TRACKING_URI: MLflow tracking URI http://127\.0\.0\.1:\d+ is unreachable"
    ):
        validate_run_inputs(config_type="pi05_metaworld", demo=True, tracking_uri=uri)
    assert time.monotonic() - started < 5


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking.resolve_tracking_uri() == "http://mlflow.internal:5000"
    with pytest.raises(tracking.TrackingError, match="does not exist"):
        tracking.check_reachable(f"sqlite:///{tmp_path}/missing/mlflow.db")


def test_demo_run_config_defaults_and_round_trip(tmp_path):
    from data_adapters.registry import get_config_type
    from steps.config.run_config import RunConfig

    rc = validate_run_inputs(
        config_type="pi05_metaworld", demo=True, tracking_uri=f"sqlite:///{tmp_path}/m.db"
    )
    assert (
        rc.data.dataset_kind == "demo"
        and rc.model.variant == "tiny"
        and rc.train.max_steps
        and rc.train.global_batch
    )
    assert (
        rc.lora is None
        and rc.finetune == "full"
        and rc.eval.sim_episodes == 2
        and rc.data.tokenizer == "tiny"
    )
    assert rc.config_type == get_config_type("pi05_metaworld") and rc.model_name == "pi05_metaworld"
    assert RunConfig.from_dict(json.loads(json.dumps(rc.to_dict()))) == rc


def test_demo_datasets_have_one_truthful_name(tmp_path):
    """The shipped simulator demos (Meta-World, LIBERO) and the generated data of other types are named apart; the
    fetched record carries the name (not the cache folder), with the fingerprint and a generated set's key."""
    from steps.fetch.run_inputs import fetch_run_dataset, synthetic_demo_key

    uri = f"sqlite:///{tmp_path}/m.db"
    shipped = validate_run_inputs(config_type="pi05_metaworld", demo=True, tracking_uri=uri)
    assert (shipped.data.dataset, shipped.data.dataset_kind) == ("demo://metaworld_demo", "demo")
    libero = validate_run_inputs(config_type="pi0_libero", demo=True, tracking_uri=uri)
    assert libero.data.dataset == "demo://libero_demo"
    generated = validate_run_inputs(config_type="pi05_calvin", demo=True, tracking_uri=uri)
    assert generated.data.dataset == "demo://synthetic/pi05_calvin"
    assert generated.flat_params()["data.dataset"] == "demo://synthetic/pi05_calvin"
    with pytest.raises(InputError, match=r"^--dataset: 'demo://synthetic/pi05_calvin' is not a demo dataset of "
                                         r"config type 'pi05_metaworld'; its demo dataset is 'demo://metaworld_demo'$"):  # fmt: skip
        validate_run_inputs(
            config_type="pi05_metaworld", dataset="demo://synthetic/pi05_calvin", tracking_uri=uri
        )

    fetched = fetch_run_dataset(shipped, cache_dir=tmp_path / "cache")
    assert (fetched.dataset_id, fetched.source, fetched.revision) == ("demo://metaworld_demo", "demo", None)
    assert fetched.path.endswith("demo_data/metaworld_demo") and len(fetched.fingerprint) >= 8
    made = fetch_run_dataset(generated, cache_dir=tmp_path / "cache")
    assert (made.dataset_id, made.revision) == (
        "demo://synthetic/pi05_calvin",
        synthetic_demo_key(generated.config_type),
    )
    assert made.path.startswith(str(tmp_path / "cache"))


def test_bad_cli_input_fails_in_start_within_seconds(tmp_path):
    """Four bad command lines, run concurrently: each fails in start with one 'Invalid input' line."""
    cases = {
        "config": (["--config_type", "pi05_metaword"], r"--config_type: unknown config type 'pi05_metaword'"),
        "dataset": (["--dataset", str(tmp_path / "nope")], "--dataset: local path"),
        "mlflow": ([], "is unreachable"),
        "lora": (["--lora", "--lora_rank", "0"], "--lora_rank: must be an integer >= 1"),
    }
    procs = {}
    started = time.monotonic()
    for name, (args, _) in cases.items():
        root = tmp_path / name
        root.mkdir()
        extra = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"} if name == "mlflow" else {}
        procs[name] = subprocess.Popen([sys.executable, str(FLOW), "run", "--demo", *args], cwd=root,
                                       env=flow_env(root, **extra), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for name, (_, expected) in cases.items():
        out, _ = procs[name].communicate(timeout=180)
        assert procs[name].returncode != 0, out[-2000:]
        assert "Invalid input:" in out, out[-2000:]
        lines = [
            line for line in out.splitlines() if expected in line or (name == "config" and "unknown" in line)
        ]
        assert lines, out[-2000:]
        assert "step fetch_data" not in out and "/fetch_data/" not in out  # nothing ran after start
        assert "Traceback" not in out
    # Four Metaflow start-ups in parallel on a 2-core machine; validation itself takes < 1 s.
    assert time.monotonic() - started < 120


# --- MLflow helpers and registration (fast, real sqlite store) ----------------------------------------


def test_run_per_lineage_is_reused_and_params_are_idempotent(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_a, created_a = tracking.get_or_create_run(uri, "exp", "SFTFlow-1", tags={"k": "v"})
    run_b, created_b = tracking.get_or_create_run(uri, "exp", "SFTFlow-1")
    run_c, created_c = tracking.get_or_create_run(uri, "exp", "SFTFlow-2")
    assert (created_a, created_b, created_c) == (True, False, True)
    assert run_a == run_b != run_c
    tracking.log_params(uri, run_a, {"x": 1, "y": "a"})
    tracking.log_params(uri, run_a, {"x": 1, "y": "a", "z": 2.5})  # a resume logs the same params again
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    assert client.get_run(run_a).data.params == {"x": "1", "y": "a", "z": "2.5"}
    assert client.get_experiment_by_name("exp").artifact_location.startswith((tmp_path / "mlruns").as_uri())
    assert tracking.lineage_id_for("SFTFlow", "7", None) == "SFTFlow-7"
    assert tracking.lineage_id_for("SFTFlow", "9", "7") == "SFTFlow-7"


def test_the_mlflow_run_has_kind_user_source_and_its_dataset_as_input(tmp_path, monkeypatch):
    """What MLflow's UI reads: the experiment's kind (it opens on its runs), the run's user and source, and
    the training dataset under "Datasets" (name = the run's id, digest = fingerprint); logged once per
    dataset even when a resume logs it again."""
    from mlflow.tracking import MlflowClient

    from steps.fetch.run_inputs import fetch_run_dataset
    from steps.registry.run_metadata import log_dataset_input

    monkeypatch.setenv("USERNAME", "alice")
    monkeypatch.delenv("METAFLOW_USER", raising=False)
    monkeypatch.delenv("SUDO_USER", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = validate_run_inputs(config_type="pi05_metaworld", demo=True, tracking_uri=uri)
    run_id = tracking.start_run_tracking(rc, "SFTFlow-3", run_name="r", pathspec="SFTFlow/3", metaflow_run_id="3",
                                         git_commit="0123abcd-dirty")  # fmt: skip
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert (
        client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"]
        == "custom_model_development"
    )
    tags = run.data.tags
    assert tags["mlflow.user"] == "alice" and tags["mlflow.source.git.commit"] == "0123abcd"
    assert tags["git_commit"] == "0123abcd-dirty" and tags["mlflow.source.type"] == "LOCAL"

    fetched = fetch_run_dataset(rc, cache_dir=tmp_path / "cache").to_dict()
    log_dataset_input(uri, run_id, fetched)
    log_dataset_input(uri, run_id, fetched)  # a resumed compute_norm_stats
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert (dataset.name, dataset.digest, dataset.source_type) == ("demo://metaworld_demo", fetched["fingerprint"],
                                                                   "local")  # fmt: skip
    assert json.loads(dataset.source)["uri"] == fetched["path"]
    assert json.loads(dataset.profile)["num_episodes"] == 15 and json.loads(dataset.profile)["held_out"] == 2
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "training")]


def test_a_hub_dataset_input_links_to_the_hub_at_its_commit():
    from steps.registry.run_metadata import dataset_source

    source_type, source = dataset_source({"source": "hub", "dataset_id": "lerobot/x", "revision": "c0ffee",
                                          "path": "/cache/snap/c0ffee"})  # fmt: skip
    assert (source_type, json.loads(source)) == ("hugging_face", {"path": "lerobot/x", "revision": "c0ffee"})
    s3 = dataset_source({"source": "s3", "dataset_id": "s3://b/p", "revision": "d1", "path": "/cache/x"})
    assert s3 == ("s3", json.dumps({"uri": "s3://b/p@d1"}))


FIRST_OPEN = """
import sys, time
from steps.registry import tracking
uri, lineage, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.005)
print("RUN", tracking.get_or_create_run(uri, "exp", lineage)[0])
"""


def test_concurrent_first_runs_in_one_folder_share_one_new_database(tmp_path):
    """Three processes open a database that does not exist yet at the same instant: without the lock one of
    them fails in MLflow's table creation (alembic 'Online migration expected to match one row', 'table ...
    already exists'); with it every one gets its run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    start = time.time() + 8  # every process has imported MLflow by then
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_OPEN, uri, f"SFTFlow-{i}", str(start)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]  # fmt: skip
    runs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        runs += [line.split()[1] for line in out.splitlines() if line.startswith("RUN ")]
    assert len(set(runs)) == 3
    from mlflow.tracking import MlflowClient

    assert (
        len(MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("exp").experiment_id]))
        == 3
    )


def test_register_is_idempotent_and_sets_alias(tmp_path):
    from mlflow.tracking import MlflowClient

    from steps.registry import register

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id, _ = tracking.get_or_create_run(uri, "exp", "SFTFlow-5")
    model_dir = tmp_path / "export"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    (model_dir / "config.json").write_text("{}")
    tags = register.lineage_tags(lineage_id="SFTFlow-5", pathspec="SFTFlow/5", config_type="pi05_metaworld",
                                 dataset="lerobot/x", dataset_revision="v1", dataset_fingerprint="abc",
                                 base_checkpoint=None, finetune="lora", git_commit="deadbeef")  # fmt: skip
    first = register.register_model(uri, name="pi05_metaworld", model_dir=model_dir, run_id=run_id,
                                    lineage_id="SFTFlow-5", tags=tags, metrics={"val_loss": 0.5})  # fmt: skip
    again = register.register_model(uri, name="pi05_metaworld", model_dir=model_dir, run_id=run_id,
                                    lineage_id="SFTFlow-5", tags=tags, metrics={"val_loss": 0.25})  # fmt: skip
    assert first.created and not again.created and first.version == again.version == "1"
    client = MlflowClient(uri)
    versions = client.search_model_versions("name = 'pi05_metaworld'")
    assert len(versions) == 1
    mv = client.get_model_version("pi05_metaworld", "1")
    assert mv.tags["vla_sft.lineage_id"] == "SFTFlow-5" and mv.tags["dataset.fingerprint"] == "abc"
    assert float(mv.tags["metric.val_loss"]) == 0.25
    aliases = client.get_registered_model("pi05_metaworld").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"candidate": "1"}
    assert {f.path for f in client.list_artifacts(run_id, "model")} == {
        "model/config.json",
        "model/model.safetensors",
    }
    # Another training run (lineage) of the same config type gets its own version.
    other_run, _ = tracking.get_or_create_run(uri, "exp", "SFTFlow-6")
    second = register.register_model(uri, name="pi05_metaworld", model_dir=model_dir, run_id=other_run,
                                     lineage_id="SFTFlow-6", tags={**tags, "vla_sft.lineage_id": "SFTFlow-6"})  # fmt: skip
    assert second.created and second.version == "2"
    with pytest.raises(ValueError, match="model_dir: .* is not a folder"):
        register.register_model(
            uri, name="m", model_dir=tmp_path / "none", run_id=run_id, lineage_id="x", tags={}
        )


def test_eval_files_carried_as_bytes_are_logged_under_their_names(tmp_path):
    """evaluate hands its plots and rollout media to register as bytes; register logs them (same base
    name in two folders included) where evaluate used to."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id, _ = tracking.get_or_create_run(uri, "exp", "SFTFlow-8")
    contents = {"plots/a.png": b"plot", "rollouts/a.png": b"strip", "rollouts/t_seed1_fail.gif": b"gif"}
    tracking.log_file_contents(uri, run_id, contents, artifact_path="eval")
    tracking.log_file_contents(uri, run_id, {}, artifact_path="eval")  # nothing to log: no error
    client = MlflowClient(uri)
    for name, data in contents.items():
        local = client.download_artifacts(run_id, f"eval/{name}", str(tmp_path / "dl"))
        assert Path(local).read_bytes() == data


# --- packaging (fast) ---------------------------------------------------------------------------------


def test_code_package_ships_project_packages(tmp_path):
    """`package save` holds steps/, model_zoo/, data_adapters/, flows/ and the torchrun extension, and
    the project imports from the unpacked package alone (as on a remote task)."""
    result = run_flow(tmp_path, "package", "save", str(tmp_path / "pkg.tgz"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with tarfile.open(tmp_path / "pkg.tgz") as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "unpacked", filter="data")
    for name in ("sft_flow.py", "steps/train/trainer.py", "steps/registry/tracking.py", "model_zoo/pi0.py",
                 "data_adapters/config_types.py", "flows/torchrun_compat.py"):  # fmt: skip
        assert name in names, name
    assert any("metaflow_extensions/torchrun" in n for n in names)
    probe = ("import steps.train.launch, model_zoo.pi0, data_adapters.transforms, flows.torchrun_compat as t; "
             "print(steps.train.launch.__file__); print(t.__file__)")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path / "unpacked", env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(line.startswith(str(tmp_path / "unpacked")) for line in proc.stdout.split())


# --- real runs (slow) --------------------------------------------------------------------------------


def _mlflow_checks(root: Path, info: dict, *, expect_world_size: int) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(info["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["vla_sft.lineage_id"] == info["lineage_id"]
    assert run.data.tags["metaflow.pathspec"] == f"SFTFlow/{info['id']}"
    assert run.data.params["data.config_type"] == "pi05_metaworld"
    assert run.data.params["world_size"] == str(expect_world_size)
    assert "train/loss" in run.data.metrics and "eval/val_loss" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "train/loss")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)), "duplicate metric steps after resume"
    assert max(steps) == info["train_result"]["final_step"]
    assert min(steps) == 1, "steps before the resumed checkpoint were lost"  # flushed with each checkpoint
    assert "eval/val_action_mse" in run.data.metrics
    plots = {f.path for f in client.list_artifacts(run.info.run_id, "eval/plots")}
    assert {"eval/plots/action_trajectories.png", "eval/plots/error_by_step.png"} <= plots
    mv = info["model_version"]
    versions = client.search_model_versions(f"name = '{mv['name']}'")
    mine = [v for v in versions if v.tags.get("vla_sft.lineage_id") == info["lineage_id"]]
    assert len(mine) == 1, "the model must be registered exactly once per lineage"
    tags = mine[0].tags
    assert tags["metaflow.pathspec"] == f"SFTFlow/{info['id']}"
    assert tags["config_type"] == "pi05_metaworld" and tags["finetune"] == "full"
    assert tags["dataset.fingerprint"] and "metric.val_loss" in tags
    # The digest of every state/action value read (the statistics' own), beside the meta-only fingerprint.
    assert len(info["content_digest"]) == 32 and tags["dataset.content_digest"] == info["content_digest"]
    assert (
        tags["dataset.id"] == run.data.params["data.dataset"] == "demo://metaworld_demo"
    )  # one name everywhere
    assert str(client.get_registered_model(mv["name"]).aliases["candidate"]) == str(mine[0].version)
    runs = client.search_runs([run.info.experiment_id], f"tags.`vla_sft.lineage_id` = '{info['lineage_id']}'")
    assert len(runs) == 1, "one MLflow run per lineage"
    # The registered version is the pyfunc policy: it loads by alias and answers raw observations.
    import mlflow
    import numpy as np

    from data_adapters.registry import get_config_type
    from steps.registry.model_logging import example_input

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model(f"models:/{mv['name']}@candidate")
        assert np.asarray(model.predict(example_input(get_config_type("pi05_metaworld")))).shape == (1, 5, 4)
    finally:
        mlflow.set_tracking_uri(None)


def _assert_retried_after(log: str, run_id: str, backoff_s: float) -> None:
    """The retried train attempt said it waits ``backoff_s`` and resumed training that much later (Metaflow's
    log timestamps)."""
    from datetime import datetime

    lines = [x for x in log.splitlines() if f"[{run_id}/train/" in x]
    wait = next(i for i, x in enumerate(lines) if f"waiting {backoff_s:g} s before retrying" in x)
    stamp = lambda line: datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")  # noqa: E731
    resumed = next(x for x in lines[wait:] if "resumed from" in x)
    assert (stamp(resumed) - stamp(lines[wait])).total_seconds() >= backoff_s


@pytest.mark.slow
def test_demo_flow_end_to_end_on_two_local_nodes_with_a_preemption(tmp_path):
    """`run --demo` with @torchrun on 2 local nodes (gloo). Both nodes' training is killed after the
    step-6 checkpoint (VLA_SFT_FAIL_AFTER_STEP); @retry's second attempt continues from it. Every step
    succeeds; MLflow has params, metrics, artifacts and one registered version with lineage tags."""
    env = flow_env(tmp_path, VLA_SFT_FAIL_AFTER_STEP="6")
    cluster = '{"nodes": 2, "retries": 1, "retry_backoff_s": 6}'
    result = run_flow(tmp_path, "--config-value", "cluster", cluster, "run", "--demo",
                      "--max_steps", "12", "--sim_episodes", "1", "--sim_max_steps", "15", env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    info = inspect_run(tmp_path)
    assert info["successful"]
    assert set(info["steps"]) == {"start", "fetch_data", "compute_norm_stats", "train", "join", "evaluate",
                                  "register", "end"} and all(info["steps"].values())  # fmt: skip
    assert info["attempts"]["train"] == 1  # attempt 0 was killed, attempt 1 finished
    _assert_retried_after(result.stdout + result.stderr, info["id"], 6)
    assert info["train_result"]["world_size"] == 2
    assert info["train_result"]["resumed_from"] == 6
    assert info["train_result"]["final_step"] == info["run_config"]["train"]["max_steps"] == 12
    assert f"mlflow_run_id:{info['mlflow_run_id']}" in info["tags"]
    _mlflow_checks(tmp_path, info, expect_world_size=2)
    # The demo reports a success rate from real Meta-World rollouts (3 tasks x 1 episode here).
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(info["mlflow_run_id"]).data.metrics
    assert metrics["eval/sim/episodes"] == 3.0 and 0.0 <= metrics["eval/sim/success_rate"] <= 1.0


@pytest.mark.slow
def test_failure_in_train_then_resume_continues_from_checkpoint(tmp_path):
    """Kill training after the step-6 checkpoint (VLA_SFT_FAIL_AFTER_STEP, no retries), then `resume`."""
    cluster = ["--config-value", "cluster", '{"retries": 0}']
    # The demo checkpoints every max_steps // 4 = 3 steps; no rollouts (the other demo test has them).
    args = ["run", "--demo", "--max_steps", "12", "--sim_episodes", "0"]
    failed = run_flow(tmp_path, *cluster, *args, env=flow_env(tmp_path, VLA_SFT_FAIL_AFTER_STEP="6"))
    assert failed.returncode != 0
    first = inspect_run(tmp_path)
    assert not first["successful"] and first["steps"].get("train") is False
    resumed = run_flow(tmp_path, "resume", "--origin-run-id", first["id"])  # configs come from the origin run
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    info = inspect_run(tmp_path)
    assert info["id"] != first["id"] and info["successful"]
    assert info["lineage_id"] == f"SFTFlow-{first['id']}"
    assert info["train_result"]["resumed_from"] == 6
    assert info["train_result"]["final_step"] == info["run_config"]["train"]["max_steps"]
    _mlflow_checks(tmp_path, info, expect_world_size=1)


@pytest.mark.slow
def test_custom_yaml_config_type_needs_no_file_after_start(tmp_path):
    """The config type is resolved once in start: with the YAML deleted, a resumed run still trains,
    evaluates and registers (a remote node never has the file either)."""
    yaml_path = tmp_path / "configs" / "my_robot.yaml"
    yaml_path.parent.mkdir(parents=True)
    yaml_path.write_text("extends: pi0_libero\nname: my_robot\naction_horizon: 4\n")
    # No closed loop: this test is about the config type, not LIBERO (tests/test_libero.py).
    args = ["run", "--config_type", str(yaml_path), "--demo", "--max_steps", "4", "--sim_episodes", "0"]
    cluster = ["--config-value", "cluster", '{"retries": 0}']
    failed = run_flow(tmp_path, *cluster, *args, env=flow_env(tmp_path, VLA_SFT_FAIL_AFTER_STEP="2"))
    assert failed.returncode != 0
    first = inspect_run(tmp_path)
    assert first["steps"]["start"] and first["steps"].get("train") is False
    yaml_path.unlink()
    resumed = run_flow(tmp_path, "resume", "--origin-run-id", first["id"])
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    info = inspect_run(tmp_path)
    assert info["successful"] and info["train_result"]["resumed_from"] == 2
    assert info["run_config"]["data"]["config_type"]["name"] == "my_robot"
    assert info["run_config"]["data"]["config_type"]["action_horizon"] == 4
    assert info["model_version"]["name"] == "my_robot"


# --- flow plumbing (fast) ------------------------------------------------------------------------------


def test_cluster_config_defaults_and_errors():
    from flows.cluster import ClusterConfigError, parse_cluster

    cfg = parse_cluster("")
    assert cfg["nodes"] == 1 and cfg["procs_per_node"] == 1 and cfg["eval_gpus"] == 0
    gpu = parse_cluster('{"nodes": 2, "gpus_per_node": 8}')
    assert gpu["procs_per_node"] == 8 and gpu["eval_gpus"] == 1
    assert parse_cluster("nodes: 3\nbackend: kubernetes\nimage: reg/vla:1\n")["nodes"] == 3
    with pytest.raises(ClusterConfigError, match=r"unknown key\(s\) \['gpu'\]"):
        parse_cluster('{"gpu": 1}')
    with pytest.raises(ClusterConfigError, match="nodes must be an integer >= 1"):
        parse_cluster('{"nodes": 0}')
    with pytest.raises(ClusterConfigError, match="multi-node remote run needs an image"):
        parse_cluster('{"nodes": 2, "backend": "batch"}')


def test_train_config_from_plan_with_options_and_fault_injection(tmp_path, monkeypatch):
    from steps.train import launch as train_launch

    rc = validate_run_inputs(config_type="pi05_metaworld", demo=True, lora=True, lora_rank=8,
                             train_options={"seed": 3}, tracking_uri=f"sqlite:///{tmp_path}/m.db")  # fmt: skip
    inputs = train_launch.NodeInputs("/data", "/ns.json", "/tok.model")
    kwargs = dict(train_episodes=[0, 1], val_episodes=[2], checkpoint_dir="s3://bucket/ckpt/L1",
                  export_dir="/tmp/export", metrics_file=None, tracking_uri=None)  # fmt: skip
    monkeypatch.delenv(train_launch.FAULT_ENV, raising=False)
    config = train_launch.build_train_config(rc, inputs, **kwargs)
    assert config.model_variant == "tiny" and config.lora.rank == 8 and config.seed == 3
    assert config.max_steps == rc.train.max_steps and config.fail_after_step is None and not config.mlflow
    monkeypatch.setenv(train_launch.FAULT_ENV, "4")
    assert train_launch.build_train_config(rc, inputs, **kwargs).fail_after_step == 4
    pinned = train_launch.NodeInputs("/data", "/ns.json", "/tok.model", dataset_revision="c" * 40)
    assert train_launch.build_train_config(rc, pinned, **kwargs).dataset_revision == "c" * 40
    assert train_launch.export_dir_for("s3://bucket/ckpt/L1", tmp_path) == str(tmp_path / "export")
    assert train_launch.export_dir_for("/ckpt/L1", tmp_path) == "/ckpt/L1/export"
    with pytest.raises(ValueError, match=r"--train_options: unknown TrainConfig field\(s\) \['sed'\]"):
        train_launch.check_train_options({"sed": 3})
    with pytest.raises(ValueError, match=r"set by the flow itself"):
        train_launch.check_train_options({"checkpoint_dir": "/x"})


def test_tokenizer_specs(tmp_path):
    from steps.fetch.run_inputs import check_tokenizer_spec, resolve_tokenizer

    path = resolve_tokenizer("tiny", cache_dir=tmp_path)
    assert path.is_file() and resolve_tokenizer("tiny", cache_dir=tmp_path) == path  # cached
    assert resolve_tokenizer(str(path)) == path
    with pytest.raises(ValueError, match="--tokenizer: .* is not a file"):
        check_tokenizer_spec(str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="hf://<org>/<repo>/<file>"):
        check_tokenizer_spec("hf://google/paligemma")


def test_cluster_backend_puts_every_step_on_kubernetes(tmp_path):
    """`backend: kubernetes` in the cluster Config decorates every step (checked offline with `show`)."""
    cluster = '{"backend": "kubernetes", "image": "registry/vla-sft:1", "nodes": 2, "gpus_per_node": 8}'
    env = flow_env(tmp_path, METAFLOW_DATASTORE_SYSROOT_S3="s3://bucket/metaflow")
    result = run_flow(tmp_path, "--datastore", "s3", "--config-value", "cluster", cluster, "show", env=env,
                      timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("\nStep ") == 8
    assert result.stdout.count("@kubernetes") == 8
