"""``editguard score``: offline batch scoring of a manifest, resumable and exactly-once by id.

Two backends (:mod:`editguard.clients.backends`), one output schema (:mod:`editguard.clients.results`):

- ``--server URL``: through Triton with the thin client (the production path), with
  ``--concurrency`` requests in flight so Triton's dynamic batcher forms batches;
- ``--repository REPO``: in-process, the exported version run by the served model's own code
  (:class:`~editguard.serving.served.ServedVersion`); no server, no torch.

and two engines: ``local`` (this process) and ``ray`` (a Ray Data actor pool, each actor holding
one of the backends above; see :mod:`editguard.clients.ray_engine`). Either way this process
reads the manifest, skips done ids and writes every row, so both engines share one writer.

Per-item failures go to ``<out>.errors.jsonl`` with the reason, and the run goes on. A rerun
skips ids already written and retries the ones that failed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .backends import BackendConfig, Scored, open_backend
from .results import ErrorLog, ResultWriter, read_results, results_arrays

_logger = logging.getLogger(__name__)

__all__ = ["ScoreConfig", "ScoreSummary", "score"]


@dataclass
class ScoreConfig(BackendConfig):
    """What ``editguard score`` scores, where it writes, and on which engine; the backend's own settings
    (server or repository, version, pre-check, concurrency, batch size, timeout, TLS) are
    :class:`~editguard.clients.backends.BackendConfig`'s."""

    manifest: str = ""  # JSONL/Parquet/CSV manifest (labels optional)
    out: str = ""  # results: a .jsonl file, or a folder of Parquet parts
    allow_outside_root: bool = False
    progress: bool = True
    engine: str = "local"  # "local": this process; "ray": a Ray Data actor pool
    workers: int | None = None  # ray: actors (default: as many as the cluster's CPUs, or GPUs, allow)
    cpus_per_worker: float = 1.0  # ray: CPUs each actor reserves (and onnxruntime threads it uses)
    ray_address: str | None = None  # ray: a running cluster ("auto", "ray://head:10001"); default starts one here

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.manifest or not self.out:
            raise ValueError("score needs a manifest and an --out path")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass
class ScoreSummary:
    scored: int  # rows written by this run
    skipped: int  # ids already in the results
    errors: int  # ids that failed in this run
    seconds: float
    total_rows: int  # rows in the results now
    report: dict | None = None  # metrics over all rows, when the manifest has labels


def _row(s: Scored, rec) -> dict:
    row = {"id": s.id, "model_version": str(s.model_version), "unsafe": bool(s.unsafe)}
    row.update({f"score_{c}": float(v) for c, v in zip(s.labels, s.scores)})
    row.update({f"flag_{c}": bool(f) for c, f in zip(s.labels, s.flagged)})
    if rec.has_labels:
        row["labels"] = list(rec.labels)
    if rec.meta:
        row["meta"] = json.dumps(rec.meta, sort_keys=True)  # a JSON string, so Parquet parts share one schema
    return row


def score(cfg: ScoreConfig) -> ScoreSummary:
    """Score every record of ``cfg.manifest`` not yet in ``cfg.out``; see the module docstring."""
    from ..manifest import read_manifest
    from ..progress import progress

    t0 = time.perf_counter()
    records = read_manifest(cfg.manifest, require_labels=False, allow_outside_root=cfg.allow_outside_root)
    out = Path(cfg.out)
    writer, errors = ResultWriter(out), ErrorLog(out)
    todo = [r for r in records if r.id not in writer.done]
    skipped, scored, failed = len(records) - len(todo), 0, 0
    by_id = {r.id: r for r in todo}
    bar = progress(total=len(todo), unit="triple", desc="score", disable=not cfg.progress, smoothing=0.1)
    try:
        for s in _results(cfg, todo):
            if s.ok:
                writer.write(_row(s, by_id[s.id]))
                scored += 1
            else:
                errors.add(s.id, s.error, s.reason)
                failed += 1
            bar.update()
            bar.set_postfix(errors=failed)
    finally:
        bar.close()
        writer.close()
        errors.close(writer.done)
    rows = read_results(out)
    return ScoreSummary(scored, skipped, failed, round(time.perf_counter() - t0, 2), len(rows), _report(rows))


def _results(cfg: ScoreConfig, todo: list) -> Iterator[Scored]:
    """One :class:`Scored` for every record of ``todo``, from the engine and backend ``cfg`` names."""
    if cfg.engine == "ray":
        from .ray_engine import ray_results

        yield from ray_results(cfg, todo, workers=cfg.workers, cpus_per_worker=cfg.cpus_per_worker,
                               address=cfg.ray_address)
        return
    backend = open_backend(cfg)
    try:
        yield from backend.score(todo)
    finally:
        backend.close()


def _report(rows: list[dict]) -> dict | None:
    if not rows or rows[0].get("labels") is None:
        return None
    from ..reports import classification_report

    labels, scores, y = results_arrays(rows)
    try:
        return classification_report(y, scores, labels)
    except ImportError:
        _logger.info("metrics need scikit-learn: pip install 'editguard[calibrate]'")
        return None
