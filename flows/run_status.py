"""What every step does around its body for the lineage's MLflow run and for ``train``'s retries
(``flows.cluster.sft_deployment`` adds ``tracked`` to every step):

- on a resume, the first step that runs takes the MLflow run back (RUNNING, this Metaflow run's pathspec),
  recording a previous run that was killed outright (``steps.registry.tracking.claim_run``);
- ``train``: before a retry, the previous attempt's record decides (``steps.train.attempts``): an error a
  retry cannot fix fails at once, anything else waits ``retry_backoff_s`` first (local runs);
- when a step fails for good (no retry left, or an error a retry cannot fix) the MLflow run is marked FAILED
  with the step in ``vla_sft.failed_step``; the tracking server not answering is shown as one line.

``main`` runs the flow and turns the exit of a task that failed with an error a retry cannot fix into
Metaflow's no-retry exit code, so the local runtime does not start another attempt.
"""

from __future__ import annotations

import sys

from metaflow import current, user_step_decorator
from metaflow.exception import METAFLOW_EXIT_DISALLOW_RETRY, MetaflowException

_state = {"no_retry": False}


class TrackingUnavailableError(MetaflowException):
    headline = "Tracking unavailable"


def _artifact(flow, inputs, name: str):
    """An artifact of this step's input (a join reads it from its inputs), or None."""
    try:
        return getattr(flow, name)
    except Exception:  # noqa: BLE001 - not set (yet), or a join before merge_artifacts
        pass
    for inp in inputs or []:
        try:
            return getattr(inp, name)
        except Exception:  # noqa: BLE001
            continue
    return None


def _node_index() -> int:
    try:
        return current.parallel.node_index
    except Exception:  # noqa: BLE001 - not a @parallel step
        return 0


def _claim(uri: str, run_id: str) -> None:
    from steps.registry import tracking

    pathspec = f"{current.flow_name}/{current.run_id}"
    try:
        outcome = tracking.claim_run(uri, run_id, pathspec=pathspec)
    except Exception as exc:  # noqa: BLE001 - tracking never stops a step; the step's own calls will tell
        print(f"could not take MLflow run {run_id} back for {pathspec}: {' '.join(str(exc).split())}",
              file=sys.stderr)  # fmt: skip
        return
    if outcome is not None:
        print(f"MLflow run {run_id} resumed by {pathspec} (it was {outcome})", file=sys.stderr)


def _retryable(exc: BaseException) -> bool:
    from flows.step_errors import InvalidInput, UserFacingError
    from steps import errors
    from steps.train.attempts import NotRetried

    return not (isinstance(exc, (UserFacingError, InvalidInput, NotRetried)) or errors.is_user_error(exc))


def _shown(exc: BaseException, uri: str | None) -> BaseException:
    """The exception as the console should show it: one line for a tracking outage or a refused retry."""
    from flows.step_errors import UserFacingError
    from steps import errors
    from steps.train.attempts import NotRetried
    from steps.train.tracking_queue import TrackingUnavailable, is_transient

    if isinstance(exc, TrackingUnavailable):
        return TrackingUnavailableError(str(exc))
    mlflow_exception = getattr(sys.modules.get("mlflow.exceptions"), "MlflowException", None)
    if uri and mlflow_exception is not None and isinstance(exc, mlflow_exception) and is_transient(exc):
        return TrackingUnavailableError(f"MLflow tracking server {uri} did not answer ({errors.one_line(exc)[:300]}); "
                                        "`resume` continues from this step once it does")  # fmt: skip
    if isinstance(exc, NotRetried):
        return UserFacingError(exc.headline, f"{exc} (the previous attempt failed the same way; not retried)")
    return exc


def _on_failure(flow, inputs, step_name: str, exc: BaseException) -> BaseException:
    from steps import errors
    from steps.train import attempts

    retryable = _retryable(exc)
    retries = int(getattr(flow.cluster, "retries", 0)) if step_name == "train" else 0
    final = not retryable or current.retry_count >= retries
    uri, run_id = _artifact(flow, inputs, "tracking_uri"), _artifact(flow, inputs, "mlflow_run_id")
    checkpoint_dir = _artifact(flow, inputs, "checkpoint_dir")
    if step_name == "train" and checkpoint_dir and _node_index() == 0:
        attempts.record_failure(checkpoint_dir, current.retry_count, retryable=retryable,
                                headline=errors.headline(exc), message=errors.one_line(exc))  # fmt: skip
    if final and uri and run_id and _node_index() == 0:
        from steps.registry import tracking

        try:
            tracking.mark_failed(uri, run_id, step=step_name, pathspec=current.pathspec)
        except Exception as mark_exc:  # noqa: BLE001 - the step's own error is the one to show
            print(f"could not mark MLflow run {run_id} FAILED ({errors.one_line(mark_exc)[:200]}); the next "
                  "resume records it", file=sys.stderr)  # fmt: skip
    # Only where a retry would otherwise follow: Metaflow's runtime reports a task that exits with the no-retry code
    # with an extra "Internal error: The terminal step end was not successful" line, which a failure that no
    # retry follows anyway (start, a train without retries left) should not print.
    if not retryable and current.retry_count < retries:
        _state["no_retry"] = True
    return _shown(exc, uri)


@user_step_decorator
def tracked(step_name, flow, inputs=None, attributes=None):
    uri, run_id = _artifact(flow, inputs, "tracking_uri"), _artifact(flow, inputs, "mlflow_run_id")
    try:
        if uri and run_id and current.origin_run_id:
            _claim(uri, run_id)
        checkpoint_dir = _artifact(flow, inputs, "checkpoint_dir")
        if step_name == "train" and checkpoint_dir:
            from steps.config.validate import running_remotely
            from steps.train import attempts

            cluster = flow.cluster
            attempts.before_attempt(checkpoint_dir, current.retry_count, backoff_s=cluster.retry_backoff_s,
                                    remote=running_remotely(cluster.backend))  # fmt: skip
        yield
    except Exception as exc:
        shown = _on_failure(flow, inputs, step_name, exc)
        if shown is exc:
            raise
        raise shown from None


def main(flow_class) -> None:
    """Run the flow (``flow_class()``); a task that failed with an error a retry cannot fix exits with
    Metaflow's no-retry code (the local runtime then starts no other attempt)."""
    try:
        flow_class()
    except SystemExit as exc:
        if _state["no_retry"] and exc.code not in (0, None):
            raise SystemExit(METAFLOW_EXIT_DISALLOW_RETRY) from None
        raise
