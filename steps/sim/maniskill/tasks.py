"""The ManiSkill3 tasks we run: ones that need no asset download and have a shipped motion-planning solution.

Pure Python (no numpy, no ManiSkill), so both the main process and the worker in the ManiSkill venv import it.

Facts (mani-skill 3.0.1, measured here): the Panda robot and these four tasks load without downloads; the
YCB tasks (PickSingleYCB-v1, ...) download assets on first use and ask on the terminal, which would hang a
flow, so they are refused. The shipped planners (``mani_skill.examples.motionplanning.panda.solutions``)
solved PickCube, PushCube and StackCube 5/5 and PegInsertionSide 2/5 (state only, 0.2-2.7 s an episode).
Every task runs at 20 Hz control (100 Hz physics).
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_TASK = "PickCube-v1"
CONTROL_FREQ = 20  # Hz: ManiSkill's tabletop tasks step the controller at 20 Hz; the dataset's fps
# The planner's control mode (joint targets), and the one our datasets and policies act in.
PLANNER_CONTROL_MODE = "pd_joint_pos"
DATASET_CONTROL_MODE = "pd_ee_delta_pose"
CONTROL_MODES = ("pd_ee_delta_pose", "pd_joint_pos")

# task -> (prompt, solution module under mani_skill.examples.motionplanning.panda.solutions, step limit).
# The step limits are ManiSkill's registered max_episode_steps, doubled: the planner's trajectories are
# slower than the RL policies those limits were set for (PickCube plans run ~80-120 steps).
_TASKS: dict[str, tuple[str, str, int]] = {
    "PickCube-v1": ("pick up the red cube and move it to the green target", "pick_cube", 200),
    "PushCube-v1": ("push the cube into the red and white target", "push_cube", 200),
    "StackCube-v1": ("stack the red cube on top of the green cube", "stack_cube", 200),
    "PegInsertionSide-v1": ("insert the peg into the hole in the side of the box", "peg_insertion_side", 400),
}
TASKS: tuple[str, ...] = tuple(_TASKS)
_DOWNLOAD_PREFIXES = ("PickSingleYCB", "PickClutterYCB", "TwoRobotPickCube", "OpenCabinet", "RoboCasa")


def check_task_names(names: Sequence[str]) -> tuple[str, ...]:
    """The names as a tuple; ValueError naming the first unknown one and the supported tasks."""
    if isinstance(names, str) or not names:
        raise ValueError(f"tasks: expected a non-empty list of ManiSkill task names from {list(TASKS)}")
    for name in names:
        if name in _TASKS:
            continue
        if str(name).startswith(_DOWNLOAD_PREFIXES):
            raise ValueError(
                f"tasks: {name} needs an asset download (it prompts on the terminal); supported offline: "
                f"{', '.join(TASKS)}"
            )
        raise ValueError(f"tasks: unknown ManiSkill task {name!r}; supported: {', '.join(TASKS)}")
    return tuple(names)


def prompt(task: str) -> str:
    return _TASKS[check_task_names([task])[0]][0]


def solution_module(task: str) -> str:
    return "mani_skill.examples.motionplanning.panda.solutions." + _TASKS[check_task_names([task])[0]][1]


def max_steps(task: str) -> int:
    return _TASKS[check_task_names([task])[0]][2]
