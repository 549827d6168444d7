"""``python -m steps.serve``: openpi's websocket protocol, tested with the real openpi-client.

The client runs in its own venv (tests/openpi_client_venv.py: openpi-client 0.1.2 pins numpy < 2). Every
expected action comes from the exported model called directly through the training transforms
(``direct_actions``), with the noise the server's seed draws, never through ``steps.policy``; the
observations are built here from dataset frames, with the key names openpi's examples use.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from data_adapters.config_types import ConfigType
from data_adapters.lerobot_reader import LeRobotFrames
from data_adapters.normalization import EPS, NormStats
from data_adapters.registry import get_config_type
from data_adapters.tokenizer import PromptTokenizer
from data_adapters.transforms import InputTransform, OutputTransform, collate
from model_zoo.checkpoint import load_model
from steps.serve import protocol
from steps.serve.loading import ModelSourceError, resolve_export, without_credentials
from steps.serve.observations import ObservationError, ObservationMapper
from tests.openpi_client_venv import run_probe
from tests.policy_helpers import make_tiny_export
from tests.server_helpers import free_port, local_server

REPO = Path(__file__).resolve().parents[1]
LIBERO_KEYS = ("observation/image", "observation/wrist_image", "observation/state", "prompt")


# --- helpers ---------------------------------------------------------------------------------------


def direct_actions(export: Path, raws: list[dict], *, seed: int = 0, num_steps: int = 10):
    """(robot-unit actions, normalized model actions) per raw frame: the exported weights called
    through the training transforms, each frame with the noise a seed-``seed`` one-observation call
    draws."""
    cfg = ConfigType.from_dict(json.loads((export / "config_type.json").read_text()))
    norm_stats = NormStats.load(export / "norm_stats.json")
    tokenizer = PromptTokenizer(export / "tokenizer.model", cfg.max_token_len)
    model = load_model(export).eval()
    transform = InputTransform(cfg, norm_stats, tokenizer, train=False)
    output = OutputTransform(cfg, norm_stats)
    robot, normalized = [], []
    for raw in raws:
        batch = collate([transform(raw)])
        shape = (1, model.config.action_horizon, model.config.action_dim)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            model_actions = model.sample_actions(batch, num_steps=num_steps, noise=noise).numpy()
        normalized.append(model_actions[0])
        robot.append(output(model_actions, raw["state"][None])[0])
    return robot, normalized


def dataset_frames(root: Path, cfg, indices, cache: Path) -> list[dict]:
    frames = LeRobotFrames(root, state_keys=cfg.state_keys, action_keys=cfg.action_keys,
                           camera_keys=cfg.camera_keys, horizon=cfg.action_horizon, cache_dir=cache)  # fmt: skip
    return [{key: frames[i][key] for key in ("images", "state", "task")} for i in indices]


def serve_cmd(model: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "steps.serve",
        "--model",
        model,
        "--port",
        str(port),
        "--device",
        "cpu",
        *extra,
    ]


def array_ref(arrays: dict, name: str, value: np.ndarray) -> dict:
    arrays[name] = value
    return {"array": name}


def libero_obs(arrays: dict, name: str, frame: dict, **override) -> dict:
    """The dict openpi's LIBERO example sends (examples/libero/main.py): uint8 HWC images, float64 state."""
    obs = {
        "observation/image": array_ref(arrays, f"{name}.image", frame["images"]["image"]),
        "observation/wrist_image": array_ref(arrays, f"{name}.wrist", frame["images"]["wrist_image"]),
        "observation/state": array_ref(arrays, f"{name}.state", frame["state"].astype(np.float64)),
        "prompt": frame["task"],
    }
    for key, value in override.items():
        key = key.replace("__", "/")
        if value is None:
            del obs[key]
        else:
            obs[key] = array_ref(arrays, f"{name}.{key}", value) if isinstance(value, np.ndarray) else value
    return obs


@pytest.fixture(scope="module")
def libero_server(tmp_path_factory):
    """A tiny pi0_libero export (delta arm dims, z-score) served from its folder, and 3 dataset frames."""
    from data_adapters.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("serve-libero")
    cfg = get_config_type("pi0_libero")
    export = make_tiny_export(root, "pi0_libero")
    # Not 224: the server must resize exactly as training does.
    dataset = make_synthetic_dataset(
        root / "libero", cfg, num_episodes=2, min_len=3, max_len=3, image_size=96
    )
    frames = dataset_frames(dataset, cfg, [0, 2, 4], root / "cache")
    port = free_port()
    cmd = serve_cmd(str(export), port, "--max-message-mb", "2")
    with local_server(cmd, f"http://127.0.0.1:{port}/healthz", root / "serve.log", timeout_s=180):
        yield {"export": export, "frames": frames, "port": port, "root": root}


