"""``editguard calibrate``: per-category thresholds from scored, labelled results.

Follows scikit-learn's conventions: functions take ``(y_true, y_score, *, sample_weight=None)``,
fitted attributes end in ``_``, degenerate data warns, and a bad argument raises a ValueError
that names the value. Thresholds come from :func:`sklearn.metrics.precision_recall_curve`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..manifest import meta_column
from ..model.repository import CLIENT_MODEL

__all__ = ["CalibrateConfig", "CalibrationRun", "calibrate_results", "Target", "ThresholdChoice",
           "choose_threshold", "rates_at", "bootstrap_rates",
           "ProbabilityCalibrator", "expected_calibration_error", "calibrate", "slice_table", "UnmetTargetError",
           "parse_target", "threshold_report", "check_thresholds", "format_check", "SessionThresholdChoice",
           "choose_session_thresholds", "calibrate_sessions", "session_verdict_rows"]

METRICS = ("precision", "recall", "fpr")  # fpr: a ceiling (fpr<=v); the others are floors


class UnmetTargetError(ValueError):
    """A target no threshold reaches; ``best`` maps category -> best achievable figure."""

    def __init__(self, message: str, best: dict[str, float]):
        super().__init__(message)
        self.best = best


@dataclass(frozen=True)
class Target:
    metric: str  # "precision", "recall" or "fpr"
    value: float  # the minimum to reach (precision, recall) or the most to allow (fpr), in (0, 1]

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"target metric must be 'precision', 'recall' or 'fpr', got {self.metric!r}")
        if not 0.0 < self.value <= 1.0:
            raise ValueError(f"target value must be in (0, 1], got {self.value!r}")

    def __str__(self) -> str:
        return f"{self.metric}{'<=' if self.metric == 'fpr' else '>='}{self.value:g}"


def parse_target(text: str) -> Target:
    """``"precision=0.95"`` -> Target("precision", 0.95); ``"fpr=0.01"``: a false-positive rate of at most 1%."""
    metric, sep, value = text.partition("=")
    try:
        return Target(metric.strip(), float(value))
    except ValueError as e:
        raise ValueError(f"bad target {text!r}: write METRIC=VALUE, e.g. precision=0.95, recall=0.9 or fpr=0.01 "
                         f"({e})") from None


@dataclass
class ThresholdChoice:
    threshold: float
    target: str
    achieved: bool
    precision: float
    recall: float
    fpr: float
    support: int
    best: float  # the best value of the target metric any threshold reaches


def rates_at(y_true, y_score, threshold: float, *, sample_weight=None) -> dict[str, float]:
    """Precision, recall and false-positive rate of ``y_score >= threshold``."""
    y, s = np.asarray(y_true).astype(bool), np.asarray(y_score)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    pred = s >= threshold
    tp, fp = w[pred & y].sum(), w[pred & ~y].sum()
    pos, neg = w[y].sum(), w[~y].sum()
    return {"precision": float(tp / (tp + fp)) if tp + fp else 1.0, "recall": float(tp / pos) if pos else math.nan,
            "fpr": float(fp / neg) if neg else math.nan}


def choose_threshold(y_true, y_score, *, target: Target, sample_weight=None) -> ThresholdChoice:
    """The threshold meeting ``target`` with the best other figure.

    ``precision>=p``: the lowest threshold with precision >= p (most recall).
    ``recall>=r``: the highest threshold with recall >= r (most precision).
    ``fpr<=f``: the lowest threshold with a false-positive rate <= f (most recall).
    When no threshold meets the target, ``achieved`` is False and the threshold is the one
    reaching ``best``, the best value of the metric (the highest; for ``fpr``, the lowest).
    """
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(y_true).astype(int)
    s = np.asarray(y_score, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"y_true {y.shape} and y_score {s.shape} must be 1-D and the same shape")
    support = int(y.sum())
    if support == 0 or support == len(y):
        warnings.warn(f"only one class present (support {support} of {len(y)}); keeping threshold 0.5", UserWarning)
        r = rates_at(y, s, 0.5, sample_weight=sample_weight)
        return ThresholdChoice(0.5, str(target), False, r["precision"], r["recall"], r["fpr"], support, math.nan)
    p, r, thr = precision_recall_curve(y, s, sample_weight=sample_weight)
    p, r = p[:-1], r[:-1]  # the last point (recall 0) has no threshold
    if target.metric == "fpr":
        metric, other = _fpr_curve(y.astype(bool), s, thr, sample_weight), r
        ok, best = np.flatnonzero(metric <= target.value + 1e-12), float(metric.min())
    else:
        metric, other = (p, r) if target.metric == "precision" else (r, p)
        ok, best = np.flatnonzero(metric >= target.value - 1e-12), float(metric.max())
    if ok.size:
        i = ok[np.lexsort((thr[ok], other[ok]))[-1]]  # best other figure; ties -> higher threshold
    else:
        i = int(np.flatnonzero(metric == best)[-1])
    t = _max_margin(s, thr, p, r, i)
    rates = rates_at(y, s, t, sample_weight=sample_weight)
    return ThresholdChoice(t, str(target), bool(ok.size), rates["precision"], rates["recall"], rates["fpr"],
                           support, best)


@dataclass
class SessionThresholdChoice(ThresholdChoice):
    """:func:`choose_session_thresholds`' pair: ``threshold`` is the step check's, ``cumulative`` the
    cumulative check's; the rates are those of the session's verdict in this category."""

    cumulative: float = 1.0


SESSION_GRID = 400  # candidate thresholds per check (the scores themselves where fewer are distinct)


def choose_session_thresholds(y_true, step, cumulative, *, target: Target, grid: int = SESSION_GRID
                              ) -> SessionThresholdChoice:
    """A category's step and cumulative thresholds, chosen together for a session-level ``target``.

    ``y_true``: ``[S]`` whether each session is harmful in the category; ``step``, ``cumulative``: ``[S]``,
    each session's highest step and cumulative score (``-inf`` where it has no cumulative check). A session is
    flagged when ``step >= t_step`` or ``cumulative >= t_cumulative``. Every pair of candidate thresholds is
    tried: ``precision>=p`` and ``fpr<=f`` keep the pair with the most recall (then the fewest false
    positives), ``recall>=r`` the pair with the most precision. Where no pair meets the target, ``achieved`` is False
    and the pair reaching the best value of the metric is kept. Each threshold is then set halfway to the
    next lower score of its check, which flags the same sessions with the most margin.
    """
    y = np.asarray(y_true).astype(bool)
    a, b = np.asarray(step, dtype=np.float64), np.asarray(cumulative, dtype=np.float64)
    if not (y.shape == a.shape == b.shape) or y.ndim != 1:
        raise ValueError(f"y_true {y.shape}, step {a.shape} and cumulative {b.shape} must be 1-D and the same shape")
    support = int(y.sum())
    if support == 0 or support == len(y):
        warnings.warn(f"only one class present (support {support} of {len(y)}); keeping threshold 0.5", UserWarning)
        flagged = (a >= 0.5) | (b >= 0.5)
        r = rates_at(y, flagged.astype(float), 0.5)
        return SessionThresholdChoice(0.5, str(target), False, r["precision"], r["recall"], r["fpr"], support, math.nan,
                                      0.5)
    ts, tc = _candidates(a, grid), _candidates(b, grid)
    A = (a[:, None] >= ts[None, :]).astype(np.float64)  # [S, Gs]: flagged by the step check
    B = (b[:, None] >= tc[None, :]).astype(np.float64)  # [S, Gc]: flagged by the cumulative check
    pos, neg = y.astype(np.float64), (~y).astype(np.float64)
    flagged = lambda w: (w @ A)[:, None] + (w @ B)[None, :] - (A * w[:, None]).T @ B  # noqa: E731  [Gs, Gc]
    tp, fp = flagged(pos), flagged(neg)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 1.0)
    recall = tp / support
    if target.metric == "fpr":
        metric, other = fp / max(float((~y).sum()), 1.0), recall
        ok, best = metric <= target.value + 1e-12, float(metric.min())
        pool = ok if ok.any() else metric <= best + 1e-12
    else:
        metric, other = (precision, recall) if target.metric == "precision" else (recall, precision)
        ok, best = metric >= target.value - 1e-12, float(metric.max())
        pool = ok if ok.any() else metric >= best - 1e-12
    i, j = _argbest(pool, other, fp, ts, tc)
    t_step, t_cum = _margin(a, ts[i]), _margin(b, tc[j])
    r = rates_at(y, ((a >= t_step) | (b >= t_cum)).astype(float), 0.5)
    return SessionThresholdChoice(t_step, str(target), bool(ok.any()), r["precision"], r["recall"], r["fpr"], support,
                                  best, t_cum)


def _fpr_curve(y: np.ndarray, s: np.ndarray, thr: np.ndarray, sample_weight=None) -> np.ndarray:
    """The false-positive rate of ``s >= t`` for each ``t`` in ``thr`` (``y``: bool)."""
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    order = np.argsort(s[~y], kind="stable")
    neg, wn = s[~y][order], w[~y][order]
    at_or_above = np.append(np.cumsum(wn[::-1])[::-1], 0.0)  # [k]: the weight of negatives from index k on
    return at_or_above[np.searchsorted(neg, thr, side="left")] / wn.sum()


def _candidates(s: np.ndarray, grid: int) -> np.ndarray:
    """Candidate thresholds of one check: its distinct finite scores (``grid`` quantiles of them where there are
    more), and ``inf`` (the check flags nothing)."""
    values = np.unique(s[np.isfinite(s)])
    if len(values) > grid:
        values = np.unique(np.quantile(values, np.linspace(0.0, 1.0, grid)))
    return np.append(values, np.inf)


def _argbest(pool: np.ndarray, other: np.ndarray, fp: np.ndarray, ts: np.ndarray, tc: np.ndarray) -> tuple[int, int]:
    """The pair in ``pool`` with the best other figure, then the fewest false positives, then the highest
    thresholds."""
    idx = np.argwhere(pool)
    keys = (np.minimum(ts[idx[:, 0]], 2.0) + np.minimum(tc[idx[:, 1]], 2.0), -fp[pool], other[pool])
    k = np.lexsort(keys)[-1]
    return int(idx[k, 0]), int(idx[k, 1])


def _margin(s: np.ndarray, t: float) -> float:
    """``t`` moved halfway to the next lower score in ``s`` (the same scores reach it), in [0, 1]; ``inf``
    (nothing flagged) becomes 1.0."""
    if not np.isfinite(t):
        return 1.0
    lower = s[np.isfinite(s) & (s < t)]
    return float(min(1.0, (t + lower.max()) / 2.0 if lower.size else t / 2.0))


def _max_margin(s: np.ndarray, thr: np.ndarray, p: np.ndarray, r: np.ndarray, i: int) -> float:
    """Every threshold in (highest score below the tied ones, highest tied threshold] makes the same
    decisions on this data; take the middle, the one with the most room either side on new data."""
    tied = np.flatnonzero((p == p[i]) & (r == r[i]))
    lo, hi = thr[tied].min(), thr[tied].max()
    below = s[s < lo]
    return float((below.max() + hi) / 2) if below.size else float(hi)


def bootstrap_rates(y_true, y_score, threshold: float, *, n_boot: int = 200, alpha: float = 0.05,
                    random_state: int = 0) -> dict[str, list[float]]:
    """Percentile bootstrap intervals ``[lo, hi]`` of precision, recall and FPR at ``threshold``."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    y, s = np.asarray(y_true), np.asarray(y_score)
    rng = np.random.default_rng(random_state)
    draws = {k: [] for k in ("precision", "recall", "fpr")}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        for k, v in rates_at(y[idx], s[idx], threshold).items():
            if not math.isnan(v):
                draws[k].append(v)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return {k: [float(x) for x in np.percentile(v, q)] if v else [math.nan, math.nan] for k, v in draws.items()}


