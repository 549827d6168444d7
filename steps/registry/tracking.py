"""MLflow helpers for the flow: where to track, whether it is reachable, and one run per lineage.

Everything here takes an explicit tracking URI and talks to MLflow through ``MlflowClient`` so that
no global MLflow state leaks between steps or tests. ``mlflow`` is imported lazily: the flow imports
this module at the top level and every Metaflow task would otherwise pay for the import.

Lineage: a *lineage id* names one training job across ``resume``. ``start`` derives it from the
first run of the chain (``current.origin_run_id`` when start itself is re-executed by a resume)
and stores it as an artifact, so cloned steps and resumed steps see the same value. The MLflow run
is looked up by the ``vla_sft.lineage_id`` tag before one is created, so a resume never makes a
second MLflow run.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from steps.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
LINEAGE_TAG = "vla_sft.lineage_id"
PATHSPEC_TAG = "metaflow.pathspec"
METAFLOW_RUN_TAG = "metaflow.run_id"
REACHABILITY_TIMEOUT_S = 5.0


class TrackingError(RuntimeError):
    """The MLflow tracking server or database cannot be used (one-line message)."""


class TrackingCredentialsError(UserError):
    """The tracking server refused the credentials (none, or wrong): a configuration error, never retried."""


def configure_mlflow_env(timeout_s: int = 30) -> None:
    """Make MLflow's HTTP client fail fast instead of retrying for minutes.

    MLflow retries each REST call with exponential backoff (7 tries by default), so one call to an
    unreachable server blocks for minutes. Users can still override both through the environment.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Return the tracking URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else local sqlite.

    A relative sqlite path is made absolute against the current directory, so every task of a
    local run (and the MLflow UI started from the same folder) writes to the same database.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri and not uri.startswith("databricks"):
        # A bare path means a file store (deprecated in MLflow 3, still accepted).
        return str(Path(uri).resolve())
    return uri


CREDENTIAL_VARIABLES = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"


def redact(uri: str) -> str:
    """``uri`` with any user info replaced by ``[credentials]`` (safe to print; Metaflow's console would
    read ``*...*`` as bold markup)."""
    parsed = urllib.parse.urlsplit(uri)
    if "@" not in parsed.netloc:
        return uri
    return urllib.parse.urlunsplit(parsed._replace(netloc="[credentials]@" + parsed.netloc.rsplit("@", 1)[1]))


def check_no_credentials(uri: str) -> None:
    """Refuse a tracking URI with user info (``http://user:password@host``).

    The URI is a run parameter of sorts: it is printed, stored as an artifact, passed to every training
    process and written into deployed specs, so a password inside it would end up in all of them. MLflow
    reads credentials from the environment instead, which nothing here records.
    """
    if "@" in urllib.parse.urlsplit(uri).netloc:
        raise TrackingError(
            f"{redact(uri)} carries credentials in the URI, which would reach logs and stored artifacts; "
            f"use the URI without them and set {CREDENTIAL_VARIABLES}"
        )


def sqlite_db_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other schemes."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None


def default_artifact_location(uri: str, experiment_name: str) -> str | None:
    """Artifacts of a sqlite-tracked experiment go next to the database, not into the cwd.

    MLflow's default (``./mlruns``) depends on the directory the first task happened to run in.
    """
    db = sqlite_db_path(uri)
    if db is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment_name)
    return (db.parent / "mlruns" / folder).resolve().as_uri()


_OPENED: set[str] = set()  # sqlite URIs whose store this process has opened (tables exist)


def client_for(uri: str):
    """An ``MlflowClient`` for ``uri``. The first time a process opens a sqlite database it does so under
    an exclusive lock on ``<db>.lock``: MLflow creates and migrates a new database's tables (alembic) when
    it first opens it, and two processes doing that at once break each other (``Online migration expected
    to match one row``, ``table ... already exists``). The second waits, then finds the tables made."""
    from mlflow.tracking import MlflowClient

    db = sqlite_db_path(uri)
    if db is None or uri in _OPENED:
        return MlflowClient(tracking_uri=uri)
    import fcntl

    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = MlflowClient(tracking_uri=uri)  # opens the tracking store: creates / migrates the tables
        client.search_registered_models(max_results=1)  # and the registry store (same database)
    _OPENED.add(uri)
    return client


