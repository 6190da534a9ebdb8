"""Manifests: labelled triples in JSONL (or Parquet/CSV with the same columns).

One record per line::

    {"id": "a1", "input_image": "imgs/a1_in.png", "output_image": "imgs/a1_out.png",
     "prompt": "make the sky pink", "mask": "imgs/a1_mask.png", "labels": [], "meta": {"source": "x"}}

Paths are relative to the manifest's folder (its *root*) or absolute; a path
that resolves outside the root is refused unless ``allow_outside_root``.

A multi-turn edit is a **session**: its records carry ``session`` (an id shared by its turns) and
``turn`` (1, 2, ... with no gaps; turn k's input is turn k-1's output), and may carry
``cumulative_labels``: the labels of the whole edit so far (the session's origin image, the turn
prompts joined, turn k's output; ``editguard.model.session``). Without it they are the union of
the labels of turns 1..k. A harmful edit split into harmless-looking steps has empty ``labels`` on
its steps and the harm in ``cumulative_labels``.
Every problem is reported with file, line and field; nothing is dropped
silently: reading either returns every record or raises.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

__all__ = ["ManifestError", "Record", "read_manifest", "iter_raw_records", "read_overlay", "REQUIRED_FIELDS",
           "meta_field", "meta_column", "sessions"]

REQUIRED_FIELDS = ("id", "input_image", "output_image", "prompt")
OPTIONAL_FIELDS = ("mask", "labels", "meta", "session", "turn", "cumulative_labels")
MAX_LISTED = 20


class ManifestError(ValueError):
    """Bad manifest records. ``problems`` lists ``(line, field, message)``."""

    def __init__(self, path: Path, problems: list[tuple[int, str, str]]):
        self.path, self.problems = path, problems
        shown = "\n".join(f"  {path}:{ln}: field {fld!r}: {msg}" for ln, fld, msg in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{len(problems)} bad record(s) in {path}:\n{shown}{more}\nFix them and run again.")


@dataclass
class Record:
    id: str
    input_image: Path
    output_image: Path
    prompt: str
    mask: Path | None = None
    labels: list[str] = field(default_factory=list)  # empty = safe
    meta: dict[str, Any] = field(default_factory=dict)
    line: int = 0  # 1-based line (or row) in the manifest
    has_labels: bool = True  # False when the manifest has no labels column (scoring-only data)
    session: str | None = None  # the multi-turn session this turn belongs to
    turn: int | None = None  # its turn number, from 1
    cumulative_labels: list[str] | None = None  # labels of the whole edit up to this turn (see the docstring)


def iter_raw_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, raw dict or error string)`` from a JSONL, Parquet or CSV manifest."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield ln, json.loads(line)
                except json.JSONDecodeError as e:
                    yield ln, f"not valid JSON ({e.msg} at column {e.colno})"
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for ln, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield ln, _decode_columns(row)
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            for ln, row in enumerate(csv.DictReader(f), 2):
                keep = REQUIRED_FIELDS + ("labels",)  # an empty labels cell means safe
                yield ln, _decode_columns({k: v for k, v in row.items() if v != "" or k in keep})
    else:
        raise ValueError(f"{path}: unknown manifest format {suffix!r}; use .jsonl, .parquet or .csv")


def _decode_columns(row: dict) -> dict:
    """CSV/Parquet cells: ``labels`` may be a JSON list or 'a|b'; ``meta`` a JSON object."""
    row = dict(row)
    labels = row.get("labels", ...)
    if labels is None or labels == "":
        row["labels"] = []  # the column exists: an empty cell is a safe edit
    elif isinstance(labels, str):
        labels = labels.strip()
        row["labels"] = json.loads(labels) if labels.startswith("[") else [x for x in labels.split("|") if x]
    meta = row.get("meta")
    if isinstance(meta, str) and meta.strip():
        try:
            row["meta"] = json.loads(meta)
        except json.JSONDecodeError:
            pass  # reported as a non-object below
    for k in ("mask", "meta"):
        if row.get(k) is None:
            row.pop(k, None)
    return row


def read_manifest(
    path: str | Path,
    *,
    labels: list[str] | None = None,
    require_labels: bool = True,
    check_files: bool = True,
    allow_outside_root: bool = False,
    overlays: tuple | list = (),
) -> list[Record]:
    """Read and validate a manifest; raises :class:`ManifestError` listing every bad record.

    ``labels``: the known category names (unknown labels are errors).
    ``require_labels=False`` accepts records without ``labels`` (scoring data).
    ``overlays``: label overlays (:func:`read_overlay`), applied in order: a reviewed id takes the
    overlay's labels, and ``meta["reviewed"]`` records the decision.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist")
    root = path.parent.resolve()
    known = set(labels) if labels is not None else None
    records, problems, seen = [], [], {}
    for ln, raw in iter_raw_records(path):
        bad = problems.append
        if isinstance(raw, str):
            bad((ln, "*", raw))
            continue
        if not isinstance(raw, dict):
            bad((ln, "*", f"a record must be a JSON object, got {type(raw).__name__}"))
            continue
        n_before = len(problems)
        for k in sorted(set(raw) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)):
            bad((ln, k, "unknown field; put free-form data under 'meta'"))
        for k in REQUIRED_FIELDS:
            if k not in raw:
                bad((ln, k, "missing"))
            elif not isinstance(raw[k], str) or (k != "prompt" and not raw[k].strip()):
                bad((ln, k, f"must be a non-empty string, got {raw[k]!r:.60}"))
        rid = raw.get("id")
        if isinstance(rid, str) and rid:
            if rid in seen:
                bad((ln, "id", f"duplicate id {rid!r} (first on line {seen[rid]})"))
            else:
                seen[rid] = ln
        paths = {}
        for k in ("input_image", "output_image", "mask"):
            v = raw.get(k)
            if isinstance(v, str) and v.strip():
                p, msg = _resolve(root, v, check_files, allow_outside_root)
                if msg:
                    bad((ln, k, msg))
                paths[k] = p
            elif k == "mask" and v is not None:
                bad((ln, k, f"must be a path string or absent, got {v!r:.60}"))
        lab = raw.get("labels", None)
        if lab is None:
            if require_labels:
                bad((ln, "labels", "missing (use [] for a safe edit)"))
        elif not isinstance(lab, list) or not all(isinstance(x, str) for x in lab):
            bad((ln, "labels", f"must be a list of category names, got {lab!r:.60}"))
        elif known is not None:
            for x in lab:
                if x not in known:
                    bad((ln, "labels", f"unknown label {x!r}; known: {', '.join(sorted(known))}"))
        meta = raw.get("meta", {})
        if not isinstance(meta, dict):
            bad((ln, "meta", f"must be an object, got {type(meta).__name__}"))
        session, turn, cumulative = _session_fields(raw, ln, bad, known)
        if len(problems) == n_before:
            records.append(Record(rid, paths["input_image"], paths["output_image"], raw["prompt"], paths.get("mask"),
                                  sorted(set(lab or [])), meta, ln, lab is not None, session, turn, cumulative))
    problems += _session_gaps(records)
    if problems:
        raise ManifestError(path, problems)
    if not records:
        raise ManifestError(path, [(0, "*", "the manifest has no records")])
    for o in overlays:
        reviewed = read_overlay(o, labels)
        for r in records:
            if r.id in reviewed:
                r.labels, r.has_labels = reviewed[r.id]["labels"], True
                r.meta = {**r.meta, "reviewed": reviewed[r.id]["decision"]}
    return records