def expected_calibration_error(y_true, y_prob, *, n_bins: int = 10) -> float:
    """ECE with equal-width bins: sum over bins of |accuracy - confidence| weighted by bin size."""
    y, p = np.asarray(y_true, dtype=np.float64), np.clip(np.asarray(y_prob, dtype=np.float64), 0, 1)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


class ProbabilityCalibrator:
    """Isotonic or sigmoid (Platt) calibration of one category's scores.

    Fitted attributes: ``x_``/``y_`` (isotonic breakpoints) or ``a_``/``b_`` (sigmoid:
    ``1 / (1 + exp(a * logit(s) + b))``). Monotonic, so a threshold on calibrated
    probabilities is a threshold on raw scores too.
    """

    def __init__(self, method: str = "isotonic"):
        if method not in ("isotonic", "sigmoid"):
            raise ValueError(f"method must be 'isotonic' or 'sigmoid', got {method!r}")
        self.method = method

    def fit(self, y_true, y_score, *, sample_weight=None) -> "ProbabilityCalibrator":
        y, s = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(s, y, sample_weight=sample_weight)
            self.x_, self.y_ = iso.X_thresholds_.astype(float), iso.y_thresholds_.astype(float)
        else:
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e6).fit(_logit(s)[:, None], y, sample_weight=sample_weight)
            self.a_, self.b_ = -float(lr.coef_[0, 0]), -float(lr.intercept_[0])
        return self

    def transform(self, y_score) -> np.ndarray:
        s = np.asarray(y_score, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(s, self.x_, self.y_)
        return 1.0 / (1.0 + np.exp(self.a_ * _logit(s) + self.b_))

    def to_dict(self) -> dict:
        if self.method == "isotonic":
            return {"method": "isotonic", "x": self.x_.tolist(), "y": self.y_.tolist()}
        return {"method": "sigmoid", "a": self.a_, "b": self.b_}


def _logit(s: np.ndarray) -> np.ndarray:
    s = np.clip(s, 1e-7, 1 - 1e-7)
    return np.log(s / (1 - s))


@dataclass
class CalibrationResult:
    thresholds: dict  # the thresholds.json content
    choices: dict[str, ThresholdChoice]
    ece: dict[str, dict[str, float]] = field(default_factory=dict)  # category -> {"before", "after"}
    calibrators: dict[str, ProbabilityCalibrator] = field(default_factory=dict)


def calibrate(labels: list[str], y_true: np.ndarray, y_score: np.ndarray, *, targets: dict[str, Target],
              method: str | None = None, n_boot: int = 200, allow_unmet: bool = False,
              model_version: str = "", source: str = "") -> CalibrationResult:
    """Thresholds for every category of ``labels`` (``targets`` maps category -> Target).

    ``y_true``, ``y_score``: ``[N, C]``. Raises :class:`UnmetTargetError` naming every category
    whose target can't be met, with the best achievable figure, unless ``allow_unmet``.
    """
    choices, ece, calibrators, cats = {}, {}, {}, {}
    for j, name in enumerate(labels):
        y, s = y_true[:, j], y_score[:, j]
        choice = choose_threshold(y, s, target=targets[name])
        choices[name] = choice
        entry = {"threshold": choice.threshold, "target": choice.target, "achieved": choice.achieved,
                 "precision": choice.precision, "recall": choice.recall, "fpr": choice.fpr,
                 "support": choice.support, "best_achievable": choice.best,
                 "ci95": bootstrap_rates(y, s, choice.threshold, n_boot=n_boot) if 0 < choice.support < len(y) else {}}
        if method and 0 < choice.support < len(y):
            cal = ProbabilityCalibrator(method).fit(y, s)
            calibrators[name] = cal
            ece[name] = {"before": expected_calibration_error(y, s), "after": expected_calibration_error(y, cal.transform(s))}
            entry["calibration"] = cal.to_dict()
        cats[name] = entry
    _check_unmet(choices, allow_unmet)
    doc = {"model_version": model_version, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "source": source, "n": int(len(y_true)), "categories": cats}
    if method:
        doc["calibration"] = {"method": method, "ece": ece}
    return CalibrationResult(doc, choices, ece, calibrators)


def _check_unmet(choices: dict[str, ThresholdChoice], allow_unmet: bool) -> None:
    unmet = {n: c.best for n, c in choices.items() if not c.achieved and not math.isnan(c.best)}
    if unmet and not allow_unmet:
        lines = "; ".join(f"{n}: {choices[n].target} is out of reach, the best is {b:.3f}" for n, b in unmet.items())
        raise UnmetTargetError(f"{lines}. Lower the target (--target-for CATEGORY=METRIC=VALUE), add data, "
                               "or pass --allow-unmet to use the best achievable threshold", unmet)


def calibrate_sessions(labels: list[str], y_true: np.ndarray, step: np.ndarray, cumulative: np.ndarray, *,
                       targets: dict[str, Target], allow_unmet: bool = False, model_version: str = "",
                       source: str = "") -> CalibrationResult:
    """An edit session's thresholds for every category of ``labels``: a step and a cumulative threshold each,
    chosen together (:func:`choose_session_thresholds`) so that ``targets`` hold for the session's verdict.

    ``y_true``, ``step``, ``cumulative``: ``[S, C]`` (:func:`~editguard.clients.results.session_arrays`).
    The document has them as its ``sessions`` block; it leaves the one-shot thresholds out (``--install``
    merges it over the installed ones). Raises :class:`UnmetTargetError` like :func:`calibrate`.
    """
    choices, cats = {}, {}
    for j, name in enumerate(labels):
        c = choose_session_thresholds(y_true[:, j], step[:, j], cumulative[:, j], target=targets[name])
        choices[name] = c
        cats[name] = {"step": c.threshold, "cumulative": c.cumulative, "target": c.target, "achieved": c.achieved,
                      "precision": c.precision, "recall": c.recall, "fpr": c.fpr, "support": c.support,
                      "best_achievable": c.best}
    _check_unmet(choices, allow_unmet)
    doc = {"model_version": model_version, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "source": source, "n": int(len(y_true)), "sessions": {"n": int(len(y_true)), "categories": cats}}
    return CalibrationResult(doc, choices)


def session_verdict_rows(rows: list[dict], labels: list[str], step: np.ndarray, cumulative: np.ndarray,
                         choices: dict[str, "SessionThresholdChoice"]) -> list[dict]:
    """:func:`~editguard.clients.results.session_rows` with each category's score replaced by the session's
    verdict at the chosen pair (1.0 flagged, 0.0 not): the one-threshold reports judge them at 0.5."""
    t_step = np.array([choices[c].threshold for c in labels])
    t_cum = np.array([choices[c].cumulative for c in labels])
    flagged = (step >= t_step) | (cumulative >= t_cum)
    return [dict(r, **{f"score_{c}": float(f) for c, f in zip(labels, row)}) for r, row in zip(rows, flagged)]


def slice_table(rows: list[dict], labels: list[str], thresholds: np.ndarray, field: str, *, factor: float = 2.0,
                min_count: int = 20) -> list[dict]:
    """Per value of ``meta[field]`` (``field`` spelt ``meta.FIELD`` or ``FIELD``): n, and precision/recall/FPR of
    the ``unsafe`` decision at ``thresholds``. Raises ValueError when no row has the field.

    A slice is flagged when its FPR is over ``factor`` times the overall FPR (slices with
    fewer than ``min_count`` negatives are reported but not flagged).
    """
    from .results import results_arrays

    _, scores, y = results_arrays(rows)
    if y is None:
        raise ValueError("slices need labelled results (score a manifest with labels)")
    metas = [json.loads(r["meta"]) if r.get("meta") else {} for r in rows]
    values = ["(missing)" if v is None else str(v) for v in meta_column(metas, field, "--slice-by")]
    pred, truth = (scores >= thresholds).any(1), y.any(1)
    overall = rates_at(truth, pred.astype(float), 0.5)
    out = [{"slice": "(all)", "n": len(rows), **overall, "negatives": int((~truth).sum()), "flag": False}]
    for v in sorted(set(values)):
        m = np.array([x == v for x in values])
        r = rates_at(truth[m], pred[m].astype(float), 0.5)
        negs = int((~truth[m]).sum())
        flag = negs >= min_count and not math.isnan(r["fpr"]) and r["fpr"] > factor * max(overall["fpr"], 1e-9)
        out.append({"slice": v, "n": int(m.sum()), **r, "negatives": negs, "flag": bool(flag)})
    return out


def _any_rates(y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray, n_boot: int) -> dict:
    """Rates of the aggregate decision (any category flagged) with bootstrap intervals."""
    truth, pred = y_true.any(1), (y_score >= thresholds).any(1).astype(float)
    return {**rates_at(truth, pred, 0.5), "ci95": bootstrap_rates(truth, pred, 0.5, n_boot=n_boot),
            "support": int(truth.sum()), "negatives": int((~truth).sum())}


def threshold_report(labels: list[str], thresholds: np.ndarray, y_true: np.ndarray, y_score: np.ndarray, *,
                     n_boot: int = 200) -> dict:
    """Precision, recall and FPR at ``thresholds`` (``[C]``) on ``y_true``, ``y_score`` (``[N, C]``).

    Returns ``{"categories": {name: {precision, recall, fpr, support, negatives, ci95}},
    "unsafe_any": {...}}``, the aggregate being "any category flagged".
    """
    if y_true.shape != y_score.shape or y_true.shape[1] != len(labels):
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must both be [N, {len(labels)}]")
    out: dict = {"categories": {}}
    for j, name in enumerate(labels):
        y, sc = y_true[:, j].astype(bool), y_score[:, j]
        r = rates_at(y, sc, float(thresholds[j]))
        ci = bootstrap_rates(y, sc, float(thresholds[j]), n_boot=n_boot) if 0 < y.sum() < len(y) else {}
        out["categories"][name] = {**r, "support": int(y.sum()), "negatives": int((~y).sum()), "ci95": ci}
    out["unsafe_any"] = _any_rates(y_true.astype(bool), y_score, thresholds, n_boot)
    return out


def check_thresholds(labels: list[str], thresholds: np.ndarray, y_true: np.ndarray, y_score: np.ndarray, *,
                     reference: dict, factor: float = 2.0, n_boot: int = 200) -> dict:
    """How thresholds chosen on one labelled set carry to another.

    ``reference`` is :func:`threshold_report` on the calibration set. Returns the same report on
    this set, each entry with ``fpr_ratio`` (here / calibration set), plus ``warnings``: one line
    for each category (or the aggregate) whose FPR here is over ``factor`` times its FPR there (or
    over ``factor`` over its negatives, where that was 0).
    """
    if factor <= 1.0:
        raise ValueError(f"factor must be over 1, got {factor!r}")
    out = threshold_report(labels, thresholds, y_true, y_score, n_boot=n_boot)
    out["warnings"] = []
    rows = [*out["categories"].items(), ("unsafe (any)", out["unsafe_any"])]
    refs = [*reference["categories"].values(), reference["unsafe_any"]]
    for (name, here), ref in zip(rows, refs):
        base = ref["fpr"]
        here["fpr_ratio"] = float(here["fpr"] / base) if base and not math.isnan(here["fpr"]) else math.nan
        if not math.isnan(here["fpr"]) and here["fpr"] > factor * max(base, 1.0 / max(ref["negatives"], 1)):
            out["warnings"].append(f"{name}: FPR {here['fpr']:.3f} here vs {base:.3f} on the calibration set "
                                   f"(over {factor:g}x); precision {here['precision']:.3f}")
    return out


def format_check(name: str, check: dict, reference: dict) -> str:
    """A table of :func:`check_thresholds`: each category on the calibration set and on the other set."""
    rows = [f"thresholds on {name} (calibration set -> this set):",
            f"{'category':<22} {'precision':>15} {'recall':>15} {'FPR':>15}  {'precision 95% CI here':<22} support"]
    items = [*check["categories"].items(), ("unsafe (any)", check["unsafe_any"])]
    refs = [*reference["categories"].values(), reference["unsafe_any"]]
    for (cat, c), ref in zip(items, refs):
        ci = c.get("ci95", {}).get("precision", [math.nan, math.nan])
        cells = " ".join(f"{ref[k]:6.3f}->{c[k]:6.3f}" for k in ("precision", "recall", "fpr"))
        rows.append(f"{cat:<22} {cells}  [{ci[0]:.3f}, {ci[1]:.3f}]          {c['support']:>7}")
    rows += [f"WARNING {w}" for w in check["warnings"]]
    return "\n".join(rows)


def format_thresholds(result: CalibrationResult) -> str:
    if any(isinstance(c, SessionThresholdChoice) for c in result.choices.values()):
        return _format_session_thresholds(result)
    rows = [f"{'category':<22} {'target':<16} {'thresh':>6} {'prec':>6} {'recall':>6} {'FPR':>6} {'support':>7}  "
            f"precision 95% CI"]
    for name, c in result.choices.items():
        ci = result.thresholds["categories"][name].get("ci95", {}).get("precision", [math.nan, math.nan])
        mark = "" if c.achieved else "  (not met)"
        rows.append(f"{name:<22} {c.target:<16} {c.threshold:6.3f} {c.precision:6.3f} {c.recall:6.3f} {c.fpr:6.3f} "
                    f"{c.support:7d}  [{ci[0]:.3f}, {ci[1]:.3f}]{mark}")
    if result.ece:
        rows.append("")
        rows.append(f"{'category':<22} {'ECE before':>10} {'ECE after':>10}")
        rows += [f"{n:<22} {e['before']:10.4f} {e['after']:10.4f}" for n, e in result.ece.items()]
    return "\n".join(rows)


def _format_session_thresholds(result: CalibrationResult) -> str:
    rows = [f"{'category':<22} {'target':<16} {'step':>6} {'cumul.':>6} {'prec':>6} {'recall':>6} {'FPR':>6} "
            f"{'support':>7}   (per session)"]
    for name, c in result.choices.items():
        mark = "" if c.achieved else "  (not met)"
        rows.append(f"{name:<22} {c.target:<16} {c.threshold:6.3f} {c.cumulative:6.3f} {c.precision:6.3f} "
                    f"{c.recall:6.3f} {c.fpr:6.3f} {c.support:7d}{mark}")
    return "\n".join(rows)


@dataclass
class CalibrateConfig:
    """``editguard calibrate``'s work: scored results in, per-category thresholds out."""

    results: str  # `editguard score` results of a labelled manifest (JSONL or a Parquet folder)
    target: str = "precision=0.95"  # every category's target, METRIC=VALUE
    target_for: list[str] = field(default_factory=list)  # "CATEGORY=METRIC=VALUE": a category's own target
    method: str | None = None  # also fit probability calibration: "isotonic" or "sigmoid"
    n_boot: int = 200  # bootstrap resamples for the 95% intervals
    allow_unmet: bool = False  # the best achievable threshold where a target can't be met, instead of failing
    version: str | None = None  # the model version calibrated (default: the results')
    overlays: list[str] = field(default_factory=list)  # reviewed labels (the review page's decisions) over the results'
    only: list[str] = field(default_factory=list)  # calibrate these categories alone, merged into ``installed``
    installed: str | None = None  # the repository whose thresholds.json ``only`` merges into
    model: str = CLIENT_MODEL  # the client model of ``installed``
    check: list[str] = field(default_factory=list)  # other labelled results: how the thresholds carry there
    shift_factor: float = 2.0  # warn where a ``check`` set's FPR is over this multiple of the calibration set's
    slice_by: str | None = None  # the unsafe-any decision per value of this meta field
    fpr_factor: float = 2.0  # flag slices whose FPR is over this multiple of the overall FPR
    sessions: bool = False  # an edit session's step and cumulative thresholds, for a target per session


@dataclass
class CalibrationRun:
    """:func:`calibrate_results`' outcome: the result (``result.thresholds`` is the thresholds.json document,
    with ``reference``, ``checks`` and ``slices`` where asked), and the arrays it was chosen on."""

    result: CalibrationResult
    labels: list[str]
    y_true: np.ndarray  # [N, C]
    y_score: np.ndarray  # [N, C]
    slices: list[dict] | None = None
    overlays: list[tuple[str, int, int]] = field(default_factory=list)  # (file, ids matched, ids reviewed)


def calibrate_results(cfg: CalibrateConfig) -> CalibrationRun:
    """Read the results (with their overlays), choose each category's threshold for its target, and add the
    ``--only`` merge, the ``--check`` carry-over and the ``--slice-by`` table. Raises ValueError naming a
    bad category, target or file, and :class:`UnmetTargetError`."""
    from ..model.repository import keep_session_thresholds, merge_session_thresholds, merge_thresholds
    from .results import read_results, results_arrays, session_arrays, session_rows

    rows = read_results(cfg.results)
    if not rows:
        raise FileNotFoundError(f"no results in {cfg.results}; run `editguard score` first")
    overlays = _overlay(rows, cfg.overlays)
    if cfg.sessions:
        if not any(r.get("session") is not None for r in rows):
            raise ValueError(f"--sessions: {cfg.results} has no session turns; score a manifest with sessions")
        if cfg.method:
            raise ValueError("--sessions chooses thresholds only; fit --calibration on one-shot results")
        rows = session_rows(rows)
    labels, scores, y = results_arrays(rows)
    if y is None:
        raise ValueError(f"{cfg.results} has no labels: score a labelled manifest to calibrate")
    only = [n for spec in cfg.only for n in spec.split(",") if n]
    if only:
        unknown = [n for n in only if n not in labels]
        if unknown:
            raise ValueError(f"--only {','.join(unknown)}: not categories of {cfg.results} ({', '.join(labels)})")
        keep = [labels.index(n) for n in only]
        labels, scores, y = only, scores[:, keep], y[:, keep]
    versions = sorted({str(r.get("model_version", "")) for r in rows})
    if len(versions) > 1 and not cfg.version:
        raise ValueError(f"{cfg.results} mixes model versions {versions}; calibrate one version (pass --version)")
    version, source = cfg.version or versions[0], str(cfg.results)
    if cfg.sessions:
        _, _, step, cumulative = session_arrays(rows, labels)
        result = calibrate_sessions(labels, y, step, cumulative, targets=_targets(cfg, labels),
                                    allow_unmet=cfg.allow_unmet, model_version=version, source=source)
        # the one-threshold reports below (--check, --slice-by) judge each session's verdict at 0.5
        rows = session_verdict_rows(rows, labels, step, cumulative, result.choices)
        scores = np.array([[r[f"score_{c}"] for c in labels] for r in rows])
        th = np.full(len(labels), 0.5)
        if cfg.installed:
            result.thresholds = merge_session_thresholds(result.thresholds, cfg.installed, cfg.model)
    else:
        result = calibrate(labels, y, scores, targets=_targets(cfg, labels), method=cfg.method, n_boot=cfg.n_boot,
                           allow_unmet=cfg.allow_unmet, model_version=version, source=source)
        th = np.array([result.choices[n].threshold for n in labels])
        if only:
            result.thresholds = merge_thresholds(result.thresholds, cfg.installed, cfg.model)
        elif cfg.installed:  # the session thresholds installed beside them stay
            result.thresholds = keep_session_thresholds(result.thresholds, cfg.installed, cfg.model)
    if cfg.check:
        _check_shift(cfg, labels, th, y, scores, result)
    slices = slice_table(rows, labels, th, cfg.slice_by, factor=cfg.fpr_factor) if cfg.slice_by else None
    if slices:
        result.thresholds["slices"] = {"by": cfg.slice_by, "fpr_factor": cfg.fpr_factor, "rows": slices}
    return CalibrationRun(result, labels, y, scores, slices, overlays)


def _overlay(rows: list[dict], overlays: list[str]) -> list[tuple[str, int, int]]:
    """Reviewed labels over the rows' own, in order; ``(file, ids matched, ids reviewed)`` per overlay."""
    from ..manifest import read_overlay

    out = []
    for path in overlays:
        reviewed = read_overlay(path)
        hits = [r for r in rows if r["id"] in reviewed]
        for r in hits:
            r["labels"] = reviewed[r["id"]]["labels"]
        out.append((str(path), len(hits), len(reviewed)))
    return out


def _targets(cfg: CalibrateConfig, labels: list[str]) -> dict[str, Target]:
    default = parse_target(cfg.target)
    targets = {n: default for n in labels}
    for spec in cfg.target_for:
        name, _, rest = spec.partition("=")
        if name not in targets:
            raise ValueError(f"--target-for {spec!r}: unknown category {name!r}; categories: {', '.join(labels)}")
        targets[name] = parse_target(rest)
    return targets


def _check_shift(cfg: CalibrateConfig, labels: list[str], th: np.ndarray, y: np.ndarray, scores: np.ndarray,
                 result: CalibrationResult) -> None:
    """``--check``: the chosen thresholds on other labelled results, into ``result.thresholds``."""
    from .results import read_results, results_arrays, session_arrays, session_rows

    reference = threshold_report(labels, th, y, scores, n_boot=cfg.n_boot)
    checks = {}
    for path in cfg.check:
        rows = read_results(path)
        if cfg.sessions and rows:
            rows = session_rows(rows)
            _, _, step, cumulative = session_arrays(rows, labels)
            rows = session_verdict_rows(rows, labels, step, cumulative, result.choices)
        other_labels, other_scores, other_y = results_arrays(rows) if rows else ([], None, None)
        if other_y is None:
            raise ValueError(f"--check {path}: no labelled results there; score a labelled manifest with the same "
                             "model")
        if other_labels != labels:
            raise ValueError(f"--check {path}: categories {other_labels} differ from {labels}; check results of the "
                             "same model")
        versions = {str(r.get("model_version", "")) for r in rows} - {str(result.thresholds["model_version"])}
        if versions:
            warnings.warn(f"--check {path}: model version(s) {sorted(versions)} differ from the calibrated "
                          f"{result.thresholds['model_version']!r}", UserWarning)
        checks[str(path)] = check_thresholds(labels, th, other_y, other_scores, reference=reference,
                                             factor=cfg.shift_factor, n_boot=cfg.n_boot)
    result.thresholds["reference"] = reference
    result.thresholds["checks"] = checks