def check_reachable(uri: str, timeout_s: float = REACHABILITY_TIMEOUT_S) -> None:
    """Raise TrackingError in at most ``timeout_s`` seconds when ``uri`` cannot be used.

    http(s): one GET to ``/health``; 200 (or 401/403: a server behind auth, which is MLflow's business)
    counts, anything else means no MLflow server there. sqlite: the database's folder must exist
    and be writable. Other schemes (databricks, file) are left to MLflow.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking URI {uri} is unreachable ({reason}); start the server or set "
                f"MLFLOW_TRACKING_URI (default {DEFAULT_TRACKING_URI})"
            ) from None
        if status not in (200, 401, 403):
            raise TrackingError(
                f"MLflow tracking URI {uri} does not look like an MLflow server (HTTP {status} on /health)"
            )
        return
    db = sqlite_db_path(uri)
    if db is not None:
        folder = db.parent
        if not folder.is_dir():
            raise TrackingError(f"MLflow sqlite database folder {folder} does not exist (URI {uri})")
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow sqlite database folder {folder} is not writable (URI {uri})")


def lineage_id_for(flow_name: str, run_id: str, origin_run_id: str | None) -> str:
    """The id of a training lineage: the first run of a resume chain names it.

    ``start`` normally runs once and its artifact is cloned by ``resume``; when ``start`` itself is
    re-executed by a resume, ``origin_run_id`` keeps the lineage (and its MLflow run) the same.
    """
    return f"{flow_name}-{origin_run_id or run_id}"


def git_commit(path: str | os.PathLike) -> str | None:
    """The git commit of the checkout holding ``path`` (with ``-dirty`` if it has changes), or None."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=5)  # fmt: skip
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def get_or_create_experiment(client, uri: str, name: str) -> str:
    """Experiment id for ``name``, created (with artifacts next to a sqlite DB) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(uri, name))
    except Exception:
        # Another task created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_run_by_lineage(client, experiment_id: str, lineage_id: str):
    """The (oldest) MLflow run tagged with ``lineage_id``, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{LINEAGE_TAG}` = '{lineage_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


def get_or_create_run(
    uri: str,
    experiment_name: str,
    lineage_id: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> tuple[str, bool]:
    """Return ``(mlflow_run_id, created)`` for the lineage, reusing an existing run on resume."""
    configure_mlflow_env()
    client = client_for(uri)
    experiment_id = get_or_create_experiment(client, uri, experiment_name)
    existing = find_run_by_lineage(client, experiment_id, lineage_id)
    all_tags = {LINEAGE_TAG: lineage_id, **dict(tags or {})}
    if existing is not None:
        if existing.info.status != "RUNNING":
            # A resumed lineage is live again until `end` terminates it.
            client.update_run(existing.info.run_id, status="RUNNING")
        for key, value in all_tags.items():
            client.set_tag(existing.info.run_id, key, value)
        return existing.info.run_id, False
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id, True


def start_run_tracking(
    run_config, lineage_id: str, *, run_name: str, pathspec: str, metaflow_run_id: str, git_commit: str | None
) -> str:
    """The lineage's MLflow run (created, or reused on resume) with the run config logged as params; its id.

    ``run_config``: the run's ``steps.config.run_config.RunConfig``.
    """
    from mlflow.exceptions import MlflowException

    uri = run_config.tracking_uri
    try:
        run_id, _ = get_or_create_run(
            uri, run_config.experiment, lineage_id, run_name=run_name,
            tags={PATHSPEC_TAG: pathspec, METAFLOW_RUN_TAG: metaflow_run_id, "config_type": run_config.config_type.name,
                  "git_commit": git_commit or "unknown"},
        )  # fmt: skip
        log_params(uri, run_id, run_config.flat_params())
    except MlflowException as exc:
        if exc.get_http_status_code() in (401, 403):
            raise TrackingCredentialsError(
                f"MLFLOW_TRACKING_URI: the tracking server at {uri} refused the request "
                f"(HTTP {exc.get_http_status_code()}): set {CREDENTIAL_VARIABLES} for it"
            ) from None
        raise
    from steps.registry.run_metadata import describe_run

    describe_run(client_for(uri), run_id, git_commit=git_commit)
    return run_id


def set_tags(uri: str, run_id: str, tags: Mapping[str, object]) -> None:
    client = client_for(uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_params(uri: str, run_id: str, params: Mapping[str, object]) -> None:
    """Log params in one batch; params already logged are left as they are.

    MLflow refuses to change a param. A resumed or retried job logs its params again, and a few may
    legitimately differ (a fault-injection setting, a node-local path): the first value stays, and
    the changed keys are reported on stderr rather than failing the job.
    """
    import sys

    from mlflow.entities import Param

    client = client_for(uri)
    existing = client.get_run(run_id).data.params
    values = {key: _param_str(value) for key, value in params.items()}
    changed = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
    if changed:
        print(f"MLflow params kept at their first value (this attempt differs): {changed}", file=sys.stderr)
    fresh = [Param(key, value) for key, value in values.items() if key not in existing]
    for start in range(0, len(fresh), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=fresh[start : start + 100])


def _param_str(value: object) -> str:
    return str(value)[:6000]


def log_metrics(
    uri: str,
    run_id: str,
    metrics: Mapping[str, float] | Sequence[tuple[str, float, int]],
    *,
    step: int = 0,
) -> None:
    """Log metrics in one ``log_batch`` (sqlite costs ~24 ms per call; batching matters).

    ``metrics`` is either ``{name: value}`` (all at ``step``) or ``[(name, value, step), ...]``.
    """
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    if isinstance(metrics, Mapping):
        items = [(k, float(v), step) for k, v in metrics.items()]
    else:
        items = [(k, float(v), int(s)) for k, v, s in metrics]
    entities = [Metric(key=k, value=v, timestamp=now, step=s) for k, v, s in items]
    client = client_for(uri)
    for start in range(0, len(entities), 1000):
        client.log_batch(run_id, metrics=entities[start : start + 1000])


def logged_metric_steps(uri: str, run_id: str, key: str) -> set[int]:
    """Steps already logged for ``key`` (used to avoid duplicate points after a resume)."""
    client = client_for(uri)
    return {m.step for m in client.get_metric_history(run_id, key)}


def log_artifacts(uri: str, run_id: str, local_dir: str | os.PathLike, artifact_path: str | None = None):
    """Upload a folder's files under ``artifact_path`` of the run; returns the artifact URI."""
    client = client_for(uri)
    client.log_artifacts(run_id, str(local_dir), artifact_path)
    base = client.get_run(run_id).info.artifact_uri
    return f"{base}/{artifact_path}" if artifact_path else base


def log_files(uri: str, run_id: str, files: Mapping[str, str], artifact_path: str | None = None) -> None:
    """Log local files as ``artifact_path``/``name`` (``files``: name -> local path; the name's last part
    must be the file's own name, which MLflow keeps)."""
    if not files:
        return
    configure_mlflow_env()
    client = client_for(uri)
    for name, path in files.items():
        if os.path.basename(name) != os.path.basename(path):
            raise ValueError(f"artifact name {name!r} must end with the file name of {path}")
        folder = "/".join(p for p in (artifact_path, os.path.dirname(name)) if p) or None
        client.log_artifact(run_id, path, folder)


def log_file_contents(
    uri: str, run_id: str, contents: Mapping[str, bytes], artifact_path: str | None = None
) -> None:
    """Like ``log_files``, for files held in memory (``contents``: artifact name -> bytes), e.g. a
    Metaflow artifact carried from the task that made them to the task that logs them."""
    import tempfile

    if not contents:
        return
    with tempfile.TemporaryDirectory(prefix="vla-sft-log-") as tmp:
        files = {}
        for i, (name, data) in enumerate(contents.items()):
            # One folder per file: two names with the same base name (plots/a.png, rollouts/a.png) can't collide.
            path = Path(tmp) / str(i) / os.path.basename(name)
            path.parent.mkdir()
            path.write_bytes(data)
            files[name] = str(path)
        log_files(uri, run_id, files, artifact_path=artifact_path)


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client_for(uri).set_terminated(run_id, status=status)


FAILED_STEP_TAG = "vla_sft.failed_step"
INTERRUPTED_TAG = "vla_sft.interrupted_run"  # a Metaflow run of the lineage that ended without a word


def mark_failed(uri: str, run_id: str, *, step: str, pathspec: str, timeout_s: int = 10) -> None:
    """Mark the lineage's MLflow run FAILED, naming the failing step (``vla_sft.failed_step``) and task.

    Called as a step fails for good; bounded (``timeout_s`` per call, no retries), since the tracking server
    may be what failed. The next ``resume`` takes the run back (``claim_run``).
    """
    bounded = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {key: os.environ.get(key) for key in bounded}
    os.environ.update(bounded)  # MLflow reads both at every request
    try:
        client = client_for(uri)
        client.set_tag(run_id, FAILED_STEP_TAG, step)
        client.set_tag(run_id, "vla_sft.failed_task", pathspec)
        client.set_terminated(run_id, status="FAILED")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def claim_run(uri: str, run_id: str, *, pathspec: str) -> str | None:
    """Make this Metaflow run (``<flow>/<run id>``) the owner of the lineage's MLflow run; return what the
    previous owner left it as, or None when this run owns it already.

    A resume is a new Metaflow run: its first step finds the run tagged with an earlier Metaflow run. FAILED:
    that run's failing step said so. Still RUNNING: that run was killed outright (SIGKILL, a lost machine)
    and could not; it is recorded as ``vla_sft.interrupted_run`` now. Either way the run is RUNNING again
    until ``register`` finishes it.
    """
    configure_mlflow_env()
    client = client_for(uri)
    run = client.get_run(run_id)
    previous = run.data.tags.get(PATHSPEC_TAG)
    if previous == pathspec:
        return None
    if run.info.status == "RUNNING" and previous:
        client.set_tag(run_id, INTERRUPTED_TAG, previous)
    outcome = "killed" if run.info.status == "RUNNING" else run.info.status
    client.set_tag(run_id, PATHSPEC_TAG, pathspec)
    failed_step = run.data.tags.get(FAILED_STEP_TAG)
    if failed_step:  # history: which step the resumed run had failed in; the run itself is live again
        client.set_tag(run_id, "vla_sft.resumed_after", f"{failed_step} failed in {previous}")
        client.delete_tag(run_id, FAILED_STEP_TAG)
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    return outcome
