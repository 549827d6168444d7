"""PNG plots of an offline evaluation (``steps.evaluate.offline``), for MLflow artifacts and the flow's card.

Figures are built with ``matplotlib.figure.Figure`` directly (Agg canvas), never through pyplot, so
nothing depends on or changes a global backend and no window is ever opened. matplotlib is imported
lazily.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

_TRUTH_COLOR, _PRED_COLOR = "black", "tab:orange"


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # No layout engine: constrained/tight layout draw the figure twice, which doubled the time of a
    # 3 x 14 grid; fixed margins in inches are enough for these regular grids.
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.85 / width, right=1 - 0.25 / width, bottom=0.55 / height, top=1 - 0.7 / height,
                        wspace=0.25, hspace=0.35)  # fmt: skip
    return fig


def plot_action_trajectories(
    out_path: str | Path,
    truth: Mapping[int, np.ndarray],
    chunks: Mapping[int, Sequence[tuple[int, np.ndarray, np.ndarray]]],
    *,
    dim_names: Sequence[str] | None = None,
    max_dims: int = 14,
) -> Path:
    """Ground-truth actions of whole episodes with the predicted chunks overlaid.

    One column per episode, one row per action dim (at most ``max_dims``). Each predicted chunk is drawn
    from the frame it was predicted at over its real (not padded) steps, with a dot on the step the
    robot would execute first.

    Args:
        truth: ``{episode: float [T, D]}`` ground-truth actions in robot units.
        chunks: ``{episode: [(frame, predicted [H, D], action_is_pad [H]), ...]}``.
        dim_names: a label per action dim (default ``dim i``).
    """
    episodes = list(truth)
    if not episodes:
        raise ValueError("plot_action_trajectories: no episodes to plot")
    dims = min(int(np.asarray(truth[episodes[0]]).shape[1]), max_dims)
    names = list(dim_names) if dim_names is not None else [f"dim {i}" for i in range(dims)]
    fig = _new_figure(3.6 * len(episodes) + 0.6, 1.7 * dims + 0.8)
    axes = np.asarray(fig.subplots(dims, len(episodes), sharex="col", squeeze=False))
    for col, episode in enumerate(episodes):
        actions = np.asarray(truth[episode])
        frames = np.arange(len(actions))
        for row in range(dims):
            ax = axes[row, col]
            ax.plot(frames, actions[:, row], color=_TRUTH_COLOR, lw=1.2, label="ground truth")
            for i, (frame, pred, pad) in enumerate(chunks.get(episode, ())):
                real = ~np.asarray(pad, dtype=bool)
                steps = frame + np.arange(len(pred))[real]
                label = "predicted chunk" if i == 0 else None
                ax.plot(
                    steps, np.asarray(pred)[real, row], color=_PRED_COLOR, lw=1.0, alpha=0.75, label=label
                )
                ax.plot(frame, pred[0, row], "o", color=_PRED_COLOR, ms=2.5)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(names[row] if row < len(names) else f"dim {row}", fontsize=8)
            if row == 0:
                ax.set_title(f"episode {episode}", fontsize=10)
            ax.tick_params(labelsize=7)
        axes[-1, col].set_xlabel("frame", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle("Actions (robot units): ground truth vs predicted chunks", fontsize=11)
    return _save(fig, out_path)


def plot_error_by_step(
    out_path: str | Path,
    *,
    step_mse: Sequence[float],
    step_mae: Sequence[float],
    dim_mse: Sequence[float],
    dim_names: Sequence[str] | None = None,
) -> Path:
    """Left: MSE and MAE per chunk step (NaN = a step padded in every sample). Right: MSE per action dim."""
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(10, 4.2)
    ax_step, ax_dim = fig.subplots(1, 2, width_ratios=[1.3, 1])
    fig.subplots_adjust(wspace=0.3, bottom=0.25 if len(dim_mse) > 8 else 0.14)
    steps = np.arange(len(step_mse))
    ax_step.plot(steps, np.asarray(step_mse, dtype=float), "o-", ms=3, label="MSE")
    ax_step.plot(steps, np.asarray(step_mae, dtype=float), "s-", ms=3, label="MAE")
    ax_step.set_xlabel("chunk step (0 = executed first)")
    ax_step.set_ylabel("MSE (units²), MAE (units)")
    ax_step.set_title("Error by horizon step")
    ax_step.set_ylim(bottom=0)
    ax_step.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_step.grid(alpha=0.3)
    ax_step.legend()
    dims = np.arange(len(dim_mse))
    ax_dim.bar(dims, np.asarray(dim_mse, dtype=float), color="tab:blue")
    ax_dim.set_xticks(dims)
    labels = (
        list(dim_names) if dim_names is not None and len(dim_names) == len(dims) else [str(d) for d in dims]
    )
    ax_dim.set_xticklabels(labels, rotation=45 if len(dims) > 8 else 0, ha="right" if len(dims) > 8 else "center",
                           fontsize=8)  # fmt: skip
    ax_dim.set_ylabel("MSE (robot units²)")
    ax_dim.set_title("MSE by action dim")
    ax_dim.grid(alpha=0.3, axis="y")
    return _save(fig, out_path)


def _save(fig, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png")
    return out_path
