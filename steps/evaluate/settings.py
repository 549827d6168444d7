"""Closed-loop evaluation settings, checked in ``start`` (no simulator import)."""

from __future__ import annotations

# Closed-loop defaults (LeRobot's protocol: 10 episodes per task, up to 500 steps, success if ever reached);
# the --demo run keeps it to a few minutes on a CPU.
SIM_EPISODES = 10
SIM_MAX_STEPS = 500
DEMO_SIM_EPISODES = 2
DEMO_SIM_MAX_STEPS = 100


def sim_settings(demo: bool, episodes: int | None, max_steps: int | None) -> tuple[int, int]:
    """(episodes per task, step limit) for the closed-loop evaluation: explicit values win, then defaults."""
    default_episodes, default_steps = (
        (DEMO_SIM_EPISODES, DEMO_SIM_MAX_STEPS) if demo else (SIM_EPISODES, SIM_MAX_STEPS)
    )
    episodes = default_episodes if episodes is None else episodes
    max_steps = default_steps if max_steps is None else max_steps
    if episodes < 0 or max_steps <= 0:
        raise ValueError(
            f"--sim_episodes / --sim_max_steps: must be >= 0 / > 0, got {episodes} / {max_steps}"
        )
    return episodes, max_steps


def check_sim_tasks(tasks: str | None) -> tuple[str, ...] | None:
    """``--sim_tasks`` as a tuple of known Meta-World task names (None: the default tasks)."""
    if not tasks:
        return None
    from steps.sim.metaworld.tasks import check_task_names

    names = tuple(t.strip() for t in tasks.split(","))
    try:
        check_task_names(list(names))
    except ValueError as err:
        raise ValueError(f"--sim_tasks: {err}") from None
    return names
