"""Metaflow card content for the SFT flow: summaries of what steps already computed (no computing here).

Charts are Vega-Lite specs (``metaflow.cards.VegaChart``), so cards need no plotting library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def line_chart(rows: Sequence[Mapping], x: str, y: str, title: str, *, log_y: bool = False) -> dict:
    """A Vega-Lite line chart of ``rows`` (list of dicts) with ``y`` against ``x``."""
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "width": 520,
        "height": 200,
        "data": {"values": [{x: r[x], y: r[y]} for r in rows if r.get(y) is not None]},
        "mark": {"type": "line", "point": len(rows) < 60},
        "encoding": {
            "x": {"field": x, "type": "quantitative"},
            "y": {"field": y, "type": "quantitative", "scale": {"type": "log" if log_y else "linear"}},
        },
    }


def _table(card, rows: Sequence[Sequence], headers: Sequence[str]) -> None:
    from metaflow.cards import Table

    card.append(Table([[str(c) for c in row] for row in rows], headers=list(headers)))


def render_train_card(card, *, title: str, result: Mapping | None, history: Sequence[Mapping],
                      node_index: int, mlflow_run_id: str | None) -> None:  # fmt: skip
    """Loss curve, learning rate, throughput and the run's settings (node 0 has the metrics)."""
    from metaflow.cards import Markdown, VegaChart

    card.append(Markdown(f"# Training — {title}"))
    if result is None:
        card.append(Markdown(f"Node {node_index}: metrics are logged by node 0."))
        return
    summary = [
        ("steps", f"{result.get('final_step')} (resumed from {result.get('resumed_from')})"),
        ("final train loss", _fmt(result.get("losses")[-1][1] if result.get("losses") else None)),
        ("best val loss", f"{_fmt(result.get('best_val_loss'))} at step {result.get('best_step')}"),
        (
            "throughput",
            f"{_fmt(result.get('samples_per_s'))} samples/s over {result.get('world_size')} process(es)",
        ),
        ("data wait", _fmt(result.get("data_wait_frac"))),
        ("checkpoints", result.get("checkpoint_dir")),
        ("MLflow run", mlflow_run_id),
    ]
    _table(card, summary, ["", "value"])
    rows = [dict(r) for r in history]
    if rows:
        card.append(VegaChart(line_chart(rows, "step", "train/loss", "train loss", log_y=True)))
        card.append(VegaChart(line_chart(rows, "step", "train/lr", "learning rate")))
        if any("val/loss" in r for r in rows):
            card.append(VegaChart(line_chart(rows, "step", "val/loss", "validation loss")))
        if any("perf/samples_per_s" in r for r in rows):
            card.append(VegaChart(line_chart(rows, "step", "perf/samples_per_s", "samples / s")))


def render_eval_card(card, *, title: str, metrics: Mapping[str, float], episodes: Sequence[int],
                     seconds: float, mlflow_run_id: str | None,
                     images: Mapping[str, str] | None = None) -> None:  # fmt: skip
    """Headline metrics, success rates, the full metric table, the evaluation's PNG plots and the rollout
    videos (GIFs: a person can watch what the policy did)."""
    from pathlib import Path

    from metaflow.cards import Image, Markdown

    card.append(Markdown(f"# Evaluation — {title}"))
    card.append(
        Markdown(f"Held-out episodes: {list(episodes)} · {seconds:.1f} s · MLflow run `{mlflow_run_id}`")
    )
    headline = [k for k in ("val_loss", "val_action_mse", "val_action_mae", "val_first_step_mse", "sim/success_rate")
                if k in metrics]  # fmt: skip
    if headline:
        _table(card, [(k, _fmt(metrics[k])) for k in headline], ["headline metric", "value"])
    sim = sorted(k for k in metrics if k.startswith("sim/"))
    if sim:
        _table(card, [(k, _fmt(metrics[k])) for k in sim], ["closed-loop", "value"])
    for name, path in sorted((images or {}).items()):
        if name.endswith((".png", ".gif")) and Path(path).is_file():
            card.append(Markdown(f"### {name}"))
            card.append(Image(Path(path).read_bytes(), label=name))
    rest = sorted(k for k in metrics if k not in headline and not k.startswith("sim/"))
    _table(card, [(k, _fmt(metrics[k])) for k in rest], ["metric", "value"])


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
