"""A user name for Metaflow, so the flow runs for anyone, root in a container included.

Metaflow (``metaflow.util.get_username``, 2.19) takes the first of ``METAFLOW_USER`` (environment, then
its config files), ``SUDO_USER``, ``USERNAME``, ``USER`` that is set and is not ``root``; with none it
stops every command with "Unknown user". Root in a container often has none of them, or only ``root``.
Then the flow names the OS account, or a fixed name for root.

It sets ``USERNAME``, not ``METAFLOW_USER``: a ``METAFLOW_USER`` kept in a Metaflow config file ranks above
``USERNAME`` and still wins, and ``getpass`` (MLflow's user tag) reads ``USERNAME`` only after
``LOGNAME`` and ``USER``. Must run before Metaflow is imported (it reads ``METAFLOW_USER`` at import).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping, MutableMapping

FALLBACK_USER = "vla-sft"
# Metaflow's order; the first usable one names the user.
METAFLOW_USER_VARIABLES = ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")


def _usable(name: str | None) -> bool:
    return bool(name) and name != "root"


def missing_metaflow_user(environ: Mapping[str, str], account: str) -> str | None:
    """The name to give Metaflow, or None when ``environ`` already names a user Metaflow accepts.

    ``account`` is the OS account name (``pwd``); root gets ``FALLBACK_USER``, as Metaflow refuses it.
    """
    if any(_usable(environ.get(var)) for var in METAFLOW_USER_VARIABLES):
        return None
    return account if _usable(account) else FALLBACK_USER


def _account_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers run with --user 1234)
        return ""


def ensure_metaflow_user(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set ``USERNAME`` when nothing names a usable user; returns the name set, or None."""
    name = missing_metaflow_user(environ, _account_name())
    if name is not None:
        environ["USERNAME"] = name
    return name
