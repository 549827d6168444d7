"""Small checks shared by the config dataclasses: errors that name the field and its value, and a
"Did you mean" hint for misspelled names."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Any


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class Validated:
    """Mixin for frozen dataclasses: `_need(field, ok, what)` raises naming the field and its value."""

    def _owner(self) -> str:
        name = getattr(self, "name", None)
        return f"config type {name!r}" if isinstance(name, str) else type(self).__name__

    def _need(self, field_name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(
                f"{self._owner()}: {field_name} must be {what}, got {getattr(self, field_name)!r}"
            )

    def _as_tuple(self, field_name: str) -> None:
        value = getattr(self, field_name)
        if isinstance(value, list):
            object.__setattr__(self, field_name, tuple(value))


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
