"""The query of a generated-dataset URI (``metaworld://``, ``libero://``, ``maniskill://``): ``key=value``
pairs joined by ``&``, read into the keyword arguments of that simulator's dataset spec. Numpy-free."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection


def parse_query(uri: str, scheme: str, spec_cls, *, text: Collection[str] = (),
                flags: Collection[str] = ()) -> dict:  # fmt: skip
    """``spec_cls`` keyword arguments from ``uri``: ``tasks`` a tuple of names, the ``text`` fields as given,
    the ``flags`` as booleans, every other field an integer. Each error names the URI and the key."""
    if not isinstance(uri, str) or not uri.startswith(scheme):
        raise ValueError(f"dataset: expected a URI starting with {scheme!r}, got {uri!r}")
    fields = {f.name for f in dataclasses.fields(spec_cls)}
    kwargs: dict = {}
    for part in filter(None, uri[len(scheme) :].split("&")):
        key, sep, value = part.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"{uri}: cannot read {part!r}; expected key=value with key in {sorted(fields)}")
        if key == "tasks":
            kwargs[key] = tuple(t.strip() for t in value.split(",") if t.strip())
        elif key in flags:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{uri}: {key} must be true or false, got {value!r}")
            kwargs[key] = value.lower() in ("true", "1")
        elif key in text:
            kwargs[key] = value
        else:
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ValueError(f"{uri}: {key} must be an integer, got {value!r}") from None
    return kwargs