# --- the codec (fast) ------------------------------------------------------------------------------


def test_codec_round_trips_what_openpi_client_sends():
    values = {
        "image": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
        "state": np.array([0.5, -1.25], dtype=np.float64),
        "big_endian": np.array([1, 2], dtype=">i4"),
        "transposed": np.arange(6, dtype=np.float32).reshape(2, 3).T,
        "flag": np.bool_(True),
        "count": np.int64(7),
        "prompt": "pick up the bowl",
        "nested": {"cams": [np.zeros((1, 1, 3), np.uint8)]},
    }
    out = protocol.unpack(protocol.pack(values))
    for key in ("image", "state", "big_endian", "transposed"):
        np.testing.assert_array_equal(out[key], values[key])
        assert out[key].dtype == values[key].dtype and out[key].flags.writeable
    assert out["flag"] is np.True_ and out["count"] == 7 and out["count"].dtype == np.int64
    assert out["prompt"] == "pick up the bowl" and out["nested"]["cams"][0].shape == (1, 1, 3)


def _raw_array(dtype: str, shape: list, data: bytes) -> bytes:
    return msgpack.packb(
        {"observation/image": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}}
    )


@pytest.mark.parametrize("dtype", ["|O", "|V8", "<c16", "<M8[ns]", "i4,f8", "object"])
def test_codec_refuses_object_void_complex_and_other_dtypes(dtype):
    with pytest.raises(protocol.ProtocolError, match=r"^'observation/image': dtype .* is refused"):
        protocol.unpack(_raw_array(dtype, [1], b"\0" * 8))
    with pytest.raises(TypeError, match="cannot send numpy dtype complex128"):
        protocol.pack({"x": np.zeros(2, np.complex128)})


def test_codec_checks_the_byte_length_and_shape():
    with pytest.raises(
        protocol.ProtocolError,
        match=r"^'observation/image': array data has 10 bytes, but dtype \|u1 x shape \[4, 4, 3\] needs 48$",
    ):
        protocol.unpack(_raw_array("|u1", [4, 4, 3], b"\0" * 10))
    with pytest.raises(
        protocol.ProtocolError, match=r"array shape must be a list of at most 32 integers >= 0"
    ):
        protocol.unpack(_raw_array("|u1", [-1, 2], b""))
    with pytest.raises(protocol.ProtocolError, match="the message is not valid msgpack"):
        protocol.unpack(b"\xc1")
    deep: dict = {}
    for _ in range(protocol.MAX_DEPTH + 2):
        deep = {"a": deep}
    with pytest.raises(protocol.ProtocolError, match="nested deeper than 16 levels"):
        protocol.unpack(msgpack.packb(deep))


# --- observation keys per config type (fast) ---------------------------------------------------------


def test_observation_keys_declared_per_config_type():
    keys = {
        name: dict(get_config_type(name).client_observation_keys)
        for name in ("pi05_libero", "pi05_metaworld")
    }
    assert keys["pi05_libero"] == {"image": "observation/image", "wrist_image": "observation/wrist_image",
                                   "state": "observation/state", "task": "prompt"}  # fmt: skip
    assert keys["pi05_metaworld"] == {"observation.image": "observation/image", "state": "observation/state",
                                      "task": "prompt"}  # fmt: skip
    for name in ("pi0_maniskill", "pi05_calvin"):
        cfg = get_config_type(name)
        assert set(cfg.client_observation_keys) == {*cfg.camera_keys, "state", "task"}
    roundtrip = ConfigType.from_dict(json.loads(json.dumps(get_config_type("pi05_libero").to_dict())))
    assert roundtrip == get_config_type("pi05_libero")


