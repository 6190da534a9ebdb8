"""Classification metrics from scikit-learn, shaped as ``editguard evaluate`` reports them.

Pure numpy + scikit-learn (no torch), so batch scoring can reuse it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["classification_report", "recall_at_precision", "format_table"]


def recall_at_precision(y_true: np.ndarray, y_score: np.ndarray, *, precision: float = 0.9) -> float:
    """Highest recall at any threshold whose precision is at least ``precision`` (0 if none)."""
    from sklearn.metrics import precision_recall_curve

    p, r, _ = precision_recall_curve(y_true, y_score)
    ok = p >= precision
    return float(r[ok].max()) if ok.any() else 0.0


def classification_report(y_true: np.ndarray, y_score: np.ndarray, labels: list[str]) -> dict:
    """Per-category AUROC, AUPRC, recall at precision 0.9 and support, plus macro averages.

    ``y_true``: ``{0,1} [N, C]``; ``y_score``: probabilities ``[N, C]``.
    A category with only one class present gets NaN AUROC/AUPRC and is left
    out of the macro averages. ``aggregate`` scores ``unsafe`` as the max
    category probability against "any label".
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2 or y_true.shape[1] != len(labels):
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must both be [N, {len(labels)}]")

    def one(t: np.ndarray, s: np.ndarray) -> dict:
        support = int(t.sum())
        if support == 0 or support == len(t):
            return {"auroc": math.nan, "auprc": math.nan, "recall_at_p90": math.nan, "support": support}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {
                "auroc": float(roc_auc_score(t, s)),
                "auprc": float(average_precision_score(t, s)),
                "recall_at_p90": recall_at_precision(t, s, precision=0.9),
                "support": support,
            }

    per = {name: one(y_true[:, i], y_score[:, i]) for i, name in enumerate(labels)}
    valid = [m for m in per.values() if not math.isnan(m["auroc"])]
    macro = {
        "auroc": float(np.mean([m["auroc"] for m in valid])) if valid else math.nan,
        "auprc": float(np.mean([m["auprc"] for m in valid])) if valid else math.nan,
    }
    agg = one(y_true.max(axis=1), y_score.max(axis=1))
    return {"per_category": per, "macro": macro, "aggregate": agg, "n": int(len(y_true))}


def format_table(report: dict, title: str | None = None) -> str:
    """A fixed-width table of a :func:`classification_report`."""
    rows = [f"{'category':<22} {'AUROC':>7} {'AUPRC':>7} {'R@P90':>7} {'support':>8}"]
    rows.append("-" * len(rows[0]))
    fmt = lambda v: f"{v:7.3f}" if not math.isnan(v) else f"{'n/a':>7}"
    for name, m in report["per_category"].items():
        rows.append(f"{name:<22} {fmt(m['auroc'])} {fmt(m['auprc'])} {fmt(m['recall_at_p90'])} {m['support']:>8}")
    rows.append("-" * len(rows[0]))
    rows.append(f"{'macro':<22} {fmt(report['macro']['auroc'])} {fmt(report['macro']['auprc'])}")
    if "aggregate" in report:
        a = report["aggregate"]
        rows.append(f"{'unsafe (any)':<22} {fmt(a['auroc'])} {fmt(a['auprc'])} {fmt(a['recall_at_p90'])} {a['support']:>8}")
    if title:
        rows.insert(0, title)
    return "\n".join(rows)
