"""PNG plots for calibration: PR curves with the chosen point, and reliability diagrams."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["plot_pr_curves", "plot_reliability"]


def _grid(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return plt, fig, axes.flat


def plot_pr_curves(labels, y_true, y_score, choices, path: str | Path) -> Path:
    """One precision-recall curve per category, the chosen threshold marked."""
    from sklearn.metrics import precision_recall_curve

    plt, fig, axes = _grid(len(labels))
    for ax, (j, name) in zip(axes, enumerate(labels)):
        y = y_true[:, j]
        if 0 < y.sum() < len(y):
            p, r, _ = precision_recall_curve(y, y_score[:, j])
            ax.plot(r, p, lw=1.5)
            c = choices[name]
            ax.plot([c.recall], [c.precision], "o", color="crimson" if not c.achieved else "black")
            ax.annotate(f"t={c.threshold:.2f}\nP={c.precision:.2f} R={c.recall:.2f}", (c.recall, c.precision),
                        textcoords="offset points", xytext=(-70, -28), fontsize=8)
        ax.set(title=f"{name} ({int(y.sum())} pos)", xlabel="recall", ylabel="precision", xlim=(0, 1.02),
               ylim=(0, 1.02))
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_reliability(labels, y_true, y_score, calibrators, path: str | Path, n_bins: int = 10) -> Path:
    """Reliability diagrams: observed positive rate against mean score, per bin, before (and after) calibration."""
    plt, fig, axes = _grid(len(labels))
    edges = np.linspace(0, 1, n_bins + 1)
    for ax, (j, name) in zip(axes, enumerate(labels)):
        series = [("raw", y_score[:, j])]
        if name in calibrators:
            series.append((calibrators[name].method, calibrators[name].transform(y_score[:, j])))
        for tag, s in series:
            idx = np.clip(np.digitize(s, edges) - 1, 0, n_bins - 1)
            xs = [s[idx == b].mean() for b in range(n_bins) if (idx == b).any()]
            ys = [y_true[idx == b, j].mean() for b in range(n_bins) if (idx == b).any()]
            ax.plot(xs, ys, "o-", ms=3, label=tag)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(title=name, xlabel="mean score", ylabel="positive rate", xlim=(0, 1), ylim=(0, 1))
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