def test_yaml_client_keys_explicit_derived_and_checked(tmp_path):
    base = "extends: pi05_maniskill\nname: arm\n"
    path = tmp_path / "arm.yaml"
    # New cameras, no client_keys: the inherited mapping (naming the old camera) gives way to the default.
    path.write_text(base + "cameras: {base_0_rgb: top, left_wrist_0_rgb: wrist}\n")
    assert dict(get_config_type(str(path)).client_observation_keys) == {
        "top": "observation/image", "wrist": "observation/wrist_image", "state": "observation/state",
        "task": "prompt"}  # fmt: skip
    path.write_text(
        base + "client_keys: {observation.images.top: cam/top, state: joints, task: instruction}\n"
    )
    assert get_config_type(str(path)).client_observation_keys["observation.images.top"] == "cam/top"
    path.write_text(base + "client_keys: {state: joints, task: instruction}\n")
    with pytest.raises(ValueError, match=r"client_keys must be a mapping with exactly the keys "
                                         r"\['observation.images.top', 'state', 'task'\]"):  # fmt: skip
        get_config_type(str(path))
    path.write_text(base + "client_keys: {observation.images.top: a, state: a, task: b}\n")
    with pytest.raises(ValueError, match="client_keys must be a mapping to distinct non-empty client keys"):
        get_config_type(str(path))


def test_observation_mapper_names_the_bad_key():
    mapper = ObservationMapper(get_config_type("pi0_libero"))
    good = {"observation/image": np.zeros((8, 8, 3), np.uint8), "observation/wrist_image": np.zeros((8, 8, 3), np.uint8),
            "observation/state": np.zeros(8), "prompt": "go", "extra": 1}  # fmt: skip
    raw = mapper(good)
    assert set(raw["images"]) == {"image", "wrist_image"} and raw["state"].dtype == np.float32
    cases = [
        ({"observation/wrist_image": None}, r"^observation is missing 'observation/wrist_image' \(config type 'pi0_libero'"),
        ({"observation/state": np.zeros(7)}, r"^'observation/state' must have shape \[8\] \(config type 'pi0_libero'\), got \[7\]$"),
        ({"observation/state": np.array(["a"] * 8)}, r"^'observation/state' must be a number array of shape \[8\], got <U1"),
        ({"observation/state": np.full(8, np.nan)}, r"^'observation/state' has non-finite values"),
        ({"observation/image": np.zeros((8, 8, 3), np.float32)},
         r"^'observation/image' must be a uint8 image array \[height, width, 3\], got float32 array of shape \[8, 8, 3\]$"),
        ({"observation/image": np.zeros((3, 8, 8), np.uint8)}, r"^'observation/image' must be a uint8 image array"),
        ({"prompt": 3}, r"^'prompt' must be a string \(the task instruction\), got int$"),
    ]  # fmt: skip
    for change, match in cases:
        obs = {**good, **change}
        obs = {k: v for k, v in obs.items() if v is not None}
        with pytest.raises(ObservationError, match=match):
            mapper(obs)


# --- the command line and model sources (fast) --------------------------------------------------------


