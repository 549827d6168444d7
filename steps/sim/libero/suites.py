"""LIBERO's four evaluation suites: task names, prompts, step limits (no LIBERO import).

The task order and names are LIBERO's (``libero.libero.benchmark``, hf-libero 0.1.4, task order 0);
each task has 50 fixed initial states. Step limits are openpi's LIBERO evaluation (examples/libero):
longer than the longest demonstration of the suite. ``tests/test_libero.py`` checks this table against
the installed LIBERO.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

SUITES: dict[str, tuple[str, ...]] = {
    "libero_spatial": (
        "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_next_to_the_ramekin_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_from_table_center_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_on_the_cookie_box_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_in_the_top_drawer_of_the_wooden_cabinet_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_on_the_ramekin_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_next_to_the_cookie_box_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_on_the_stove_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_next_to_the_plate_and_place_it_on_the_plate",
        "pick_up_the_black_bowl_on_the_wooden_cabinet_and_place_it_on_the_plate",
    ),
    "libero_object": (
        "pick_up_the_alphabet_soup_and_place_it_in_the_basket",
        "pick_up_the_cream_cheese_and_place_it_in_the_basket",
        "pick_up_the_salad_dressing_and_place_it_in_the_basket",
        "pick_up_the_bbq_sauce_and_place_it_in_the_basket",
        "pick_up_the_ketchup_and_place_it_in_the_basket",
        "pick_up_the_tomato_sauce_and_place_it_in_the_basket",
        "pick_up_the_butter_and_place_it_in_the_basket",
        "pick_up_the_milk_and_place_it_in_the_basket",
        "pick_up_the_chocolate_pudding_and_place_it_in_the_basket",
        "pick_up_the_orange_juice_and_place_it_in_the_basket",
    ),
    "libero_goal": (
        "open_the_middle_drawer_of_the_cabinet",
        "put_the_bowl_on_the_stove",
        "put_the_wine_bottle_on_top_of_the_cabinet",
        "open_the_top_drawer_and_put_the_bowl_inside",
        "put_the_bowl_on_top_of_the_cabinet",
        "push_the_plate_to_the_front_of_the_stove",
        "put_the_cream_cheese_in_the_bowl",
        "turn_on_the_stove",
        "put_the_bowl_on_the_plate",
        "put_the_wine_bottle_on_the_rack",
    ),
    "libero_10": (
        "LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket",
        "LIVING_ROOM_SCENE2_put_both_the_cream_cheese_box_and_the_butter_in_the_basket",
        "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it",
        "KITCHEN_SCENE4_put_the_black_bowl_in_the_bottom_drawer_of_the_cabinet_and_close_it",
        "LIVING_ROOM_SCENE5_put_the_white_mug_on_the_left_plate_and_put_the_yellow_and_white_mug_on_the_right_plate",
        "STUDY_SCENE1_pick_up_the_book_and_place_it_in_the_back_compartment_of_the_caddy",
        "LIVING_ROOM_SCENE6_put_the_white_mug_on_the_plate_and_put_the_chocolate_pudding_to_the_right_of_the_plate",
        "LIVING_ROOM_SCENE1_put_both_the_alphabet_soup_and_the_cream_cheese_box_in_the_basket",
        "KITCHEN_SCENE8_put_both_moka_pots_on_the_stove",
        "KITCHEN_SCENE6_put_the_yellow_and_white_mug_in_the_microwave_and_close_it",
    ),
}
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
INIT_STATES_PER_TASK = 50
DEFAULT_SUITE = "libero_spatial"
_SUITE_OF = {task: suite for suite, tasks in SUITES.items() for task in tasks}
_SCENE_PREFIX = re.compile(r"^[A-Z_]+_SCENE\d+_")


def check_suite(suite: str) -> str:
    if suite not in SUITES:
        close = difflib.get_close_matches(str(suite), SUITES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"LIBERO suite {suite!r} is not one of {list(SUITES)}{hint}")
    return suite


def suite_of(task: str) -> str:
    return _SUITE_OF[check_task_names([task])[0]]


def check_task_names(tasks: Iterable[str], suite: str | None = None) -> tuple[str, ...]:
    """Task names as given, or task indices within `suite` ("0", "3") turned into names."""
    out = []
    for task in tasks:
        task = str(task).strip()
        if suite is not None and task.isdigit():
            names = SUITES[check_suite(suite)]
            if int(task) >= len(names):
                raise ValueError(f"LIBERO task index {task}: {suite} has tasks 0..{len(names) - 1}")
            task = names[int(task)]
        if task not in _SUITE_OF or (suite is not None and _SUITE_OF[task] != suite):
            pool = SUITES[suite] if suite is not None else list(_SUITE_OF)
            close = difflib.get_close_matches(task, pool, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"suite {suite}" if suite is not None else "LIBERO's four suites"
            raise ValueError(f"LIBERO task {task!r} is not a task of {where}{hint}")
        out.append(task)
    return tuple(out)


def task_prompt(task: str) -> str:
    """The language instruction LIBERO gives the task (the dataset's task string)."""
    return _SCENE_PREFIX.sub("", task).replace("_", " ")
