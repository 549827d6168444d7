"""User errors: a problem with what the user gave (a command-line value, a dataset, pretrained weights),
not a bug of this project. Every step shows one as a headline and one line naming the file, episode,
frame, key or option; the traceback goes to a file for whoever wants it (the console and the Metaflow
task log show the same lines, so a traceback there would bury the one line that matters).

A user error is deterministic: running the same step again fails the same way, so it is never worth a
retry (``is_user_error`` is what a retry policy asks).

What counts (checked by class, without importing the modules that define them):

- ``steps.errors.UserError`` and its subclasses (``steps.config.validate.InputError``,
  ``steps.text.data.TextDatasetError`` for text rows);
- ``data_adapters.lerobot_format.DatasetFormatError`` (a dataset on disk that is not what it claims);
- ``data_adapters.video.VideoDecodeError`` (a video that cannot be opened or lacks a frame);
- ``model_zoo.hub.CheckpointError`` (weights that cannot be read or do not fit the model);
- ``steps.sim.base.SimulatorNotReady`` (a simulator, its renderer or its assets missing on this machine).

Not: network or Hub unavailability (may pass on a retry), and every other exception (a bug: the full
traceback is what helps then).

Training workers (``python -m steps.train`` under torchrun) cannot raise into the flow's task: a worker
that hits a user error writes it with :func:`write_error_file` and exits non-zero; the ``train`` step
reads it back with :func:`read_error_file` after torchrun fails.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from steps.cache import atomic_write_text, default_cache_root

# (module, class) of every user-error type; looked up in sys.modules, so nothing heavy is imported here
# (an exception of a class whose module was never imported cannot exist).
_USER_ERROR_CLASSES = (
    ("steps.errors", "UserError", "Invalid input"),
    ("data_adapters.lerobot_format", "DatasetFormatError", "Dataset error"),
    ("data_adapters.video", "VideoDecodeError", "Dataset error"),
    ("model_zoo.hub", "CheckpointError", "Checkpoint error"),
    # A simulator, its renderer or its assets missing here: deterministic, the message names the fix.
    ("steps.sim.base", "SimulatorNotReady", "Simulator not ready"),
)
ERRORS_DIR = "errors"  # under the cache root: one traceback file per failed task


class UserError(ValueError):
    """A problem with the user's input; the message is one line naming what to fix."""

    headline = "Invalid input"


class ReportedUserError(UserError):
    """A user error reported from elsewhere (a training worker): carries its own headline."""

    def __init__(self, headline: str, message: str, traceback_path: str | None = None):
        super().__init__(message)
        self.headline = headline
        self.traceback_path = traceback_path


def _matching_class(exc: BaseException):
    for module, name, headline in _USER_ERROR_CLASSES:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return headline
    return None


def is_user_error(exc: BaseException) -> bool:
    """True when ``exc`` is a problem with the user's inputs or data (deterministic: never retry it)."""
    return _matching_class(exc) is not None


def headline(exc: BaseException) -> str:
    """The headline a step shows: 'Invalid input', 'Dataset error' or 'Checkpoint error'."""
    own = getattr(exc, "headline", None)
    if isinstance(own, str) and own:
        return own
    return _matching_class(exc) or "Error"


def one_line(exc: BaseException | str) -> str:
    """The message on one line (internal newlines and runs of spaces collapsed).

    An error re-raised by a torch DataLoader from one of its worker processes carries that worker's
    whole traceback in its message ("Caught X in DataLoader worker process 0. Original Traceback ...");
    only its last line, the original message, is kept.
    """
    text = str(exc)
    if "\nOriginal Traceback (most recent call last):" in text:
        last = text.rstrip().splitlines()[-1]
        name, sep, message = last.partition(": ")
        text = message if sep and " " not in name else last
    return " ".join(text.split())


def traceback_path_for(*parts: str, root: str | os.PathLike | None = None) -> Path:
    """``<cache root>/errors/<part>/.../<last part>.txt`` (e.g. flow, run id, ``step-task``)."""
    base = Path(root) if root is not None else default_cache_root()
    safe = [p.replace(os.sep, "_") for p in parts]
    return base.joinpath(ERRORS_DIR, *safe[:-1], f"{safe[-1]}.txt")


def save_traceback(exc: BaseException, path: str | os.PathLike) -> Path | None:
    """Write ``exc``'s full traceback to ``path`` (atomically); None when it cannot be written."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        path = atomic_write_text(path, text)
    except OSError:
        return None
    return path


def render(exc: BaseException, traceback_path: str | os.PathLike | None = None) -> tuple[str, str]:
    """(headline, message) as a step shows a user error: the one line, then where the traceback is."""
    message = one_line(exc)
    where = traceback_path or getattr(exc, "traceback_path", None)
    if where:
        message += f"\n(traceback: {where})"
    return headline(exc), message


def write_error_file(path: str | os.PathLike, exc: BaseException, traceback_path: str | None = None) -> None:
    """Record a worker's user error for the step that launched it (JSON, written atomically)."""
    record = {"headline": headline(exc), "message": one_line(exc), "type": type(exc).__name__,
              "traceback_path": str(traceback_path) if traceback_path else None}  # fmt: skip
    atomic_write_text(path, json.dumps(record) + "\n")


def read_error_file(path: str | os.PathLike) -> ReportedUserError | None:
    """The user error a worker recorded at ``path``, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads(Path(path).read_text())
        return ReportedUserError(record["headline"], record["message"], record.get("traceback_path"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
