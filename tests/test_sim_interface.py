"""The simulator interface shared by every benchmark: the wire format, the worker processes, the rollout
loop's replanning and parallel schedule, and the registry (run against Meta-World, the cheapest real
simulator; LIBERO's own checks are in tests/test_libero.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from steps.sim import base, wire
from steps.sim.metaworld.env import configure_headless_gl

configure_headless_gl()
pytest.importorskip("metaworld")

from steps.evaluate import closed_loop  # noqa: E402
from steps.sim.rollout import run_benchmark  # noqa: E402
from steps.sim.worker import Worker, WorkerError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_wire_round_trips_nested_arrays_without_pickle():
    message = {"obs": {"images": {"image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3)},
                       "state": np.array([1.5, -2.0], np.float32), "task": "reach"},
               "success": True, "n": np.int64(3), "list": [np.zeros(2), "x"]}  # fmt: skip
    back = wire.decode(wire.encode(message)[8:])
    assert back["obs"]["images"]["image"].dtype == np.uint8
    np.testing.assert_array_equal(back["obs"]["images"]["image"], message["obs"]["images"]["image"])
    assert back["obs"]["state"].dtype == np.float32 and back["obs"]["task"] == "reach"
    assert back["success"] is True and back["n"] == 3 and back["list"][1] == "x"
    import json
    import struct

    head = json.dumps({"body": {"__array__": 0, "dtype": "|O", "shape": [1]}, "sizes": [8]}).encode()
    with pytest.raises(ValueError, match="array of dtype object refused"):
        wire.decode(struct.pack("<Q", len(head)) + head + bytes(8))


def test_registry_matches_config_types_and_loop_modules_import_numpy_only():
    from data_adapters.config_types import SIMULATORS

    assert set(base.SIMULATORS) == set(SIMULATORS)
    for name in SIMULATORS:
        cls = base.simulator_class(name)
        assert cls.benchmark.name == name and issubclass(cls, base.Simulator)
    # What a simulator's own venv must be able to import: numpy and the standard library only.
    for module in ("base", "rollout", "wire", "worker"):
        tree = ast.parse((REPO / "steps" / "sim" / f"{module}.py").read_text())
        top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        assert top <= {"__future__", "numpy", "steps", "json", "struct", "typing", "importlib", "abc", "os",
                       "subprocess", "sys", "threading", "time", "collections", "dataclasses", "pathlib"}, (module, top)  # fmt: skip
    with pytest.raises(ValueError, match="simulator: 'gazebo' is not one of"):
        base.simulator_class("gazebo")


def test_parallel_workers_give_the_serial_results():
    """Scripted experts in 2 worker processes: same outcomes per (task, seed) as in-process, with the
    simulators' timers summed over workers."""
    common = dict(tasks=["reach-v3", "button-press-v3"], episodes_per_task=2, seeds=0, max_steps=60,
                  resolution=32, log=None)  # fmt: skip
    serial = closed_loop.evaluate_metaworld(closed_loop.ScriptedExpertPolicy(), **common)
    parallel = closed_loop.evaluate_metaworld(closed_loop.ScriptedExpertPolicy(), workers=2, **common)
    key = [(o.task, o.seed, o.success, o.steps) for o in serial.episodes]
    assert key == [(o.task, o.seed, o.success, o.steps) for o in parallel.episodes]
    assert serial.timings["workers"] == 1 and parallel.timings["workers"] == 2
    assert parallel.timings["physics"] > 0 and parallel.metrics()["sim/episodes"] == 4


def test_batched_policy_sees_every_waiting_environment_and_replans_every_n_steps():
    batches: list[int] = []

    def policy(observations):
        batches.append(len(observations))
        assert all(o["images"]["observation.image"].shape == (32, 32, 3) for o in observations)
        return np.zeros((len(observations), 8, 4), np.float32)

    result = run_benchmark("metaworld", policy, ["reach-v3"], 2, [0, 1], options={"resolution": 32},
                           max_steps=10, replan_steps=4, workers=2, log=None)  # fmt: skip
    # 10 steps, 4 per chunk: queries at steps 0, 4, 8, each for both environments at once.
    assert batches == [2, 2, 2]
    assert [o.steps for o in result.episodes] == [10, 10]


def test_worker_errors_are_one_line_and_name_the_worker():
    worker = Worker("metaworld", {"resolution": None}, name="metaworld[0]")
    try:
        worker.send("reset", task="reach-v3", episode=0, seed=-1)
        with pytest.raises(
            WorkerError, match=r"^simulator metaworld\[0\]: ValueError: seed: expected a non-negative"
        ):
            worker.recv()
        worker.send("reset", task="reach-v3", episode=0, seed=0)
        assert worker.recv()["obs"]["state"].shape == (4,)  # the worker survives a bad request
    finally:
        worker.close()
    with pytest.raises(WorkerError, match=r"simulator metaworld\[1\]: ValueError: simulator: 'nope'"):
        Worker("nope", name="metaworld[1]")


def test_preflight_names_the_renderer_fix(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "glx")
    with pytest.raises(base.SimulatorNotReady, match="headless rendering needs MUJOCO_GL=egl or osmesa"):
        base.check_renderer()
    monkeypatch.setenv("MUJOCO_GL", "egl")
    assert base.check_renderer() == "egl"


def test_a_simulator_python_of_its_own_runs_the_simulator_in_workers(monkeypatch):
    """VLA_SFT_SIM_PYTHON_<NAME>: the hook for a simulator in its own venv (the worker imports steps.sim
    only); here the same interpreter, so the test needs no second venv."""
    import sys

    monkeypatch.setenv("VLA_SFT_SIM_PYTHON_METAWORLD", sys.executable)
    result = closed_loop.evaluate_closed_loop(
        lambda obs: np.zeros((len(obs), 5, 4), np.float32), "metaworld", ["reach-v3"], 1, max_steps=5,
        resolution=32, log=None,
    )  # fmt: skip
    assert result.timings["workers"] == 1 and result.episodes[0].steps == 5


def test_simulator_not_ready_is_a_user_error_with_its_own_headline():
    """The flow's @reported steps show it as one line under 'Simulator not ready', and it is never retried."""
    from steps import errors

    exc = base.SimulatorNotReady("renderer: MuJoCo cannot open a MUJOCO_GL=egl context (...); install Mesa")
    assert errors.is_user_error(exc) and errors.headline(exc) == "Simulator not ready"
