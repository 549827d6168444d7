"""Drives the real openpi-client against a policy server; runs in the openpi-client venv.

    python openpi_probe.py JOB.json OUT_DIR

Imports only openpi_client and numpy (the venv has numpy < 2 and no project code). JOB is JSON:

    {"host": "127.0.0.1", "port": 8000, "arrays": "arrays.npz",
     "connections": [[{"id": "r0", "obs": {KEY: {"array": NAME} or a JSON value}}, ...], ...]}

Each inner list runs on its own WebsocketClientPolicy (a fresh connection). With ``"bench": {"obs":
{...}, "warmup": N, "requests": M, "clients": K}`` instead of ``connections`` it times M sequential
``infer`` calls on each of K concurrent clients. Writes OUT_DIR/result.json and OUT_DIR/actions.npz.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
from openpi_client import websocket_client_policy


def _obs(spec: dict, arrays) -> dict:
    return {key: arrays[value["array"]] if isinstance(value, dict) else value for key, value in spec.items()}


def _run_connections(job: dict, arrays, out: Path) -> dict:
    result = {"metadata": [], "responses": {}}
    actions = {}
    for requests in job["connections"]:
        client = websocket_client_policy.WebsocketClientPolicy(job["host"], job["port"])
        result["metadata"].append(client.get_server_metadata())
        for request in requests:
            try:
                response = client.infer(_obs(request["obs"], arrays))
            except RuntimeError as err:  # the client's way of reporting a text frame from the server
                result["responses"][request["id"]] = {"error": str(err)}
                continue
            actions[request["id"]] = np.asarray(response["actions"])
            result["responses"][request["id"]] = {
                "keys": sorted(response),
                "server_timing": response.get("server_timing"),
                "dtype": str(response["actions"].dtype),
            }
    np.savez(out / "actions.npz", **actions)
    return result


def _run_bench(job: dict, arrays) -> dict:
    bench = job["bench"]
    obs = _obs(bench["obs"], arrays)
    per_client = [None] * bench["clients"]
    barrier = threading.Barrier(bench["clients"])

    def one(index: int) -> None:
        started = time.perf_counter()
        client = websocket_client_policy.WebsocketClientPolicy(job["host"], job["port"])
        connect_ms = (time.perf_counter() - started) * 1000
        for _ in range(bench["warmup"]):
            client.infer(obs)
        barrier.wait(timeout=600)  # a client that failed to connect must not hang the others
        round_trip, infer = [], []
        t0 = time.perf_counter()
        for _ in range(bench["requests"]):
            started = time.perf_counter()
            response = client.infer(obs)
            round_trip.append((time.perf_counter() - started) * 1000)
            infer.append(response["server_timing"]["infer_ms"])
        per_client[index] = {"connect_ms": connect_ms, "round_trip_ms": round_trip, "infer_ms": infer,
                             "wall_s": time.perf_counter() - t0, "metadata": client.get_server_metadata()}  # fmt: skip

    threads = [threading.Thread(target=one, args=(i,)) for i in range(bench["clients"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"clients": per_client}


def main() -> None:
    job_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    job = json.loads(job_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    with np.load(job_path.parent / job["arrays"], allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    result = _run_bench(job, arrays) if "bench" in job else _run_connections(job, arrays, out)
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
