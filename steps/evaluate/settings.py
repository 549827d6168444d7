"""Closed-loop evaluation settings, checked in ``start`` (no simulator import)."""

from __future__ import annotations

# Closed-loop defaults (LeRobot's and openpi's protocols: 10 / 50 episodes per task, success if ever reached,
# the benchmark's own step limit: Meta-World 500, LIBERO 220-520 by suite); the --demo run keeps it to a
# few minutes on a CPU.
SIM_EPISODES = 10
SIM_MAX_STEPS = None  # None: the benchmark's step limit
DEMO_SIM_EPISODES = 2
DEMO_SIM_MAX_STEPS = 100


def sim_settings(demo: bool, episodes: int | None, max_steps: int | None) -> tuple[int, int | None]:
    """(episodes per task, step limit or None) for the closed-loop evaluation: explicit values win."""
    default_episodes, default_steps = (
        (DEMO_SIM_EPISODES, DEMO_SIM_MAX_STEPS) if demo else (SIM_EPISODES, SIM_MAX_STEPS)
    )
    episodes = default_episodes if episodes is None else episodes
    max_steps = default_steps if max_steps is None else max_steps
    if episodes < 0 or (max_steps is not None and max_steps <= 0):
        raise ValueError(
            f"--sim_episodes / --sim_max_steps: must be >= 0 / > 0, got {episodes} / {max_steps}"
        )
    return episodes, max_steps


def check_sim_suite(suite: str | None, simulator: str | None) -> str | None:
    """``--sim_suite``: a LIBERO suite for LIBERO config types (default libero_spatial), else unset."""
    if simulator != "libero":
        if suite:
            raise ValueError(f"--sim_suite: only LIBERO config types have suites (this one: {simulator!r})")
        return None
    from steps.sim.libero.suites import DEFAULT_SUITE, check_suite

    try:
        return check_suite(suite or DEFAULT_SUITE)
    except ValueError as err:
        raise ValueError(f"--sim_suite: {err}") from None


def check_sim_tasks(
    tasks: str | None, simulator: str | None = "metaworld", suite: str | None = None
) -> tuple[str, ...] | None:
    """``--sim_tasks`` as a tuple of the simulator's task names (None: the default tasks). LIBERO also takes
    task indices within ``suite`` ("0,3")."""
    if not tasks:
        return None
    names = tuple(t.strip() for t in tasks.split(","))
    try:
        if simulator == "libero":
            from steps.sim.libero.suites import check_task_names

            return check_task_names(names, suite)
        if simulator == "maniskill":
            from steps.sim.maniskill.tasks import check_task_names

            return check_task_names(names)
        from steps.sim.metaworld.tasks import check_task_names

        check_task_names(list(names))
    except ValueError as err:
        raise ValueError(f"--sim_tasks: {err}") from None
    return names


def check_sim_workers(workers: int | None) -> int | None:
    """``--sim_workers``: simulator processes (0: in the evaluating process; None: one per core, at most
    one per episode)."""
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise ValueError(f"--sim_workers: must be an integer >= 0, got {workers!r}")
    return workers
