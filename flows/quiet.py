"""Quiet defaults for a flow run: no warning or INFO line for what is expected in every run.

Set before Metaflow and MLflow are imported, with ``setdefault``, so a user who sets any of them keeps their
value, and inherited by every task and torchrun worker of the run:

- ``METAFLOW_PYLINT=false``: Metaflow's ``--pylint/--no-pylint`` option read from the environment (its CLI
  takes options from ``METAFLOW_*`` variables); otherwise every run without pylint installed says "Pylint
  not found, so extra checks are disabled." (the flow's graph is still validated);
- ``MLFLOW_LOGGING_LEVEL=WARNING``: MLflow's INFO lines (creating database tables, system metrics monitor
  started / stopped) stay out; its warnings and errors still show;
- ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``: MLflow's artifact bars redraw with carriage returns,
  which a task's log (a pipe) shows only as one long line after the copy is done.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

QUIET_DEFAULTS = {
    "METAFLOW_PYLINT": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def quiet_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    environ = os.environ if environ is None else environ
    for name, value in QUIET_DEFAULTS.items():
        environ.setdefault(name, value)
