"""The metaflow-torchrun 0.2.2 compatibility shim: unit checks and real local multinode runs."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import torchrun_compat

REPO = Path(__file__).resolve().parents[1]
PROBE_FLOW = REPO / "tests" / "torchrun_probe" / "probe_flow.py"


def metaflow_env(tmp_path: Path) -> dict:
    """Environment for a throwaway local Metaflow run (datastore and home under tmp_path)."""
    env = dict(os.environ)
    env.update(
        USERNAME="dev",
        METAFLOW_HOME=str(tmp_path / "mfhome"),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "mfds"),
        METAFLOW_DEFAULT_DATASTORE="local",
        METAFLOW_DEFAULT_METADATA="local",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def run_probe(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    out = tmp_path / "ranks"
    out.mkdir(exist_ok=True)
    cmd = [sys.executable, str(PROBE_FLOW), "run", "--out_dir", str(out), *args]
    return subprocess.run(
        cmd, cwd=tmp_path, env=metaflow_env(tmp_path), capture_output=True, text=True, timeout=timeout
    )


def read_ranks(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "ranks").glob("rank*.json"))]


def test_derived_port_is_in_range_and_differs_between_runs():
    ports = {torchrun_compat.derived_port(str(run), "train", 0) for run in range(50)}
    low, high = torchrun_compat.PORT_RANGE
    assert all(low <= p < high for p in ports)
    assert len(ports) > 40  # spread, not one fixed port
    assert torchrun_compat.derived_port("1", "train", 0) != torchrun_compat.derived_port("1", "train", 1)
    assert torchrun_compat.derived_port("7", "train", 2) == torchrun_compat.derived_port("7", "train", 2)


def test_first_free_port_skips_a_busy_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        if not (torchrun_compat.PORT_RANGE[0] <= taken < torchrun_compat.PORT_RANGE[1]):
            # Re-bind inside our range so the search has to step over it.
            busy.close()
            busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            taken = torchrun_compat.first_free_port(torchrun_compat.PORT_RANGE[0] + 123)
            busy.bind(("", taken))
            busy.listen()
        assert not torchrun_compat.port_is_free(taken)
        chosen = torchrun_compat.first_free_port(taken)
        assert chosen != taken
        assert torchrun_compat.port_is_free(chosen)
        busy.close()


def test_local_datastore_round_trip_is_keyed_by_attempt(tmp_path):
    from metaflow.datastore import FlowDataStore
    from metaflow.plugins.datastores.local_storage import LocalStorage
    from metaflow_extensions.torchrun.plugins.torchrun_libs.datastore import TorchrunDatastore

    torchrun_compat.install()
    torchrun_compat.install()  # idempotent
    assert torchrun_compat.is_installed()
    flow_ds = FlowDataStore("ProbeFlow", storage_impl=LocalStorage, ds_root=str(tmp_path / ".metaflow"))
    store = TorchrunDatastore(flow_datastore=flow_ds, pathspec="ProbeFlow/12/train/3")
    store.put("node_status/0", "running", overwrite=True)  # 0.2.2 raised NotImplementedError here
    assert store.get("node_status/0").text == "running"
    location = store.get_datastore_key_location()
    assert location.endswith(os.path.join("ProbeFlow", "12", "train", "attempt-0"))
    assert (tmp_path / ".metaflow" / location / "node_status" / "0").is_file()


def test_two_local_nodes_one_process_each_all_reduce_over_gloo(tmp_path):
    result = run_probe(tmp_path, "--nodes", "2", "--nproc", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = read_ranks(tmp_path)
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["node_rank"] for r in ranks} == {0, 1}
    assert all(r["world_size"] == 2 and r["all_reduce_sum"] == 3.0 for r in ranks)
    ports = {r["master_port"] for r in ranks}
    assert len(ports) == 1 and ports != {int(torchrun_compat.DEFAULT_MASTER_PORT)}
    # The rendezvous store (in node 0's launcher) and every gloo socket listen on 127.0.0.1 only.
    listening = [s for r in ranks for s in r["listening"]]
    assert {"address": "127.0.0.1", "port": ports.pop()} in [
        {k: s[k] for k in ("address", "port")} for s in listening
    ]
    assert {s["address"] for s in listening} == {"127.0.0.1"}, listening


def test_torchrun_command_uses_the_loopback_launcher_for_local_runs_only():
    base = {"nnodes": 2, "master_addr": "127.0.0.1", "master_port": 23456, "node_rank": 0}
    local = torchrun_compat.torchrun_command(base, {"module": ""}, "steps.train", ["--config", "c.json"], 1)
    assert local[1:3] == ["-m", "flows.torchrun_loopback"]
    assert local[3:] == ["--nnodes", "2", "--master_addr", "127.0.0.1", "--master_port", "23456", "--node_rank",
                         "0", "--module", "--nproc_per_node", "1", "--rdzv_endpoint", "127.0.0.1:23456",
                         "steps.train", "--config", "c.json"]  # fmt: skip
    remote = torchrun_compat.torchrun_command({**base, "master_addr": "10.0.3.7"}, {}, "x.py", [], 8)
    assert remote[1:3] == ["-m", "torch.distributed.run"] and "10.0.3.7:23456" in remote
    assert torchrun_compat.loopback_environment("10.0.3.7") == {}
    assert set(torchrun_compat.loopback_environment("127.0.0.1")) == {
        "GLOO_SOCKET_IFNAME",
        "NCCL_SOCKET_IFNAME",
    }


@pytest.mark.slow
def test_one_node_two_processes(tmp_path):
    result = run_probe(tmp_path, "--nodes", "1", "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = read_ranks(tmp_path)
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["node_rank"] == 0 and r["all_reduce_sum"] == 3.0 for r in ranks)


@pytest.mark.slow
def test_failed_peer_stops_the_other_node_promptly(tmp_path):
    """Node 1 dies before the rendezvous; node 0 must not wait out torch's rendezvous timeout."""
    started = time.monotonic()
    result = run_probe(tmp_path, "--nodes", "2", "--nproc", "1", "--fail_node", "1", timeout=180)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "node(s) [1] failed" in result.stdout + result.stderr
    assert elapsed < 120
    assert read_ranks(tmp_path) == []
