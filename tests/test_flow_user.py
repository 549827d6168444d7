"""The flow's Metaflow user name (flows/user.py): anyone can run the quick start, root in a container too.

Metaflow stops with "Unknown user" when none of METAFLOW_USER, SUDO_USER, USERNAME, USER names a user
other than root. The rule is checked against Metaflow's own ``get_username`` and in real flow runs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import sys
import threading

import pytest

from flows.user import FALLBACK_USER, METAFLOW_USER_VARIABLES, ensure_metaflow_user, missing_metaflow_user
from tests.test_flow import FLOW, flow_env, inspect_run, run_flow

ACCOUNT = pwd.getpwuid(os.getuid()).pw_name
# What the flow must pick here when no variable names a user: root is refused by Metaflow.
EXPECTED_FALLBACK = ACCOUNT if ACCOUNT != "root" else FALLBACK_USER


def _stop(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def env_without_user(root, **extra: str) -> dict:
    env = flow_env(root, **extra)
    for var in METAFLOW_USER_VARIABLES:
        if var not in extra:
            env.pop(var, None)
    return env


@pytest.mark.parametrize(
    ("environ", "account", "expected"),
    [
        ({}, "alice", "alice"),
        ({}, "root", FALLBACK_USER),
        ({}, "", FALLBACK_USER),  # a uid with no passwd entry
        ({"USERNAME": "root"}, "root", FALLBACK_USER),
        ({"USER": "root", "USERNAME": "", "SUDO_USER": "root", "METAFLOW_USER": ""}, "bob", "bob"),
        ({"USER": "carol"}, "root", None),
        ({"USERNAME": "root", "USER": "carol"}, "root", None),
        ({"SUDO_USER": "dave"}, "root", None),
        ({"METAFLOW_USER": "erin", "USER": "root"}, "root", None),
    ],
)
def test_missing_metaflow_user(environ, account, expected):
    assert missing_metaflow_user(environ, account) == expected


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"USERNAME": "root"},
        {"USER": "root", "SUDO_USER": "root"},
        {"USER": "carol"},
        {"METAFLOW_USER": "e"},
    ],
)
def test_metaflow_accepts_the_user_after_ensure(environ, monkeypatch):
    """Metaflow's own get_username names a user after ensure_metaflow_user, and the one it would have
    named anyway when nothing is set."""
    import metaflow.metaflow_config
    from metaflow.util import get_username

    for var in METAFLOW_USER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    for var, value in environ.items():
        monkeypatch.setenv(var, value)
    # Metaflow reads METAFLOW_USER once, at import (this process imported it long ago).
    monkeypatch.setattr(metaflow.metaflow_config, "USER", environ.get("METAFLOW_USER"))
    before = get_username()
    set_name = ensure_metaflow_user(os.environ)
    after = get_username()
    assert after and after != "root"
    if set_name is None:
        assert after == before
    else:
        assert before is None and after == set_name == os.environ["USERNAME"] == EXPECTED_FALLBACK


def test_start_succeeds_as_username_root(tmp_path):
    """USERNAME=root (Metaflow's "Unknown user"): start runs and the run is tagged with the fallback
    user. The run is stopped once start has finished; the rest of the DAG is the slow test's job."""
    env = env_without_user(tmp_path, USERNAME="root")
    proc = subprocess.Popen([sys.executable, str(FLOW), "run", "--demo"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    lines = []
    watchdog = threading.Timer(300, _stop, (proc, signal.SIGKILL))  # a hung run still ends the test
    watchdog.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if "/start/" in line and "Task finished successfully" in line:
                break
    finally:
        watchdog.cancel()
        _stop(proc, signal.SIGTERM)  # the runtime and the task it started next
        proc.communicate(timeout=120)
    out = "".join(lines)
    assert "Unknown user" not in out, out[-3000:]
    assert f"for user:{EXPECTED_FALLBACK}" in out, out[-3000:]
    info = inspect_run(tmp_path)
    assert info["steps"]["start"] is True, out[-3000:]
    assert f"user:{EXPECTED_FALLBACK}" in info["tags"]


@pytest.mark.slow
def test_quick_start_demo_runs_with_no_user_variables(tmp_path):
    """The README's quick-start command with no user variable at all (root in a fresh container), kept
    short with fewer training steps and no rollouts."""
    env = env_without_user(tmp_path)
    result = run_flow(tmp_path, "run", "--config_type", "pi05_metaworld", "--demo", "--max_steps", "4",
                      "--sim_episodes", "0", env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    info = inspect_run(tmp_path)
    assert info["successful"] and all(info["steps"].values())
    assert f"user:{EXPECTED_FALLBACK}" in info["tags"]
