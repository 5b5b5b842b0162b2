"""The report's charts: per-class bar charts and the row-normalised confusion heat map.

matplotlib is imported only when a chart is drawn (the training loop imports the evaluation
package for the confusion matrix and should not pay for it), and only through pyplot-free
Agg figures, which are safe in any thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _new_figure(width: float, height: float):
    """A pyplot-free Agg figure: no global state, no display needed, safe in any thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def bar_chart(values: np.ndarray, class_names: Sequence[str], title: str, xlabel: str, path: Path) -> None:
    """Horizontal bars per class (in %), undefined classes marked "n/a" instead of a bar."""
    n = len(class_names)
    fig = _new_figure(8.0, max(2.5, 0.32 * n + 1.2))
    ax = fig.add_subplot()
    positions = np.arange(n)
    defined = ~np.isnan(values)
    percents = np.where(defined, values * 100, 0.0)
    ax.barh(positions[defined], percents[defined], color="royalblue")
    for y, value, ok in zip(positions, percents, defined, strict=True):
        if ok:
            ax.text(min(value, 100) + 1, y, f"{value:.2f}", va="center", fontsize=8)
        else:
            ax.text(1, y, "n/a", va="center", fontsize=8, color="grey", style="italic")
    ax.set_yticks(positions, labels=list(class_names), fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)  # first class on top; also keeps a trailing bar-less (n/a) row in view
    ax.set_xlim(0, 112)
    ax.set_xlabel(f"{xlabel} (%)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)


def heat_map(hist: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix (each row: where that class's pixels went).

    Rows without ground truth have nothing to normalise and are drawn grey.
    """
    import matplotlib

    n = len(class_names)
    row_sums = hist.sum(axis=1, keepdims=True)
    norm = np.full(hist.shape, np.nan)
    np.divide(hist, row_sums, out=norm, where=row_sums > 0)
    size = max(4.0, 0.45 * n + 2.5)
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the ground-truth row")
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=list(class_names), rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels=list(class_names), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (row-normalised)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if row_sums[i, 0] == 0:
                    if i == j:
                        ax.text(j, i, "n/a", ha="center", va="center", fontsize=6, color="dimgrey")
                elif hist[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path)


def sweep_chart(rows: Sequence[dict], path: Path, chosen: float | None = None) -> None:
    """Foreground IoU, Dice, precision and recall (in %) against the decision threshold of a binary model."""
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    thresholds = [row["threshold"] for row in rows]
    for key, label in (("iou", "IoU"), ("dice", "Dice"), ("precision", "precision"), ("recall", "recall")):
        values = [np.nan if row[key] is None else 100 * row[key] for row in rows]
        ax.plot(thresholds, values, marker=".", label=label)
    if chosen is not None:
        ax.axvline(chosen, color="grey", linestyle="--", linewidth=1, label=f"threshold {chosen:g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 105)
    ax.set_xlabel("threshold on the foreground probability")
    ax.set_ylabel("%")
    ax.set_title("Threshold sweep (pixels pooled over the split)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