def _session_fields(raw: dict, ln: int, bad, known) -> tuple[str | None, int | None, list[str] | None]:
    """A record's ``session``, ``turn`` and ``cumulative_labels``, checked (problems go to ``bad``)."""
    session, turn, cumulative = raw.get("session"), raw.get("turn"), raw.get("cumulative_labels")
    if session is None and turn is None:
        if cumulative is not None:
            bad((ln, "cumulative_labels", "only a session's turn has cumulative labels; add 'session' and 'turn'"))
        return None, None, None
    if not isinstance(session, str) or not session.strip():
        bad((ln, "session", f"a turn needs a non-empty session id string, got {session!r:.60}"))
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        bad((ln, "turn", f"must be a whole number from 1, got {turn!r:.60}"))
    if cumulative is not None:
        if not isinstance(cumulative, list) or not all(isinstance(x, str) for x in cumulative):
            bad((ln, "cumulative_labels", f"must be a list of category names, got {cumulative!r:.60}"))
            cumulative = None
        else:
            for x in cumulative:
                if known is not None and x not in known:
                    bad((ln, "cumulative_labels", f"unknown label {x!r}; known: {', '.join(sorted(known))}"))
            cumulative = sorted(set(cumulative))
    return session, turn, cumulative


def _session_gaps(records: list[Record]) -> list[tuple[int, str, str]]:
    """Each session's turns run 1..n, each once."""
    problems = []
    for sid, turns in sessions(records).items():
        seen: dict[int, int] = {}
        for r in turns:
            if r.turn in seen:
                problems.append((r.line, "turn", f"session {sid!r} has turn {r.turn} twice (also line {seen[r.turn]})"))
            seen[r.turn] = r.line
        missing = sorted(set(range(1, max(seen) + 1)) - set(seen))
        if missing:
            problems.append((turns[0].line, "turn", f"session {sid!r} lacks turn(s) {missing}: turns run 1, 2, ..."))
    return problems


