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

A manifest with sessions (``session`` and ``turn``) gets each turn's cumulative triple scored too
(:mod:`editguard.model.session`: the origin, the turn prompts joined, this turn's output), in the
same run and on the same backend: the turn's row adds ``session``, ``turn``,
``cumulative_score_<category>``, ``cumulative_flag_<category>``, ``cumulative_labels`` and
``session_unsafe`` (the step or the cumulative triple flagged). At turn 1 the two triples are one.
Those flags are a client session's: the step's score against the served step thresholds, the cumulative
one's against the cumulative thresholds (``calibrate --sessions``; the one-shot ones where none are
installed). ``flag_<category>`` and ``unsafe`` stay the turn's verdict as a one-shot edit.
"""

from __future__ import annotations

import dataclasses
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


CUMULATIVE = " (cumulative)"  # appended to a turn's id for its cumulative triple while it is scored


def _row(s: Scored, rec, cumulative: Scored | None = None, cumulative_labels: list[str] | None = None) -> dict:
    row = {"id": s.id, "model_version": str(s.model_version), "unsafe": bool(s.unsafe)}
    row.update({f"score_{c}": float(v) for c, v in zip(s.labels, s.scores)})
    row.update({f"flag_{c}": bool(f) for c, f in zip(s.labels, s.flagged)})
    if rec.has_labels:
        row["labels"] = list(rec.labels)
    if rec.meta:
        row["meta"] = json.dumps(rec.meta, sort_keys=True)  # a JSON string, so Parquet parts share one schema
    if rec.session is not None:
        c = cumulative or s  # turn 1: the cumulative triple is the step
        # each check at its session threshold, as a client session judges the turn (turn 1: the step check alone)
        step = s.session_flags("step")
        flags = c.session_flags("cumulative") if cumulative is not None else step
        row.update(session=rec.session, turn=rec.turn, session_unsafe=bool(any(step) or any(flags)))
        row.update({f"cumulative_score_{k}": float(v) for k, v in zip(c.labels, c.scores)})
        row.update({f"cumulative_flag_{k}": bool(f) for k, f in zip(c.labels, flags)})
        if rec.has_labels:
            row["cumulative_labels"] = list(cumulative_labels if cumulative_labels is not None else rec.labels)
    return row


def _with_cumulative(records: list, todo: list, precheck: bool) -> tuple[list, dict]:
    """``todo`` plus the cumulative triples of its session turns from 2 on (not for the pre-check, which sees
    no output), and ``{turn id: its cumulative triple}``."""
    if precheck or not any(r.session is not None for r in records):
        return todo, {}
    from ..model.session import cumulative_triples

    wanted = {r.id for r in todo}
    cumulative = {c.id: c for c in cumulative_triples(records) if c.id in wanted}
    extra = [dataclasses.replace(c, id=c.id + CUMULATIVE) for c in cumulative.values()]
    return todo + extra, cumulative


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
    items, cumulative = _with_cumulative(records, todo, cfg.precheck)
    waiting: dict[str, Scored] = {}  # a turn's step or cumulative result, until the other one comes
    bar = progress(total=len(items), unit="triple", desc="score", disable=not cfg.progress, smoothing=0.1)
    try:
        for s in _results(cfg, items):
            bar.update()
            is_cum = s.id not in by_id  # the id of a cumulative triple is its turn's plus CUMULATIVE
            turn_id = s.id[:-len(CUMULATIVE)] if is_cum else s.id
            step, cum = s, None
            if turn_id in cumulative:
                if turn_id not in waiting:
                    waiting[turn_id] = s
                    continue
                step, cum = (waiting.pop(turn_id), s) if is_cum else (s, waiting.pop(turn_id))
            failure = next((x for x in (step, cum) if x is not None and not x.ok), None)
            if failure is None:
                labels = cumulative[turn_id].labels if turn_id in cumulative else None
                writer.write(_row(step, by_id[turn_id], cum, labels))
                scored += 1
            else:
                what = " (its cumulative triple)" if failure is cum else ""
                errors.add(turn_id, failure.error, f"{failure.reason}{what}")
                failed += 1
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
