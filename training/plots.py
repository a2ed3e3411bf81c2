"""PNG plots for the model card: confusion matrix and training curves.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing ever opens a window,
no global backend is switched, and plotting is safe from worker threads.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

LOSS_KEYS = ("train_loss", "train_ce", "train_uniformity", "dev_loss")
DEV_KEYS = ("dev_accuracy", "dev_macro_f1", "dev_weighted_f1")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120)
    return path


def plot_confusion(metrics: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Heatmap of ``metrics["confusion"]`` (rows true, columns predicted) with the count in every cell."""
    labels = list(metrics["labels"])
    confusion = metrics["confusion"]
    k = len(labels)
    size = max(3.5, 0.9 * k + 2.0)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues", vmin=0)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.locator = MaxNLocator(integer=True)
    colorbar.update_ticks()
    peak = max((v for row in confusion for v in row), default=0)
    for i in range(k):
        for j in range(k):
            value = confusion[i][j]
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if peak and value > peak / 2 else "black")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion (n={metrics.get('n', sum(map(sum, confusion)))})")
    return _save(fig, path)


def _series(history: list[dict[str, Any]], key: str, x_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        x, y = row.get(x_key), row.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Two panels: training (and dev) losses, and dev metrics, against the step (or the epoch when rows
    carry no step). Keys a row lacks are skipped; an empty panel says so."""
    x_key = "step" if history and all("step" in row for row in history) else "epoch"
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, dev_ax = fig.subplots(1, 2)
    for ax, keys, title in ((loss_ax, LOSS_KEYS, "loss"), (dev_ax, DEV_KEYS, "dev metrics")):
        drawn = False
        for key in keys:
            xs, ys = _series(history, key, x_key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
                drawn = True
        if drawn:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel(x_key)
        ax.grid(True, alpha=0.3)
    return _save(fig, path)