def sessions(records: list[Record]) -> dict[str, list[Record]]:
    """``{session id: its records by turn}`` for the records that belong to a session."""
    out: dict[str, list[Record]] = {}
    for r in records:
        if r.session is not None:
            out.setdefault(r.session, []).append(r)
    return {k: sorted(v, key=lambda r: r.turn) for k, v in out.items()}


def read_overlay(path: str | Path, labels: list[str] | None = None) -> dict[str, dict]:
    """Reviewed labels from a JSONL of decisions (``editguard review``'s download): one
    ``{"id": ..., "labels": [...], "decision": "correct" | "wrong"}`` per line, other fields ignored.
    Returns ``{id: {"labels", "decision"}}``; raises :class:`ManifestError` listing bad lines."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"overlay {path} does not exist")
    known = set(labels) if labels is not None else None
    out, problems = {}, []
    for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except ValueError as e:
            problems.append((ln, "*", f"not JSON: {e}"))
            continue
        if not isinstance(d, dict) or not isinstance(d.get("id"), str):
            problems.append((ln, "id", "each line needs a string 'id'"))
            continue
        lab = d.get("labels")
        if not isinstance(lab, list) or not all(isinstance(x, str) for x in lab):
            problems.append((ln, "labels", f"must be a list of category names, got {lab!r:.60}"))
            continue
        if known is not None and set(lab) - known:
            problems.append((ln, "labels", f"unknown label(s) {sorted(set(lab) - known)}; known: "
                                            f"{', '.join(sorted(known))}"))
            continue
        out[d["id"]] = {"labels": sorted(set(lab)), "decision": str(d.get("decision", "reviewed"))}
    if problems:
        raise ManifestError(path, problems)
    return out


def _resolve(root: Path, value: str, check: bool, allow_outside: bool) -> tuple[Path, str | None]:
    p = Path(value)
    p = (p if p.is_absolute() else root / p).resolve()
    if not allow_outside and not p.is_relative_to(root):
        return p, f"path {value!r} escapes the manifest's folder {root} (pass --allow-outside-root to permit it)"
    if check and not p.is_file():
        return p, f"file not found: {p}"
    return p, None


def meta_field(spec: str, option: str) -> str:
    """The meta field ``spec`` names: the command line takes ``meta.FIELD`` and ``FIELD`` alike. ``option``
    (e.g. ``--slice-by``) names the flag in the error for an empty one."""
    name = spec[len("meta."):] if spec.startswith("meta.") else spec
    if not name.strip():
        raise ValueError(f"{option} {spec!r}: give a field of the records' meta, e.g. meta.source")
    return name


def meta_column(metas: list[dict], spec: str, option: str) -> list:
    """``meta[FIELD]`` of each record, None where it has none (``spec`` as :func:`meta_field` takes it). Raises
    ValueError naming the fields the records do have when none has FIELD: a misspelt field would otherwise
    group or slice nothing, silently."""
    name = meta_field(spec, option)
    values = [m.get(name) for m in metas]
    if all(v is None for v in values):
        seen = sorted({k for m in metas for k in m})
        raise ValueError(f"{option} {spec}: no record has the meta field {name!r}; their meta fields are: "
                         f"{', '.join(seen) or '(none)'}")
    return values
