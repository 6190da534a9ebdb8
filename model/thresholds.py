"""The thresholds.json contract: per-category decision thresholds for one model version.

    {"model_version": "3", "target": "precision>=0.95",
     "categories": {"sexual": {"threshold": 0.62, "target": "precision>=0.95", "precision": 0.96,
                               "recall": 0.91, "fpr": 0.004, "support": 412, ...}, ...}}

It lives beside the model version it calibrates (``REPO/editguard/N/thresholds.json``). The
Triton model, the in-process scorer and the tests all read it with :func:`threshold_array`.
A category that is missing keeps the default threshold of 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_THRESHOLD", "threshold_array", "load_thresholds"]

DEFAULT_THRESHOLD = 0.5


def threshold_array(data: dict, labels: list[str]) -> np.ndarray:
    """``float32 [C]`` thresholds in ``labels`` order; raises ValueError on a malformed file."""
    cats = data.get("categories")
    if not isinstance(cats, dict):
        raise ValueError("thresholds.json needs a 'categories' object")
    out = []
    for name in labels:
        t = float(cats[name]["threshold"]) if name in cats else DEFAULT_THRESHOLD
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold of {name!r} is {t}, outside [0, 1]")
        out.append(t)
    return np.array(out, np.float32)


def load_thresholds(version_dir: str | Path, labels: list[str]) -> np.ndarray:
    """The thresholds of a version dir, or the defaults when it has no thresholds.json."""
    path = Path(version_dir) / "thresholds.json"
    if not path.exists():
        return np.full(len(labels), DEFAULT_THRESHOLD, np.float32)
    return threshold_array(json.loads(path.read_text()), labels)
