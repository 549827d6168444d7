"""Meta-World MT50 task table: environment names, task strings, ids and difficulty groups.

Data copied from the public lerobot/metaworld_mt50 dataset and LeRobot's Meta-World evaluation so that
generated datasets carry the same task strings and `task_id` values. Two environments share one task
string (push-v3 and push-back-v3), so evaluation keys results on the environment name, never the string.
Pure data: importing this module does not import Meta-World or MuJoCo.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Environment name -> (task id in lerobot/metaworld_mt50, task string written into the dataset).
TASKS: dict[str, tuple[int, str]] = {
    "assembly-v3": (0, "Pick up a nut and place it onto a peg"),
    "basketball-v3": (1, "Dunk the basketball into the basket"),
    "bin-picking-v3": (2, "Grasp the puck from one bin and place it into another bin"),
    "box-close-v3": (3, "Grasp the cover and close the box with it"),
    "button-press-topdown-v3": (4, "Press a button from the top"),
    "button-press-topdown-wall-v3": (5, "Bypass a wall and press a button from the top"),
    "button-press-v3": (6, "Press a button"),
    "button-press-wall-v3": (7, "Bypass a wall and press a button"),
    "coffee-button-v3": (8, "Push a button on the coffee machine"),
    "coffee-pull-v3": (9, "Pull a mug from a coffee machine"),
    "coffee-push-v3": (10, "Push a mug under a coffee machine"),
    "dial-turn-v3": (11, "Rotate a dial 180 degrees"),
    "disassemble-v3": (12, "Pick a nut out of a peg"),
    "door-close-v3": (13, "Close a door with a revolving joint"),
    "door-lock-v3": (14, "Lock the door by rotating the lock clockwise"),
    "door-open-v3": (15, "Open a door with a revolving joint"),
    "door-unlock-v3": (16, "Unlock the door by rotating the lock counter-clockwise"),
    "drawer-close-v3": (17, "Push and close a drawer"),
    "drawer-open-v3": (18, "Open a drawer"),
    "faucet-close-v3": (19, "Rotate the faucet clockwise"),
    "faucet-open-v3": (20, "Rotate the faucet counter-clockwise"),
    "hammer-v3": (21, "Hammer a screw on the wall"),
    "hand-insert-v3": (22, "Insert the gripper into a hole"),
    "handle-press-side-v3": (23, "Press a handle down sideways"),
    "handle-press-v3": (24, "Press a handle down"),
    "handle-pull-side-v3": (25, "Pull a handle up sideways"),
    "handle-pull-v3": (26, "Pull a handle up"),
    "lever-pull-v3": (27, "Pull a lever down 90 degrees"),
    "peg-insert-side-v3": (28, "Insert a peg sideways"),
    "peg-unplug-side-v3": (29, "Unplug a peg sideways"),
    "pick-out-of-hole-v3": (30, "Pick up a puck from a hole"),
    "pick-place-v3": (31, "Pick and place a puck to a goal"),
    "pick-place-wall-v3": (32, "Pick a puck, bypass a wall and place the puck"),
    "plate-slide-back-side-v3": (33, "Get a plate from the cabinet sideways"),
    "plate-slide-back-v3": (34, "Get a plate from the cabinet"),
    "plate-slide-side-v3": (35, "Slide a plate into a cabinet sideways"),
    "plate-slide-v3": (36, "Slide a plate into a cabinet"),
    "push-back-v3": (37, "Push the puck to a goal"),
    "push-v3": (38, "Push the puck to a goal"),
    "push-wall-v3": (39, "Bypass a wall and push a puck to a goal"),
    "reach-v3": (40, "Reach a goal position"),
    "reach-wall-v3": (41, "Bypass a wall and reach a goal"),
    "shelf-place-v3": (42, "Pick and place a puck onto a shelf"),
    "soccer-v3": (43, "Kick a soccer into the goal"),
    "stick-pull-v3": (44, "Grasp a stick and pull a box with the stick"),
    "stick-push-v3": (45, "Grasp a stick and push a box using the stick"),
    "sweep-into-v3": (46, "Sweep a puck into a hole"),
    "sweep-v3": (47, "Sweep a puck off the table"),
    "window-open-v3": (48, "Push and open a window"),
    "window-close-v3": (49, "Push and close a window"),
}

# Difficulty groups used to report success rates (easy 28, medium 11, hard 6, very hard 5).
DIFFICULTY_TO_TASKS: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press-v3",
        "button-press-topdown-v3",
        "button-press-topdown-wall-v3",
        "button-press-wall-v3",
        "coffee-button-v3",
        "dial-turn-v3",
        "door-close-v3",
        "door-lock-v3",
        "door-open-v3",
        "door-unlock-v3",
        "drawer-close-v3",
        "drawer-open-v3",
        "faucet-close-v3",
        "faucet-open-v3",
        "handle-press-v3",
        "handle-press-side-v3",
        "handle-pull-v3",
        "handle-pull-side-v3",
        "lever-pull-v3",
        "plate-slide-v3",
        "plate-slide-back-v3",
        "plate-slide-back-side-v3",
        "plate-slide-side-v3",
        "reach-v3",
        "reach-wall-v3",
        "window-close-v3",
        "window-open-v3",
        "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3",
        "bin-picking-v3",
        "box-close-v3",
        "coffee-pull-v3",
        "coffee-push-v3",
        "hammer-v3",
        "peg-insert-side-v3",
        "push-wall-v3",
        "soccer-v3",
        "sweep-v3",
        "sweep-into-v3",
    ),
    "hard": (
        "assembly-v3",
        "hand-insert-v3",
        "pick-out-of-hole-v3",
        "pick-place-v3",
        "push-v3",
        "push-back-v3",
    ),
    "very_hard": (
        "shelf-place-v3",
        "disassemble-v3",
        "stick-pull-v3",
        "stick-push-v3",
        "pick-place-wall-v3",
    ),
}

_TASK_TO_DIFFICULTY = {task: group for group, tasks in DIFFICULTY_TO_TASKS.items() for task in tasks}


def check_task_names(names: Iterable[str]) -> tuple[str, ...]:
    """Return `names` as a tuple; an unknown or repeated environment name -> ValueError."""
    names = tuple(names)
    if not names:
        raise ValueError("tasks: expected at least one Meta-World environment name, e.g. 'reach-v3'")
    for name in names:
        if name not in TASKS:
            close = difflib.get_close_matches(name, list(TASKS), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"tasks: unknown Meta-World environment {name!r}.{hint} Known: {', '.join(TASKS)}"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"tasks: {duplicates} listed more than once")
    return names


def task_id(name: str) -> int:
    """Task id of an environment name, as in lerobot/metaworld_mt50."""
    return TASKS[check_task_names([name])[0]][0]


def task_string(name: str) -> str:
    """Natural-language task (the prompt) of an environment name."""
    return TASKS[check_task_names([name])[0]][1]


def task_difficulty(name: str) -> str:
    """Difficulty group ("easy", "medium", "hard", "very_hard") of an environment name."""
    return _TASK_TO_DIFFICULTY[check_task_names([name])[0]]
