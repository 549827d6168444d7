"""Promote a registered model version to an alias (``champion`` by default), behind gates.

    python -m steps.promote --name pi05_metaworld --version 3 --to champion \\
        --gate 'val_action_mse<=0.05' --must-beat champion --reason 'beats v2 on MT50 easy'
    python -m steps.promote --name pi05_metaworld --list [--metrics val_loss,sim/success_rate]
    python -m steps.promote --name pi05_metaworld --version candidate --to champion   # the last registered

A version's metrics are its source run's metrics, overridden by version tags named ``metric.<key>``
(what ``steps.registry.register`` writes). Gates are ``METRIC OP NUMBER``; ``--must-beat ALIAS`` compares the
candidate with the alias's current holder on every gated metric (the gate's operator gives the
direction) or, without gates, on ``--metric`` (lower is better unless ``--higher-is-better``).
The alias moves only when every check passes; who, when and why are recorded as version tags.
"""

from __future__ import annotations

import argparse
import getpass
import operator
import os
import re
import sys
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, datetime

from steps.registry.register import METRIC_TAG_PREFIX, name_filter

_OPS = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
    "!=": operator.ne,
}
_GATE_RE = re.compile(
    r"^\s*([A-Za-z0-9_./-]+)\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


class PromotionError(ValueError):
    """A promotion request that cannot be carried out (bad input, missing version or metric)."""


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        match = _GATE_RE.match(text)
        if not match:
            raise PromotionError(
                f"malformed gate {text!r}: expected METRIC OP NUMBER, e.g. 'val_action_mse<=0.05', "
                f"with OP one of {', '.join(_OPS)}"
            )
        return cls(match.group(1), match.group(2), float(match.group(3)))

    @property
    def lower_is_better(self) -> bool:
        return self.op in ("<=", "<")

    def passes(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


@dataclass
class Check:
    what: str
    passed: bool
    detail: str


@dataclass
class PromotionResult:
    name: str
    version: str
    alias: str
    promoted: bool
    checks: list[Check] = field(default_factory=list)
    previous_holder: str | None = None
    table: str = ""

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def _client(tracking_uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _get_version(client, name: str, version: str):
    """A version by number, or by alias (``candidate``: the version the last run registered)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        raise PromotionError(f"no registered model named {name!r}") from err
    if not str(version).isdigit():
        aliases = model.aliases or {}
        if str(version) not in aliases:
            known = ", ".join(f"{a} (v{v})" for a, v in sorted(aliases.items())) or "none"
            raise PromotionError(f"model {name!r} has no version or alias {version!r} (aliases: {known})")
        version = aliases[str(version)]
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        known = sorted(int(v.version) for v in client.search_model_versions(name_filter(name)))
        raise PromotionError(
            f"model {name!r} has no version {version} (versions: {', '.join(map(str, known)) or 'none'})"
        ) from err


def version_metrics(client, model_version) -> dict[str, float]:
    """The run's metrics, overridden by ``metric.<key>`` tags on the version itself."""
    metrics: dict[str, float] = {}
    if model_version.run_id:
        metrics.update(client.get_run(model_version.run_id).data.metrics)
    for key, value in (model_version.tags or {}).items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                metrics[key[len(METRIC_TAG_PREFIX) :]] = float(value)
            except ValueError:
                continue
    return metrics


def _require(metrics: dict[str, float], metric: str, who: str) -> float:
    if metric not in metrics:
        raise PromotionError(f"{who} has no metric {metric!r} (has: {', '.join(sorted(metrics)) or 'none'})")
    return metrics[metric]


def _pair(mine: float, theirs: float) -> tuple[str, str]:
    """Both numbers at the first precision that tells them apart (equal numbers print equal)."""
    for digits in range(6, 18):
        a, b = f"{mine:.{digits}g}", f"{theirs:.{digits}g}"
        if a != b or mine == theirs:
            return a, b
    return repr(mine), repr(theirs)


def _comparison(mine: float, theirs: float, lower: bool) -> tuple[bool, str]:
    """(candidate strictly better?, ``"0.25 < 0.3"``), a tie reading as a tie."""
    a, b = _pair(mine, theirs)
    if mine == theirs:
        return False, f"{a} = {b} (tie: not better)"
    # The sign states the relation as it is; whether that is better is the check's ok / FAIL.
    return (mine < theirs if lower else mine > theirs), f"{a} {'<' if mine < theirs else '>'} {b}"


def _format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def promote(
    name: str,
    version: str | int,
    *,
    to: str = "champion",
    gates: list[str] | tuple[str, ...] = (),
    must_beat: str | None = None,
    metric: str = "val_loss",
    higher_is_better: bool = False,
    reason: str | None = None,
    dry_run: bool = False,
    tracking_uri: str | None = None,
) -> PromotionResult:
    """Check ``gates`` (and ``must_beat``) for ``name``/``version``; move alias ``to`` if all pass."""
    parsed = [Gate.parse(g) for g in gates]  # malformed input fails before any server call
    client = _client(tracking_uri)
    candidate = _get_version(client, name, str(version))
    cand_metrics = version_metrics(client, candidate)
    who = f"version {candidate.version} of {name!r}"
    result = PromotionResult(name=name, version=str(candidate.version), alias=to, promoted=False)

    holder = None
    if must_beat:
        aliases = client.get_registered_model(name).aliases or {}
        if must_beat in aliases and str(aliases[must_beat]) != str(candidate.version):
            holder = client.get_model_version(name, str(aliases[must_beat]))
    holder_metrics = version_metrics(client, holder) if holder is not None else {}

    rows = [
        ["metric", f"v{candidate.version}", f"{must_beat}=v{holder.version}" if holder else "holder", "check"]
    ]
    for gate in parsed:
        value = _require(cand_metrics, gate.metric, who)
        ok = gate.passes(value)
        result.checks.append(Check(f"gate {gate}", ok, f"{gate.metric}={value:.6g}"))
        rows.append([gate.metric, f"{value:.6g}", "", f"{gate} {'ok' if ok else 'FAIL'}"])

    if must_beat and holder is None:
        result.checks.append(Check(f"must beat {must_beat}", True, f"no current holder of {must_beat!r}"))
    elif holder is not None:
        comparisons = [(g.metric, g.lower_is_better) for g in parsed] or [(metric, not higher_is_better)]
        holder_who = f"version {holder.version} of {name!r} ({must_beat})"
        for key, lower in dict(comparisons).items():
            mine = _require(cand_metrics, key, who)
            theirs = _require(holder_metrics, key, holder_who)
            ok, detail = _comparison(mine, theirs, lower)
            result.checks.append(Check(f"must beat {must_beat} on {key}", ok, detail))
            a, b = _pair(mine, theirs)
            rows.append([key, a, b, f"beat ({'<' if lower else '>'}) {'ok' if ok else 'FAIL'}"])
    result.table = _format_table(rows) if len(rows) > 1 else ""  # no gate, no holder: nothing to tabulate

    current = (client.get_registered_model(name).aliases or {}).get(to)
    result.previous_holder = str(current) if current is not None else None
    if result.failures or dry_run:
        return result

    client.set_registered_model_alias(name, to, candidate.version)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    user = os.environ.get("USERNAME") or os.environ.get("USER") or getpass.getuser()
    tags = {
        f"promoted.{to}.by": user,
        f"promoted.{to}.at": stamp,
        f"promoted.{to}.reason": reason or "",
        f"promoted.{to}.previous": result.previous_holder or "",
        f"promoted.{to}.checks": "; ".join(f"{c.what}: {c.detail}" for c in result.checks) or "none",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate.version, key, value)
    result.promoted = True
    return result


# What the config types gate on, in this order: robot policies (held-out loss and action error, closed-loop
# success where there is a simulator) and text models (held-out loss, perplexity).
KEY_METRICS = ("val_loss", "val_action_mse", "sim/success_rate", "perplexity")
LIST_WIDTH = 100


def list_versions(
    name: str, *, metrics: tuple[str, ...] = (), tracking_uri: str | None = None, width: int = LIST_WIDTH
) -> str:
    """A table of every version with its aliases, creation time and key metrics (MLflow's search omits
    aliases): ``metrics``, else those of ``KEY_METRICS`` any version has; at most ``width`` columns wide
    (metric columns that do not fit are left out and named below the table)."""
    client = _client(tracking_uri)
    try:
        model = client.get_registered_model(name)
    except Exception as err:
        raise PromotionError(f"no registered model named {name!r}") from err
    by_version: dict[str, list[str]] = {}
    for alias, ver in (model.aliases or {}).items():
        by_version.setdefault(str(ver), []).append(alias)
    versions = sorted(client.search_model_versions(name_filter(name)), key=lambda v: int(v.version))
    all_metrics = {v.version: version_metrics(client, v) for v in versions}
    present = {k for m in all_metrics.values() for k in m}
    keys = list(metrics) or [k for k in KEY_METRICS if k in present]
    rows = [["version", "aliases", "created"]]
    for v in versions:
        created = datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        rows.append([str(v.version), ",".join(sorted(by_version.get(str(v.version), []))) or "-", created])
    left_out = []
    for key in keys:
        column = [
            f"{all_metrics[v.version][key]:.4g}" if key in all_metrics[v.version] else "-" for v in versions
        ]
        widened = [row + [cell] for row, cell in zip(rows, [key, *column], strict=True)]
        if max(len(line) for line in _format_table(widened).splitlines()) > width:
            left_out.append(key)
            continue
        rows = widened
    table = _format_table(rows)
    if left_out:
        note = f"(left out to fit {width} columns: {', '.join(left_out)}; choose with --metrics)"
        table += "\n" + textwrap.fill(note, width, break_on_hyphens=False)
    return table


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m steps.promote", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--version", "--from", dest="version",
                   help="model version to promote: a number, or an alias (candidate: the last registered)")  # fmt: skip
    p.add_argument("--to", default="champion", help="alias to move (default: champion)")
    p.add_argument("--gate", action="append", default=[], help="METRIC OP NUMBER, repeatable")
    p.add_argument("--must-beat", help="alias whose holder the candidate must beat")
    p.add_argument("--metric", default="val_loss", help="metric for --must-beat without gates")
    p.add_argument("--higher-is-better", action="store_true", help="direction of --metric")
    p.add_argument("--reason", help="why, recorded as a tag")
    p.add_argument("--dry-run", action="store_true", help="check and print, move nothing")
    p.add_argument("--list", action="store_true", help="list versions with aliases and key metrics")
    p.add_argument("--metrics", help="with --list: comma-separated metrics to show (default: " + ", ".join(KEY_METRICS)
                   + ", those present)")  # fmt: skip
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: MLFLOW_TRACKING_URI or sqlite)")
    args = p.parse_args(argv)
    if not args.list and not args.version:
        p.error("--version is required unless --list is given")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    try:
        if args.list:
            chosen = tuple(m.strip() for m in (args.metrics or "").split(",") if m.strip())
            print(list_versions(args.name, metrics=chosen, tracking_uri=uri))
            return 0
        result = promote(
            args.name,
            args.version,
            to=args.to,
            gates=args.gate,
            must_beat=args.must_beat,
            metric=args.metric,
            higher_is_better=args.higher_is_better,
            reason=args.reason,
            dry_run=args.dry_run,
            tracking_uri=uri,
        )
    except PromotionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.table:
        print(result.table)
    for check in result.checks:
        print(f"[{'ok' if check.passed else 'FAIL'}] {check.what}: {check.detail}")
    if result.promoted:
        print(f"{args.name} v{result.version} is now @{args.to} (was: {result.previous_holder or 'none'})")
        return 0
    if args.dry_run and not result.failures:
        print("dry run: all checks pass, alias not moved")
        return 0
    print(f"not promoted: @{args.to} stays on {result.previous_holder or 'nothing'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
