"""Rank-0 metrics: MLflow (optional) plus a console progress line with ETA.

Interface: ``log_params(dict)``, ``log_metrics(dict, step)``, ``unsent()``, ``close(status)``. Every rank
may call it; only rank 0 does anything. With tracking off, ``mlflow`` is never imported, so the training
entry point runs on machines without it.

MLflow specifics: the flow creates the run and workers join it through ``$MLFLOW_RUN_ID``. Params, metrics
and system metrics (CPU, memory, disk, network, GPU every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` s,
default 10, at the current training step) go through ``steps.train.tracking_queue.TrackingQueue``: nothing
here waits for the server, an outage only delays the points, and each point arrives once (after a resume,
points the run already has are dropped, so the recomputed steps appear once). ``close`` waits at most
``wait_s`` for the server to take what is queued.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Mapping


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressLine:
    """``step 120/1000 (12.0%) | loss 0.1234 | ... | ETA 00:12:34`` every call, on stderr."""

    def __init__(self, max_steps: int, start_step: int, stream=None) -> None:
        self.max_steps = max_steps
        self.start_step = start_step
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()

    def eta(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.monotonic() - self.t0) / done * (self.max_steps - step)

    def render(self, step: int, metrics: Mapping[str, float]) -> str:
        parts = [f"step {step}/{self.max_steps} ({100.0 * step / self.max_steps:.1f}%)"]
        for key, fmt in (("train/loss", "loss {:.4f}"), ("train/lr", "lr {:.2e}"), ("train/grad_norm", "gn {:.3f}"),
                         ("perf/samples_per_s", "{:.1f} samples/s"), ("perf/data_wait_frac", "data {:.0%}"),
                         ("val/loss", "val {:.4f}")):  # fmt: skip
            if key in metrics:
                parts.append(fmt.format(metrics[key]))
        parts.append(f"ETA {format_duration(self.eta(step))}")
        return " | ".join(parts)

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        print(self.render(step, metrics), file=self.stream, flush=True)


class MetricsLogger:
    """Rank-0 logger. ``tracking=False`` -> console only (no MLflow import)."""

    def __init__(
        self,
        *,
        rank: int,
        tracking: bool,
        max_steps: int,
        start_step: int = 0,
        tracking_uri: str | None = None,
        experiment: str = "vla-sft",
        run_id: str | None = None,
        console: bool = True,
        wait_s: float = 300.0,
        system_metrics: bool = True,
    ) -> None:
        self.active = rank == 0
        self.tracking = tracking and self.active
        self.progress = ProgressLine(max_steps, start_step) if (console and self.active) else None
        self.wait_s = wait_s
        self.step = start_step
        self.run_id: str | None = None
        self.uri: str | None = None
        self._owns_run = False
        self._queue = None
        self._sampler = None
        if self.tracking:
            self._start_mlflow(
                tracking_uri, experiment, run_id or os.environ.get("MLFLOW_RUN_ID"), system_metrics
            )

    def _start_mlflow(
        self, uri: str | None, experiment: str, run_id: str | None, system_metrics: bool
    ) -> None:
        from steps.registry import tracking
        from steps.train.tracking_queue import TrackingQueue

        tracking.configure_mlflow_env()
        self.uri = tracking.resolve_tracking_uri(uri)
        if run_id is None:  # standalone training (no flow): a run of its own, created now
            client = tracking.client_for(self.uri)
            exp_id = tracking.get_or_create_experiment(client, self.uri, experiment)
            run_id = client.create_run(exp_id).info.run_id
            self._owns_run = True
        self.run_id = run_id
        self._queue = TrackingQueue(self.uri, run_id)
        if system_metrics:
            self._sampler = SystemSampler(self._queue, lambda: self.step)

    def log_params(self, params: Mapping[str, object]) -> None:
        if self.tracking:
            self._queue.put_params(params)

    def requeue(self, points) -> None:
        """Queue points a previous process did not get acknowledged (from its checkpoint), before new ones."""
        if self.tracking and points:
            self._queue.put_metrics([(k, v, s) for k, v, s in points])

    def log_metrics(self, metrics: Mapping[str, float], step: int, *, console: bool = True) -> None:
        if not self.active:
            return
        self.step = step
        if console and self.progress is not None:
            self.progress(step, metrics)
        if not self.tracking:
            return
        self._queue.put_metrics([(k, float(v), step) for k, v in metrics.items() if math.isfinite(float(v))])

    def wait_sent(self, timeout_s: float) -> bool:
        """Wait until the server acknowledged everything queued (True) or ``timeout_s`` passed (False)."""
        return self._queue.wait_empty(timeout_s) if self._queue is not None else True

    def unsent(self) -> list[tuple[str, float, int]]:
        """Metric points the server has not acknowledged yet (a checkpoint keeps them for a resume)."""
        return self._queue.unsent() if self._queue is not None else []

    def close(self, status: str = "FINISHED") -> None:
        """Send what is queued (at most ``wait_s`` s; then TrackingUnavailable); end the run only when this
        logger created it (a joined run belongs to the flow)."""
        if not self.tracking:
            return
        self.tracking = False  # idempotent: a second close (cleanup after an error) does nothing
        if self._sampler is not None:
            self._sampler.stop()
        # After a failure the points are in the last checkpoint anyway: don't hold the error up for long.
        self._queue.close(self.wait_s if status == "FINISHED" else min(self.wait_s, 10.0))
        if self._owns_run:
            from steps.registry import tracking

            tracking.finish_run(self.uri, self.run_id, status)


class SystemSampler:
    """System metrics (MLflow's own CPU, disk, network and GPU monitors) every few seconds, queued like any
    other point at the current training step: an outage delays them, and MLflow's monitor thread, which
    stops for good at the first failed call, is not used."""

    def __init__(self, queue, current_step, interval_s: float | None = None) -> None:
        self.queue, self.current_step = queue, current_step
        self.interval_s = interval_s or float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 10)
        self._stop = threading.Event()
        self.monitors = _system_monitors()
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        if self.monitors:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                values: dict[str, float] = {}
                for monitor in self.monitors:
                    monitor.collect_metrics()
                    values.update(monitor.aggregate_metrics())
                    monitor.clear_metrics()
            except Exception as exc:  # a monitor that breaks ends system metrics, never training
                print(f"system metrics stopped: {exc}", file=sys.stderr)
                return
            step = self.current_step()
            self.queue.put_metrics([(f"system/{k}", v, step) for k, v in values.items()])

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def _system_monitors() -> list:
    try:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    except Exception as exc:  # needs psutil
        print(f"system metrics disabled: {exc}", file=sys.stderr)
        return []
    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())  # needs an NVIDIA driver (pynvml); absent on CPU machines
    except Exception:  # noqa: BLE001 - no GPU monitor on this machine
        pass
    return monitors
