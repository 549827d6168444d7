"""Rank-0 metrics: MLflow (optional) plus a console progress line with ETA.

Interface: ``log_params(dict)``, ``log_metrics(dict, step)``, ``close(status)``. Every rank may call it;
only rank 0 does anything. With tracking off, ``mlflow`` is never imported, so the training entry
point runs on machines without it.

MLflow specifics: the flow creates the run and workers join it through
``$MLFLOW_RUN_ID``; metrics are buffered and sent with one ``log_batch`` per flush (sqlite costs ~24 ms a
call); after a resume, steps that the run already has are not logged again (the resumed run recomputes
the same values, so nothing is lost and no duplicate points appear).
"""

from __future__ import annotations

import math
import os
import sys
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
        flush_every_s: float = 10.0,
        console: bool = True,
    ) -> None:
        self.active = rank == 0
        self.tracking = tracking and self.active
        self.progress = ProgressLine(max_steps, start_step) if (console and self.active) else None
        self.flush_every_s = flush_every_s
        self._pending: list[tuple[str, float, int]] = []
        self._last_flush = time.monotonic()
        self._already_logged: dict[str, int] = {}
        self.run_id: str | None = None
        self.uri: str | None = None
        self._owns_run = False
        self._system_monitor = None
        if self.tracking:
            self._start_mlflow(tracking_uri, experiment, run_id or os.environ.get("MLFLOW_RUN_ID"))

    def _start_mlflow(self, uri: str | None, experiment: str, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        from steps.registry import tracking

        tracking.configure_mlflow_env()
        self.uri = tracking.resolve_tracking_uri(uri)
        client = MlflowClient(tracking_uri=self.uri)
        if run_id is None:
            exp_id = tracking.get_or_create_experiment(client, self.uri, experiment)
            run_id = client.create_run(exp_id).info.run_id
            self._owns_run = True
        self.run_id = run_id
        try:  # CPU / memory / GPU utilisation every 10 s in a daemon thread (needs psutil)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._system_monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=self.uri)
            self._system_monitor.start()
        except Exception as exc:  # system metrics are a nice-to-have, never a reason to stop training
            print(f"system metrics disabled: {exc}", file=sys.stderr)
            self._system_monitor = None
        # Last step of each metric already in the run: a resumed job skips those points.
        for key in client.get_run(run_id).data.metrics:
            history = client.get_metric_history(run_id, key)
            if history:
                self._already_logged[key] = max(m.step for m in history)

    def log_params(self, params: Mapping[str, object]) -> None:
        if self.tracking:
            from steps.registry import tracking

            tracking.log_params(self.uri, self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int, *, console: bool = True) -> None:
        if not self.active:
            return
        if console and self.progress is not None:
            self.progress(step, metrics)
        if not self.tracking:
            return
        for key, value in metrics.items():
            if step > self._already_logged.get(key, -1) and math.isfinite(float(value)):
                self._pending.append((key, float(value), step))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if self.tracking and self._pending:
            from steps.registry import tracking

            tracking.log_metrics(self.uri, self.run_id, self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def close(self, status: str = "FINISHED") -> None:
        """Flush; end the run only when this logger created it (a joined run belongs to the flow)."""
        if not self.tracking:
            return
        self.flush()
        self.tracking = False  # idempotent: a second close (cleanup after an error) does nothing
        if self._system_monitor is not None:
            self._system_monitor.finish()
        if self._owns_run:
            from steps.registry import tracking

            tracking.finish_run(self.uri, self.run_id, status)