def test_resolve_export_from_export_and_pyfunc_folders(tmp_path):
    export = make_tiny_export(tmp_path / "a")
    assert resolve_export(str(export), tmp_path) == export
    pyfunc = tmp_path / "pyfunc"
    (pyfunc / "artifacts").mkdir(parents=True)
    export.rename(pyfunc / "artifacts" / "export")
    assert resolve_export(str(pyfunc), tmp_path) == pyfunc / "artifacts" / "export"
    with pytest.raises(
        ModelSourceError,
        match=r"holds no vla-sft export \(no config_type.json in it or in artifacts/export\)",
    ):
        resolve_export(str(tmp_path / "a"), tmp_path)
    with pytest.raises(
        ModelSourceError, match=r"^--model: nope/x is neither a folder nor an MLflow model URI"
    ):
        resolve_export("nope/x", tmp_path)
    assert without_credentials("https://user:secret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cases = [
        (["--model", str(tmp_path / "missing")], r"^error: --model: .*missing is neither a folder nor an MLflow"),
        (["--model", "models:/no_such_model@champion", "--tracking-uri", uri],
         r"^error: --model: cannot download models:/no_such_model@champion from MLflow at sqlite:///"),
        (["--model", "x", "--port", "70000"], r"error: --port: must be in 0\.\.65535, got 70000"),
    ]  # fmt: skip
    for args, match in cases:
        proc = subprocess.run([sys.executable, "-m", "steps.serve", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines and re.search(match, lines[-1]), proc.stderr
        assert "Traceback" not in proc.stderr


# --- the real openpi-client against a real server (slow) ----------------------------------------------


@pytest.mark.slow
def test_openpi_client_libero_actions_match_the_model(libero_server, tmp_path):
    frames, export = libero_server["frames"], libero_server["export"]
    arrays: dict = {}
    requests = [{"id": f"f{i}", "obs": libero_obs(arrays, f"f{i}", frame)} for i, frame in enumerate(frames)]
    again = {"id": "again", "obs": requests[0]["obs"]}  # same observation, new connection
    job = {"host": "127.0.0.1", "port": libero_server["port"], "connections": [requests, [again]]}
    result, actions = run_probe(job, arrays, tmp_path)

    meta = result["metadata"][0]
    assert meta["config_type"] == "pi0_libero" and meta["action_horizon"] == 50 and meta["action_dim"] == 7
    assert meta["observation_keys"] == {"images": list(LIBERO_KEYS[:2]), "state": "observation/state",
                                        "state_dim": 8, "prompt": "prompt"}  # fmt: skip
    expected, normalized = direct_actions(export, frames)
    stats = NormStats.load(export / "norm_stats.json").actions
    for i, frame in enumerate(frames):
        got = actions[f"f{i}"]
        assert got.shape == (50, 7) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected[i], atol=1e-5)
        # Robot units by hand: z-score undone, then the state added back on the 6 delta arm dims.
        by_hand = normalized[i][:, :7] * (stats.std + EPS) + stats.mean
        by_hand[:, :6] += frame["state"][:6]
        np.testing.assert_allclose(got, by_hand, atol=1e-4)
        response = result["responses"][f"f{i}"]
        assert response["keys"] == ["actions", "server_timing"] and response["server_timing"]["infer_ms"] > 0
        assert ("prev_total_ms" in response["server_timing"]) == (i > 0)
    np.testing.assert_array_equal(actions["again"], actions["f0"])


@pytest.mark.slow
def test_openpi_client_malformed_observations_get_an_error_and_the_server_keeps_serving(
    libero_server, tmp_path
):
    frame = libero_server["frames"][1]
    arrays: dict = {}
    requests = [
        {"id": "missing", "obs": libero_obs(arrays, "m", frame, observation__wrist_image=None)},
        {"id": "shape", "obs": libero_obs(arrays, "s", frame, observation__state=np.zeros(7))},
        {
            "id": "dtype",
            "obs": libero_obs(arrays, "d", frame, observation__image=np.zeros((96, 96, 3), np.float32)),
        },
        {"id": "good", "obs": libero_obs(arrays, "g", frame)},
    ]
    job = {"host": "127.0.0.1", "port": libero_server["port"],
           "connections": [requests, [{"id": "next", "obs": requests[3]["obs"]}]]}  # fmt: skip
    result, actions = run_probe(job, arrays, tmp_path)
    errors = {key: result["responses"][key].get("error") for key in ("missing", "shape", "dtype")}
    prefix = "Error in inference server:\nbad observation: "
    assert errors["missing"].startswith(prefix + "observation is missing 'observation/wrist_image'")
    assert (
        errors["shape"]
        == prefix + "'observation/state' must have shape [8] (config type 'pi0_libero'), got [7]"
    )
    assert errors["dtype"] == (prefix + "'observation/image' must be a uint8 image array [height, width, 3], "
                               "got float32 array of shape [96, 96, 3]")  # fmt: skip
    expected, _ = direct_actions(libero_server["export"], [frame])
    np.testing.assert_allclose(actions["good"], expected[0], atol=1e-5)
    np.testing.assert_allclose(actions["next"], expected[0], atol=1e-5)


@pytest.mark.slow
def test_unsafe_frames_are_refused_over_the_wire(libero_server):
    """Frames openpi-client would never write (its packer refuses these dtypes), sent raw."""
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    uri = f"ws://127.0.0.1:{libero_server['port']}"
    frame = libero_server["frames"][0]
    good = {"observation/image": frame["images"]["image"], "observation/wrist_image": frame["images"]["wrist_image"],
            "observation/state": frame["state"], "prompt": frame["task"]}  # fmt: skip
    good_bytes = protocol.pack(good)
    good_raw = msgpack.unpackb(good_bytes)
    packed_image = {b"__ndarray__": True, b"data": frame["images"]["image"].tobytes(), b"dtype": "|u1",
                    b"shape": [96, 96, 3]}  # fmt: skip
    cases = [
        ({**packed_image, b"dtype": "|O", b"shape": [96 * 96 * 3]}, "'observation/image': dtype '|O' is refused"),
        ({**packed_image, b"dtype": "<c16", b"shape": [96 * 96 * 3 // 16]}, "'observation/image': dtype '<c16' is refused"),
        ({**packed_image, b"data": b"\0" * 10},
         "'observation/image': array data has 10 bytes, but dtype |u1 x shape [96, 96, 3] needs 27648"),
    ]  # fmt: skip
    with connect(uri, max_size=None) as ws:
        assert protocol.unpack(ws.recv())["config_type"] == "pi0_libero"
        for image, message in cases:
            ws.send(msgpack.packb({**good_raw, "observation/image": image}))
            assert ws.recv().startswith(f"bad observation: {message}")
        ws.send(b"\xc1")
        assert ws.recv().startswith("bad observation: the message is not valid msgpack")
        ws.send("a text frame")
        assert ws.recv() == "bad observation: expected a binary msgpack message, got a text frame"
        ws.send(good_bytes)
        assert protocol.unpack(ws.recv())["actions"].shape == (50, 7)
        # Over --max-message-mb 2: the server closes the connection (1009, message too big).
        with pytest.raises(ConnectionClosedError) as closed:
            ws.send(b"\0" * (3 * 2**20))
            ws.recv()
        assert closed.value.rcvd.code == 1009
    with connect(uri, max_size=None) as ws:  # and serves the next client
        ws.recv()
        ws.send(good_bytes)
        assert protocol.unpack(ws.recv())["actions"].shape == (50, 7)


@pytest.mark.slow
def test_demo_flow_champion_served_to_openpi_client_in_metaworld_format(demo_registered_model, tmp_path):
    """The registered model of a real demo run, by alias, to openpi-client with Meta-World keys; the
    same actions as the exported model called directly and as the registered pyfunc."""
    import mlflow
    import pandas as pd

    from steps.registry.pyfunc import encode_image
    from steps.sim.metaworld.demonstrations import DEMO_DATASET

    cfg = get_config_type("pi05_metaworld")
    frames = dataset_frames(DEMO_DATASET, cfg, [0, 140, 600], tmp_path / "cache")
    arrays: dict = {}
    requests = [
        {"id": f"f{i}", "obs": {"observation/image": array_ref(arrays, f"{i}.image", f["images"]["observation.image"]),
                                "observation/state": array_ref(arrays, f"{i}.state", f["state"]), "prompt": f["task"]}}
        for i, f in enumerate(frames)
    ]  # fmt: skip
    port = free_port()
    env = {"MLFLOW_TRACKING_URI": demo_registered_model["tracking_uri"]}
    model_uri = demo_registered_model["model_uri"]
    with local_server(serve_cmd(model_uri, port), f"http://127.0.0.1:{port}/healthz", tmp_path / "serve.log",
                      env=env, timeout_s=240):  # fmt: skip
        result, actions = run_probe(
            {"host": "127.0.0.1", "port": port, "connections": [requests]}, arrays, tmp_path
        )
    meta = result["metadata"][0]
    assert meta["config_type"] == "pi05_metaworld" and meta["model"] == model_uri
    assert meta["observation_keys"]["images"] == ["observation/image"] and meta["action_horizon"] == 5

    mlflow.set_tracking_uri(demo_registered_model["tracking_uri"])
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp_path / "dl"))
        )
        pyfunc = mlflow.pyfunc.load_model(model_uri)
        # One row per call: a batch draws its noise for all rows at once, the server per observation.
        rows = [{"observation.image": encode_image(f["images"]["observation.image"]), "state": f["state"].tolist(),
                 "task": f["task"]} for f in frames]  # fmt: skip
        from_pyfunc = [np.asarray(pyfunc.predict(pd.DataFrame([row])))[0] for row in rows]
    finally:
        mlflow.set_tracking_uri(None)
    expected, normalized = direct_actions(local / "artifacts" / "export", frames)
    for i in range(len(frames)):
        assert actions[f"f{i}"].shape == (5, 4)
        np.testing.assert_allclose(actions[f"f{i}"], expected[i], atol=1e-5)
        np.testing.assert_allclose(actions[f"f{i}"], from_pyfunc[i], atol=1e-5)
    # Robot units by hand: the quantile normalization undone ([-1, 1] -> [q01, q99]; no delta dims).
    stats = NormStats.load(local / "artifacts" / "export" / "norm_stats.json").actions
    by_hand = (normalized[0][:, :4] + 1) / 2 * (stats.q99 - stats.q01 + EPS) + stats.q01
    np.testing.assert_allclose(actions["f0"], by_hand, atol=1e-4)
