"""Send a training run's params and metric points to MLflow from a background thread, so that tracking is
never what stops or slows training.

The trainer only appends to an in-memory queue. One sender thread sends it in order (``log_batch``,
at most ``BATCH_POINTS`` points a call). When the tracking server does not answer (connection refused,
timeout, HTTP 5xx / 429) the points stay queued, the thread retries with a growing pause (``RETRY_S``)
and training goes on; a one-line message says when the outage began and when the backlog was sent.

Each point reaches the run exactly once, also across an outage, a killed process and a resume:

- points of one key are sent in step order and a ``log_batch`` call is one transaction, so the run's
  latest step of a key (``get_run`` returns it) says that every point up to it arrived;
- before the first send and after every failed call (the server may have committed a batch whose answer
  was lost) the thread reads those latest steps again and drops queued points at or below them;
- the trainer keeps the points not yet acknowledged in each checkpoint (``unsent``); a resumed process
  queues them again (``put_metrics``) before its own, and the same check drops what already arrived.

An error that a retry cannot fix (HTTP 4xx other than 408 / 429: bad credentials, a deleted run, an
invalid value) stops sending; the points stay queued and ``close`` reports the error.
``close(wait_s)`` waits at most ``wait_s`` seconds for the queue to empty, then raises
``TrackingUnavailable`` with one line naming the URI. ``mlflow`` is imported in the thread only.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Mapping, Sequence

BATCH_POINTS = 1000  # MLflow's log_batch limit on metrics per request
RETRY_S = (1.0, 2.0, 5.0, 10.0)  # pause after the 1st, 2nd, 3rd, later failed calls in a row
TRANSIENT_HTTP = (408, 429)  # 4xx answers that a later try can pass


class TrackingUnavailable(RuntimeError):
    """Queued points could not be delivered to the tracking server in time (one-line message)."""


def is_transient(exc: BaseException) -> bool:
    """True when a later call may succeed: no answer, a timeout, HTTP 5xx, 408 or 429."""
    status = getattr(exc, "get_http_status_code", None)
    if status is None:
        return True  # not an MLflow answer at all: the connection itself failed
    code = status()
    return code >= 500 or code in TRANSIENT_HTTP


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def latest_steps(client, run_id: str) -> dict[str, int]:
    """The run's latest step of every metric key, from one ``get_run``.

    ``RunData`` exposes only the values publicly; the Metric objects (with their step) are kept as
    ``_metric_objs``, which MLflow's own system-metrics monitor reads for the same purpose (it avoids
    reading whole histories, mlflow GH issue 22991).
    """
    data = client.get_run(run_id).data
    return {m.key: int(m.step) for m in getattr(data, "_metric_objs", [])}


class TrackingQueue:
    """In-order, exactly-once delivery of params and metric points to one MLflow run."""

    def __init__(self, uri: str, run_id: str, *, stream=None, retry_s: Sequence[float] = RETRY_S) -> None:
        self.uri, self.run_id = uri, run_id
        self.stream = stream or sys.stderr
        self.retry_s = tuple(retry_s)
        # ("params", dict) | ("metric", key, value, step, timestamp in ms: when the trainer measured it)
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._sending = 0  # items of the head taken by the call in flight (still in _items)
        self.permanent_error: str | None = None
        self.last_error: str | None = None
        self.outage_since: float | None = None
        self.sent_points = 0
        self._thread = threading.Thread(target=self._run, name="mlflow-sender", daemon=True)
        self._thread.start()

    # --- the trainer's side (never blocks on the network) ----------------------------------------
    def put_params(self, params: Mapping[str, object]) -> None:
        self._put([("params", dict(params))])

    def put_metrics(self, points: Sequence[tuple[str, float, int]]) -> None:
        now = int(time.time() * 1000)
        self._put([("metric", str(k), float(v), int(s), now) for k, v, s in points])

    def _put(self, items: list) -> None:
        if not items:
            return
        with self._cond:
            self._items.extend(items)
            self._cond.notify_all()

    def unsent(self) -> list[tuple[str, float, int]]:
        """Metric points not yet acknowledged by the server (what a checkpoint keeps)."""
        with self._cond:
            return [(i[1], i[2], i[3]) for i in self._items if i[0] == "metric"]

    def pending(self) -> int:
        with self._cond:
            return len(self._items)

    def wait_empty(self, timeout_s: float) -> bool:
        """Wait until every queued item is acknowledged (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._items and self.permanent_error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
            return not self._items

    def close(self, wait_s: float) -> None:
        """Send what is queued, waiting at most ``wait_s`` s; raise TrackingUnavailable if some is left."""
        delivered = self.wait_empty(wait_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if delivered:
            self._thread.join(timeout=5)
            return
        left = self.pending()
        if self.permanent_error is not None:
            raise TrackingUnavailable(
                f"MLflow tracking server {self.uri} refused the run's metrics ({self.permanent_error}); "
                f"{left} item(s) not logged"
            )
        raise TrackingUnavailable(
            f"MLflow tracking server {self.uri} did not take the last {left} metric point(s) within {wait_s:g} s "
            f"after training ended (last error: {self.last_error}); they are kept in the last checkpoint: "
            "`resume` once the server answers sends them without training again"
        )

    # --- the sender thread ----------------------------------------------------------------------
    def _run(self) -> None:
        from steps.registry import tracking

        tracking.configure_mlflow_env()
        client = tracking.client_for(self.uri)
        server_steps: dict[str, int] | None = None  # None: to be read before the next send
        failures = 0
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items or self.permanent_error is not None:
                    if self._closing:
                        return
                    self._cond.wait(1.0)
                    continue
                batch = self._head()
            try:
                if server_steps is None:
                    server_steps = latest_steps(client, self.run_id)
                self._send(client, batch, server_steps)
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                server_steps = None
                self._failed(exc)
                if self.permanent_error is not None:
                    continue
                pause = self.retry_s[min(failures, len(self.retry_s) - 1)]
                failures += 1
                with self._cond:
                    if not self._closing:
                        self._cond.wait(pause)
                    else:  # draining at the end: keep trying, but without a long sleep
                        self._cond.wait(min(pause, 1.0))
                continue
            failures = 0
            with self._cond:
                for _ in batch:
                    self._items.popleft()
                self._cond.notify_all()
            if self.outage_since is not None:
                down = time.monotonic() - self.outage_since
                self.outage_since = None
                print(f"MLflow tracking at {self.uri} answers again after {down:.0f} s; sending the queued "
                      f"points ({self.pending()} item(s) left)", file=self.stream, flush=True)  # fmt: skip

    def _head(self) -> list:
        """The next call's items: one params entry, or up to BATCH_POINTS metric points in a row."""
        first = self._items[0]
        if first[0] == "params":
            return [first]
        batch = []
        for item in self._items:
            if item[0] != "metric" or len(batch) == BATCH_POINTS:
                break
            batch.append(item)
        return batch

    def _send(self, client, batch: list, server_steps: dict[str, int]) -> None:
        from mlflow.entities import Metric

        from steps.registry import tracking

        if batch[0][0] == "params":
            tracking.log_params(self.uri, self.run_id, batch[0][1])
            return
        fresh = [Metric(key=k, value=v, timestamp=t, step=s) for _, k, v, s, t in batch
                 if s > server_steps.get(k, -1)]  # fmt: skip
        if fresh:
            client.log_batch(self.run_id, metrics=fresh)
        for _, k, _, s, _ in batch:
            server_steps[k] = max(s, server_steps.get(k, -1))
        self.sent_points += len(fresh)

    def _failed(self, exc: BaseException) -> None:
        self.last_error = _one_line(exc)
        if not is_transient(exc):
            self.permanent_error = self.last_error
            print(f"MLflow tracking at {self.uri} refuses the run's metrics, logging stopped (training goes on): "
                  f"{self.last_error}", file=self.stream, flush=True)  # fmt: skip
            with self._cond:
                self._cond.notify_all()
            return
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            print(f"MLflow tracking at {self.uri} does not answer ({self.last_error}); training goes on, metric "
                  "points are queued and sent when it is back", file=self.stream, flush=True)  # fmt: skip
