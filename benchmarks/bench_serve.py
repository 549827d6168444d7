"""Latency and throughput of ``python -m steps.serve`` as a robot sees it, with the real openpi-client.

    python benchmarks/bench_serve.py [--config_type pi05_libero] [--variant tiny] [--device cpu]
        [--model URI_OR_FOLDER] [--requests 30] [--warmup 3] [--clients 1,2] [--image_size 224]
        [--append-results]

Without ``--model`` the server gets an export of ``--variant`` with random weights (the values do not
change the cost; ``--variant real --device cuda`` is the GPU measurement, not run yet). The client is
openpi-client 0.1.2's ``WebsocketClientPolicy`` in its own venv (tests/openpi_client_venv.py), sending
the config type's observation (uint8 HWC images of ``--image_size``, float64 state, a prompt) as openpi's
examples do. Measured, per number of concurrent clients K (each with its own connection):
- round trip: ``client.infer`` wall time in the client (pack, send, server, receive, unpack);
- server infer: the response's ``server_timing.infer_ms`` (observation mapping + ``Policy.predict``);
- throughput: all clients' requests / the longest client's wall time (the server runs one inference
  at a time, so K > 1 shows queueing, not parallel speed-up);
- in-process: ``Policy.predict`` on the same observation in this process (in a worker thread, as the
  server runs it), between the server rounds: the floor the server adds its overhead to.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROMPT = "put the black bowl on the plate"


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config_type", default="pi05_libero")
    p.add_argument("--variant", default="tiny", help="model size of the random-weight export (tiny / real)")
    p.add_argument("--model", default=None, help="serve this MLflow URI / folder instead of a random export")
    p.add_argument("--device", default="cpu")
    p.add_argument("--requests", type=int, default=30, help="timed requests per client")
    p.add_argument("--warmup", type=int, default=3, help="untimed requests per client first")
    p.add_argument("--clients", default="1,2", help="comma-separated numbers of concurrent clients")
    p.add_argument("--image_size", type=int, default=224, help="camera height = width the client sends")
    p.add_argument("--rounds", type=int, default=3, help="rounds alternating in-process and each K; pooled")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, server and in-process")
    p.add_argument("--append-results", action="store_true", help="add the table to benchmarks/RESULTS.md")
    return p.parse_args()


def _observation(cfg, image_size: int, seed: int = 0) -> tuple[dict, dict]:
    """(client observation as the probe describes it, its arrays)."""
    rng = np.random.default_rng(seed)
    keys = cfg.client_observation_keys
    arrays, obs = {}, {}
    for camera in cfg.camera_keys:
        arrays[camera] = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        obs[keys[camera]] = {"array": camera}
    arrays["state"] = rng.normal(size=cfg.state_dim)  # float64, as openpi's LIBERO example sends
    obs[keys["state"]] = {"array": "state"}
    obs[keys["task"]] = PROMPT
    return obs, arrays


class _InProcess:
    """``Policy.predict`` in this process on the same observation: the floor under the server's numbers."""

    def __init__(self, export: Path, cfg, arrays: dict, device: str) -> None:
        from steps.policy import Policy

        self.policy = Policy.from_export(export, device=device)
        self.raw = {"images": {k: arrays[k] for k in cfg.camera_keys}, "state": arrays["state"].astype(np.float32),
                    "task": PROMPT}  # fmt: skip
        self.policy.predict(self.raw)  # first-call set-up, as the server's warm-up

    def times_ms(self, warmup: int, repeats: int) -> list[float]:
        # In a worker thread, as the server runs inference (asyncio.to_thread).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(self._times_ms, warmup, repeats).result()

    def _times_ms(self, warmup: int, repeats: int) -> list[float]:
        for _ in range(warmup):
            self.policy.predict(self.raw)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.policy.predict(self.raw)
            times.append((time.perf_counter() - started) * 1000)
        return times


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()}-core CPU"
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    args = _parse_args()
    from data_adapters.config_types import ConfigType
    from tests.openpi_client_venv import run_probe
    from tests.server_helpers import free_port, local_server

    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="vla-sft-bench-serve-") as tmp:
        work = Path(tmp)
        if args.model:
            from steps.serve.loading import resolve_export

            export = resolve_export(args.model, work / "download")
            model = args.model
        else:
            from tests.policy_helpers import make_tiny_export

            export = make_tiny_export(work, args.config_type, variant=args.variant)
            model = str(export)
        cfg = ConfigType.from_dict(json.loads((export / "config_type.json").read_text()))
        obs, arrays = _observation(cfg, args.image_size)
        env = {}
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
            env["OMP_NUM_THREADS"] = str(args.threads)  # the server's torch reads it at start
        load_before = os.getloadavg()[0]
        in_process = _InProcess(export, cfg, arrays, args.device)
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "steps.serve",
            "--model",
            model,
            "--port",
            str(port),
            "--device",
            args.device,
        ]
        floor: list[float] = []
        pooled = {
            k: {"round_trip": [], "infer": [], "requests": 0, "wall": 0.0, "connect": []} for k in clients
        }
        with local_server(
            cmd, f"http://127.0.0.1:{port}/healthz", work / "serve.log", env=env, timeout_s=900
        ):
            # Alternating rounds: a shared machine's load drifts, and every figure should meet the same drift.
            for r in range(args.rounds):
                floor += in_process.times_ms(args.warmup, args.requests)
                for k in clients:
                    job = {"host": "127.0.0.1", "port": port,
                           "bench": {"obs": obs, "warmup": args.warmup, "requests": args.requests, "clients": k}}  # fmt: skip
                    result, _ = run_probe(job, arrays, work / f"probe-{r}-{k}", timeout_s=3600)
                    row = pooled[k]
                    for c in result["clients"]:
                        row["round_trip"] += c["round_trip_ms"]
                        row["infer"] += c["infer_ms"]
                        row["connect"].append(c["connect_ms"])
                    row["requests"] += k * args.requests
                    row["wall"] += max(c["wall_s"] for c in result["clients"])
        load_after = os.getloadavg()[0]
        rows = [(k, p["round_trip"], p["infer"], p["requests"] / p["wall"], statistics.median(p["connect"]))
                for k, p in pooled.items()]  # fmt: skip

    med = statistics.median
    command = "python benchmarks/bench_serve.py " + " ".join(
        a for a in sys.argv[1:] if a != "--append-results"
    )
    lines = [
        f"### {date.today().isoformat()} · {_machine(args.device)} · `{command.strip()}`",
        "",
        f"{cfg.name} ({cfg.model_type}, {'from ' + model if args.model else args.variant + ' variant, random weights'}"
        f", {args.device}), {len(cfg.camera_keys)} camera(s) of {args.image_size}x{args.image_size} uint8, "
        f"horizon {cfg.action_horizon}; openpi-client 0.1.2 `WebsocketClientPolicy` over 127.0.0.1; "
        f"{args.rounds} rounds x ({args.warmup} warm-up + {args.requests} timed requests per client), "
        f"torch threads {args.threads or 'default'}; pooled over rounds.",
        "",
        "| clients | round trip ms (median / p90 / max) | server infer ms (median) | round trip - in-process ms "
        "(medians) | throughput req/s | connect ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, round_trip, infer, throughput, connect in rows:
        lines.append(
            f"| {k} | {med(round_trip):.1f} / {_pct(round_trip, 90):.1f} / {max(round_trip):.1f} | {med(infer):.1f} | "
            f"{med(round_trip) - med(floor):.1f} | {throughput:.1f} | {connect:.1f} |"
        )
    lines += [
        "",
        f"- in-process `Policy.predict` (no server), same observation: median {med(floor):.1f} ms, "
        f"p90 {_pct(floor, 90):.1f} ms",
        f"- 1-min load average: {load_before:.1f} before, {load_after:.1f} after",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append_results:
        from benchmarks.results_md import append_to_section

        append_to_section("Policy server", text)


if __name__ == "__main__":
    main()
