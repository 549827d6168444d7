"""Inspect a local LeRobot dataset (v2.0 / v2.1 / v3.0) and suggest a custom config-type YAML.

    python -m data_adapters.inspect_dataset /path/to/dataset [--name my_robot]

Reads only the metadata: meta/info.json, tasks (v2.x meta/tasks.jsonl, v3.0 meta/tasks.parquet)
and episodes (v2.x meta/episodes.jsonl, v3.0 meta/episodes/*/*.parquet).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from data_adapters.config_types import MODEL_ACTION_DIM, feature_dims, validate_against_dataset


def load_info(root: Path) -> dict[str, Any]:
    from data_adapters.lerobot_format import INFO_PATH  # lazily: pyarrow is not needed here

    path = root / INFO_PATH
    if not path.is_file():
        raise ValueError(f"{root} is not a LeRobot dataset: {path} does not exist")
    info = json.loads(path.read_text())
    if not isinstance(info.get("features"), dict):
        raise ValueError(f"{path}: missing key 'features'")
    return info


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_tasks(root: Path) -> list[str]:
    """Task strings in task_index order."""
    jsonl = root / "meta" / "tasks.jsonl"
    if jsonl.is_file():
        rows = sorted(_jsonl(jsonl), key=lambda r: r.get("task_index", 0))
        return [str(r["task"]) for r in rows]
    parquet = root / "meta" / "tasks.parquet"
    if not parquet.is_file():
        return []
    import pyarrow.parquet as pq

    table = pq.read_table(parquet).to_pylist()
    # v3.0 stores the task string as the (pandas) index column next to task_index.
    text_col = next((k for k, v in (table[0] if table else {}).items() if isinstance(v, str)), None)
    if text_col is None:
        return []
    rows = sorted(table, key=lambda r: r.get("task_index", 0))
    return [r[text_col] for r in rows]


def read_episode_lengths(root: Path) -> list[int]:
    jsonl = root / "meta" / "episodes.jsonl"
    if jsonl.is_file():
        return [int(r["length"]) for r in _jsonl(jsonl)]
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        return []
    import pyarrow.parquet as pq

    return [int(n) for f in files for n in pq.read_table(f, columns=["length"]).column("length").to_pylist()]


def _pick(keys: list[str], exact: tuple[str, ...], prefixes: tuple[str, ...]) -> list[str]:
    for key in exact:
        if key in keys:
            return [key]
    for prefix in prefixes:
        found = [k for k in keys if k.startswith(prefix)]
        if found:
            return found
    return []


def suggest_mapping(info: dict[str, Any], *, root: Path, name: str) -> dict[str, Any]:
    """A custom-YAML dict guessed from the feature names (check it, especially the cameras)."""
    features = info["features"]
    cameras = [k for k, f in features.items() if f.get("dtype") in ("image", "video")]
    numeric = [
        k
        for k, f in features.items()
        if f.get("dtype") not in ("image", "video", "string") and len(f.get("shape") or []) <= 1
    ]
    wrist = [k for k in cameras if "wrist" in k.lower()]
    others = [k for k in cameras if k not in wrist] or wrist[:1]
    wrist = [k for k in wrist if k not in others]
    state = _pick(numeric, ("observation.state", "state"), ("observation.state.", "state."))
    actions = _pick(numeric, ("action", "actions"), ("action.", "actions."))
    action_dim = sum(feature_dims(info, k) for k in actions)
    return {
        "name": name,
        "dataset": {"path": str(root.resolve())},
        "model_type": "pi05",
        "action_horizon": 10,
        "cameras": {
            "base_0_rgb": others[0] if others else None,
            "left_wrist_0_rgb": wrist[0] if wrist else None,
            "right_wrist_0_rgb": wrist[1] if len(wrist) > 1 else None,
        },
        "state_keys": state,
        "action_keys": actions,
        "state_dim": sum(feature_dims(info, k) for k in state),
        "action_dim": action_dim,
        "delta_mask": [False] * action_dim,
        "normalization": "quantile",
    }


def describe(root: Path, *, name: str | None = None) -> str:
    """Human-readable summary plus a suggested YAML (with a note if it does not validate)."""
    from data_adapters.custom_yaml import config_from_dict
    from data_adapters.registry import builtin_config_types

    info = load_info(root)
    tasks, lengths = read_tasks(root), read_episode_lengths(root)
    lines = [
        f"dataset: {root}",
        f"version: {info.get('codebase_version')}  fps: {info.get('fps')}  "
        f"robot_type: {info.get('robot_type')}",
        f"episodes: {info.get('total_episodes', len(lengths))}  frames: {info.get('total_frames', sum(lengths))}"
        + (f"  (episode length min {min(lengths)} / max {max(lengths)})" if lengths else ""),
        "features:",
    ]
    for key, feature in info["features"].items():
        lines.append(f"  {key:<40} {feature.get('dtype')!s:<10} shape={feature.get('shape')}")
    lines.append(f"tasks ({len(tasks)}):")
    lines += [f"  {t}" for t in tasks[:20]] + ([f"  ... {len(tasks) - 20} more"] if len(tasks) > 20 else [])
    name = name or re.sub(r"[^A-Za-z0-9_]+", "_", root.resolve().name).strip("_") or "my_robot"
    suggestion = suggest_mapping(info, root=root, name=name)
    try:
        validate_against_dataset(
            config_from_dict(suggestion, path=Path(f"{name}.yaml"), builtins=builtin_config_types()), info
        )
        note = "# checked against meta/info.json; review the camera slots and delta_mask before training"
    except ValueError as err:
        note = f"# does NOT validate yet, edit it: {err}"
    if suggestion["state_dim"] > MODEL_ACTION_DIM or suggestion["action_dim"] > MODEL_ACTION_DIM:
        note += f"\n# state/action dims above {MODEL_ACTION_DIM}: pick fewer keys"
    lines += [
        "",
        "# suggested config type (save as my_robot.yaml; see data_adapters/examples/my_robot.yaml)",
        note,
        yaml.safe_dump(suggestion, sort_keys=False, default_flow_style=None).rstrip(),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="local LeRobot dataset folder (with meta/info.json)")
    parser.add_argument("--name", default=None, help="name for the suggested config type")
    args = parser.parse_args(argv)
    try:
        print(describe(args.path, name=args.name))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
