"""Scoring results on disk: JSONL, or a Parquet dataset (a folder of part files). Append-only and
exactly-once by id, also after ``kill -9``.

- JSONL: one row per line, flushed as written; a torn last line (the process died mid-write)
  is cut off when the file is reopened, so each id is either fully written or absent.
- Parquet: rows are buffered and written as ``part-NNNNN.parquet`` files, each renamed into
  place whole; rows not yet in a part are simply scored again on resume.

Row schema: ``id``, ``model_version``, ``unsafe``, ``score_<category>``, ``flag_<category>``
for each category, ``labels`` (a list of names) when the manifest has labels, and ``meta`` (the
record's meta as a JSON string) when it has one. A session's turn adds ``session``, ``turn``,
``cumulative_score_<category>``, ``cumulative_flag_<category>``, ``cumulative_labels`` and
``session_unsafe`` (:mod:`.score`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..files import JsonlAppender, atomic_path, iter_jsonl, write_text_atomic

__all__ = ["ResultWriter", "read_results", "results_arrays", "session_rows", "session_arrays", "ErrorLog"]


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson", ".json")


class ResultWriter:
    """Append rows; ``done`` holds the ids already on disk (read when opened)."""

    def __init__(self, path: str | Path, part_rows: int = 512):
        self.path = Path(path)
        self.jsonl = _is_jsonl(self.path)
        self.part_rows = part_rows
        self._buffer: list[dict] = []
        self.done: set[str] = set()
        if self.jsonl:
            self._lines = JsonlAppender(self.path)
            self.done = self._lines.seen
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.done = {r["id"] for r in read_results(self.path, columns=["id"])}
            self._next = 1 + max((int(p.stem.split("-")[1]) for p in self.path.glob("part-*.parquet")), default=-1)

    def write(self, row: dict) -> None:
        if self.jsonl:
            self._lines.write(row)
        else:
            self._buffer.append(row)
            if len(self._buffer) >= self.part_rows:
                self.flush()
        self.done.add(row["id"])

    def flush(self) -> None:
        if self.jsonl:
            self._lines.sync()
            return
        if not self._buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_path(self.path / f"part-{self._next:05d}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(self._buffer), tmp)
        self._next += 1
        self._buffer = []

    def close(self) -> None:
        self.flush()
        if self.jsonl:
            self._lines.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_results(path: str | Path, columns: list[str] | None = None) -> list[dict]:
    """All rows of a results file (JSONL) or folder (Parquet parts)."""
    path = Path(path)
    if not path.exists():
        return []
    if _is_jsonl(path):
        rows = list(iter_jsonl(path))
        return [{k: r.get(k) for k in columns} for r in rows] if columns else rows
    import pyarrow.parquet as pq

    rows = []
    for part in sorted(path.glob("part-*.parquet")):
        rows += pq.read_table(part, columns=columns).to_pylist()
    return rows


def results_arrays(rows: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """``(labels, scores [N, C], y_true [N, C] or None)`` from result rows (labels from the score columns)."""
    if not rows:
        raise ValueError("no results to read")
    labels = [k[len("score_"):] for k in rows[0] if k.startswith("score_")]
    scores = np.array([[r[f"score_{c}"] for c in labels] for r in rows], dtype=np.float64)
    y = None
    if rows[0].get("labels") is not None:
        y = np.array([[c in (r["labels"] or []) for c in labels] for r in rows], dtype=np.int64)
    return labels, scores, y


def session_rows(rows: list[dict]) -> list[dict]:
    """One row per session (rows without a session stay as they are): each category's score is the highest of
    its turns' step and cumulative scores, the labels those of any turn's step or cumulative triple. A session
    is flagged in a category when any of its checks is, so thresholds chosen on these rows hold for the
    session's verdict. ``id`` is the session's; ``turns`` counts them. Each row also has ``step_score_<c>``,
    its turns' highest step score, and ``cumulative_score_<c>``, the highest cumulative score of its turns from
    the second on (None for a one-turn session: a first turn sends the step triple alone), for thresholds of
    the two checks of their own (:func:`session_arrays`)."""
    out, by_session = [], {}
    for r in rows:
        sid = r.get("session")
        if sid is None:
            scores = [k for k in r if k.startswith("score_")]
            out.append(dict(r, **{f"step_{k}": r[k] for k in scores}, **{f"cumulative_{k}": None for k in scores}))
            continue
        by_session.setdefault(sid, []).append(r)
        if len(by_session[sid]) == 1:
            out.append(sid)
    merged_rows = {sid: _merge_session(sid, turns) for sid, turns in by_session.items()}
    return [merged_rows[r] if isinstance(r, str) else r for r in out]


def _merge_session(sid: str, turns: list[dict]) -> dict:
    turns = sorted(turns, key=lambda t: t.get("turn") or 0)
    merged = {"id": sid, "model_version": turns[0].get("model_version"), "turns": len(turns)}
    for k in (k for k in turns[0] if k.startswith("score_")):
        step = max(t[k] for t in turns)
        cumulative = max((t.get(f"cumulative_{k}", t[k]) for t in turns[1:]), default=None)
        merged[k] = step if cumulative is None else max(step, cumulative)
        merged[f"step_{k}"], merged[f"cumulative_{k}"] = step, cumulative
    if turns[0].get("labels") is not None:
        merged["labels"] = sorted({c for t in turns
                                   for c in (t.get("labels") or []) + (t.get("cumulative_labels") or [])})
    return merged


def session_arrays(rows: list[dict], labels: list[str] | None = None
                   ) -> tuple[list[str], np.ndarray | None, np.ndarray, np.ndarray]:
    """From :func:`session_rows`: ``(labels, y_true [S, C] or None, step [S, C], cumulative [S, C])``, each
    session's highest step and cumulative scores, for ``labels`` (default: every category of the rows);
    ``-inf`` where a session has no cumulative check."""
    names, _, y = results_arrays(rows)
    if labels is None:
        labels = names
    elif y is not None:
        y = y[:, [names.index(c) for c in labels]]
    step = np.array([[r[f"step_score_{c}"] for c in labels] for r in rows], dtype=np.float64)
    cum = np.array([[-np.inf if r[f"cumulative_score_{c}"] is None else r[f"cumulative_score_{c}"] for c in labels]
                    for r in rows], dtype=np.float64)
    return labels, y, step, cum


class ErrorLog:
    """``<results>.errors.jsonl``: the latest failure of each id that has not since succeeded."""

    def __init__(self, results: Path):
        self.path = results.with_name(results.name + ".errors.jsonl")
        self.errors: dict[str, dict] = {}
        if self.path.exists():
            for r in iter_jsonl(self.path):
                self.errors[r["id"]] = r
        self._f = open(self.path, "a", encoding="utf-8")

    def add(self, item_id: str, kind: str, reason: str) -> None:
        rec = {"id": item_id, "error": kind, "reason": reason}
        self.errors[item_id] = rec
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self, succeeded: set[str]) -> None:
        """Rewrite the file with only the ids that still fail; remove it when none does."""
        self._f.close()
        keep = [r for i, r in self.errors.items() if i not in succeeded]
        if keep:
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        else:
            self.path.unlink(missing_ok=True)
        self.errors = {r["id"]: r for r in keep}
