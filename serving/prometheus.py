"""What the served models count, on Triton's Prometheus endpoint (``:8002/metrics``).

Both Python-backend models record through the Python backend's custom metrics API, next to
Triton's own ``nv_inference_*`` series. Every series carries ``model`` and ``version``:

- ``editguard_triples_total``: triples classified;
- ``editguard_unsafe_total``: triples with at least one category flagged;
- ``editguard_flagged_total{category}``: triples flagged per category;
- ``editguard_rejected_total{reason}``: requests refused with INVALID_ARGUMENT, by reason
  (``decode``, ``too_large``, ``bad_mask``, ``bad_prompt``, ``bad_request``, ``bad_pixels``,
  ``spec_mismatch``, and ``bad_tensors`` at the classifier);
- ``editguard_score{category}``: a histogram of each category's score (``_bucket``, ``_sum``,
  ``_count``), at the edges in :data:`SCORE_BUCKETS`.

Instances (processes) of one version record into the same series. docs/operations.md has alert
rules on them. Counting never fails a request: when Triton runs with metrics off, nothing is counted.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ServedMetrics", "SCORE_BUCKETS", "METRIC_NAMES"]

SCORE_BUCKETS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
METRIC_NAMES = ("editguard_triples_total", "editguard_unsafe_total", "editguard_flagged_total",
                "editguard_rejected_total", "editguard_score")


class ServedMetrics:
    """The series of one served model version. ``labels``: the categories (None for a model that only
    rejects, like the classifier)."""

    def __init__(self, model: str, version: int | str, labels: list[str] | None = None):
        import triton_python_backend_utils as pb

        self._pb, self.labels = pb, list(labels or [])
        self._base = {"model": model, "version": str(version)}
        self._rejected: dict[str, object] = {}
        try:
            fam = pb.MetricFamily
            self._rejected_family = fam(name="editguard_rejected_total", kind=fam.COUNTER,
                                        description="Requests refused with INVALID_ARGUMENT, by reason")
            if not self.labels:
                return
            # the families must outlive their metrics: they are kept on self with them
            triples = fam(name="editguard_triples_total", kind=fam.COUNTER, description="Triples classified")
            unsafe = fam(name="editguard_unsafe_total", kind=fam.COUNTER,
                         description="Triples with at least one category flagged")
            flagged = fam(name="editguard_flagged_total", kind=fam.COUNTER,
                          description="Triples flagged, per category")
            scores = fam(name="editguard_score", kind=fam.HISTOGRAM, description="Scores, per category")
            self._families = (triples, unsafe, flagged, scores)
            self._triples, self._unsafe = triples.Metric(labels=self._base), unsafe.Metric(labels=self._base)
            self._flagged = [flagged.Metric(labels={**self._base, "category": c}) for c in self.labels]
            self._scores = [scores.Metric(labels={**self._base, "category": c}, buckets=SCORE_BUCKETS)
                            for c in self.labels]
        except Exception as e:  # metrics off (--allow-metrics=false) or an old backend: serve without them
            pb.Logger.log_warn(f"{model} v{version}: custom metrics unavailable, not counting ({e})")
            self._rejected_family = None
            self.labels = []

    def _failed(self, e: Exception) -> None:
        """A metric call failed: log it once and stop counting; the requests are answered regardless."""
        self._pb.Logger.log_error(f"{self._base['model']} v{self._base['version']}: metrics failed, not counting ({e})")
        self._rejected_family, self.labels = None, []

    def rejected(self, reason: str) -> None:
        if self._rejected_family is None:
            return
        try:
            metric = self._rejected.get(reason)
            if metric is None:
                metric = self._rejected[reason] = self._rejected_family.Metric(labels={**self._base, "reason": reason})
            metric.increment(1)
        except Exception as e:
            self._failed(e)

    def classified(self, scores: np.ndarray, flagged: np.ndarray) -> None:
        """Count a batch: ``scores`` float ``[B, C]``, ``flagged`` bool ``[B, C]``."""
        if not self.labels or not len(scores):
            return
        try:
            self._count(scores, flagged)
        except Exception as e:
            self._failed(e)

    def _count(self, scores: np.ndarray, flagged: np.ndarray) -> None:
        self._triples.increment(len(scores))
        unsafe = int(flagged.any(axis=1).sum())
        if unsafe:
            self._unsafe.increment(unsafe)
        for metric, n in zip(self._flagged, flagged.sum(axis=0).tolist()):
            if n:
                metric.increment(n)
        for metric, column in zip(self._scores, scores.T.tolist()):
            for value in column:
                metric.observe(value)
