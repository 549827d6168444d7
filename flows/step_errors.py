"""How a flow step shows a user error (``steps.errors``): as a Metaflow exception, which Metaflow prints
as headline + message, never as "Internal error" and a traceback. The traceback is saved to
``<cache root>/errors/<flow>/<run id>/<step>-<task id>.txt`` and the message's last line names that file.

    @step
    @reported
    def fetch_data(self): ...

Any other exception passes through untouched (a bug: Metaflow's full traceback is what helps then).
"""

from __future__ import annotations

import functools

from metaflow.exception import MetaflowException


class InvalidInput(MetaflowException):
    headline = "Invalid input"


class UserFacingError(MetaflowException):
    """A user error on its way to the console: its headline ("Dataset error", ...) and one line."""

    def __init__(self, headline: str, message: str):
        super().__init__(message)
        self.headline = headline


def reported(step_function):
    """Decorate a step (below ``@step``) so a user error leaves it as one ``UserFacingError``."""

    @functools.wraps(step_function)
    def run_step(flow, *args):
        try:
            return step_function(flow, *args)
        except MetaflowException:
            raise
        except Exception as exc:
            from steps import errors

            if not errors.is_user_error(exc):
                raise
            raise as_user_facing(exc) from None

    return run_step


def as_user_facing(exc: BaseException) -> UserFacingError:
    """The ``UserFacingError`` for a user error, its traceback saved first (a worker saved its own)."""
    from metaflow import current

    from steps import errors

    saved = None
    if not isinstance(exc, errors.ReportedUserError):
        task = f"{current.step_name}-{current.task_id}" if current.is_running_flow else "task"
        where = (current.flow_name, current.run_id, task) if current.is_running_flow else ("local", task)
        saved = errors.save_traceback(exc, errors.traceback_path_for(*where))
    return UserFacingError(*errors.render(exc, saved))
