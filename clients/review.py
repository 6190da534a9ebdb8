"""``editguard review``: a static page to look at scored edits side by side and record decisions.

Writes ``OUT/index.html`` (one file: styles, script and data inline), ``OUT/thumbs/`` and, with
labels, ``OUT/pr_curves.png``. It opens from disk or any static host: no server, no network.

- A summary: items, flag rate per category, and with labels precision, recall and FPR at the
  thresholds, PR curves, and slices by meta fields.
- A grid of triples: input, output, mask and a difference image, the prompt, and each
  category's score as a bar against its threshold. A session's turn also shows the session as a
  strip of turns (the upload, then each turn's output and prompt), and is flagged when its step or
  its cumulative triple is. With ``--explanations`` (a folder ``editguard explain`` wrote), each
  explained category adds a toggle that shows its heatmap and box over the output, and bars of the
  share of the score carried by the output, the change and the prompt. Filters (category, verdict, label, meta
  value, minimum score, text) and sorting, with a "near the threshold" queue.
- Decisions: a reviewer marks items correct or wrong (with the right categories) and downloads
  them as JSONL, ``{"id", "labels", "decision", ...}`` per line, which ``--overlay`` reads back
  into ``train``, ``evaluate``, ``score`` and ``calibrate``.

Nothing from the manifest or the results is trusted: the data goes into the page as JSON with
``<``, ``>`` and ``&`` escaped, the script puts text into the page with ``textContent`` only,
and thumbnails are named by a hash, never by an item's id. Thumbnails are made once (named by
their sources' paths, sizes and times, so a rerun reuses them), in parallel, with progress.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_logger = logging.getLogger(__name__)

__all__ = ["ReviewConfig", "build_review", "resolve_thresholds"]

PAGE = Path(__file__).with_name("review_page.html")


@dataclass
class ReviewConfig:
    results: str  # `editguard score` output (JSONL or Parquet folder)
    manifest: str  # the manifest that was scored (images, prompts, labels, meta)
    out: str  # folder for index.html and thumbs/
    thresholds: str | None = None  # thresholds.json, or a repository (the results' version's installed file)
    slice_by: list[str] = field(default_factory=list)  # meta fields for the summary's slice tables
    thumb_size: int = 160
    workers: int | None = None  # thumbnail processes (default: all cores)
    progress: bool = True
    allow_outside_root: bool = False
    title: str = "editguard review"
    explanations: str | None = None  # a folder `editguard explain` wrote: heatmaps, boxes and shares on the page


def resolve_thresholds(spec: str | None, labels: list[str], version: str) -> tuple[np.ndarray, str]:
    """Thresholds in ``labels`` order and where they came from: a thresholds.json, or a repository's
    installed file for ``version`` (0.5 where none is installed), or 0.5 everywhere."""
    from ..model.repository import CLIENT_MODEL, DEFAULT_THRESHOLD, load_thresholds, threshold_array, version_dir

    if not spec:
        return np.full(len(labels), DEFAULT_THRESHOLD, np.float32), f"default {DEFAULT_THRESHOLD}"
    path = Path(spec)
    if path.is_dir():
        vdir = version_dir(path, CLIENT_MODEL, version)
        if not vdir.is_dir():
            raise FileNotFoundError(f"{path} has no {CLIENT_MODEL} version {version!r} (the results' version)")
        src = vdir / "thresholds.json"
        return load_thresholds(vdir, labels), str(src) if src.exists() else f"{vdir} (none installed: 0.5)"
    if not path.exists():
        raise FileNotFoundError(f"thresholds {path} does not exist; give a thresholds.json or a repository")
    return threshold_array(json.loads(path.read_text()), labels), str(path)


# -- thumbnails ----------------------------------------------------------------------------------
def _key(*paths) -> str:
    h = hashlib.sha1()
    for p in paths:
        try:
            st = Path(p).stat()
            h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        except (OSError, TypeError):
            h.update(f"missing:{p}".encode())
    return h.hexdigest()[:20]


def _thumb_job(job: tuple) -> tuple[dict, str | None]:
    """Make one item's thumbnails (skipping those on disk); returns (names, error)."""
    from PIL import Image, ImageChops, ImageOps

    src, out, mask, folder, size = job
    folder = Path(folder)
    names = {"input": f"{_key(src)}-i.jpg", "output": f"{_key(out)}-o.jpg", "diff": f"{_key(src, out)}-d.jpg"}
    if mask:
        names["mask"] = f"{_key(mask)}-m.png"
    if all((folder / n).exists() for n in names.values()):
        return names, None
    try:
        with Image.open(src) as a, Image.open(out) as b:
            a = ImageOps.exif_transpose(a).convert("RGB")
            b = ImageOps.exif_transpose(b).convert("RGB")
            for img, name in ((a, names["input"]), (b, names["output"])):
                t = img.copy()
                t.thumbnail((size, size))
                t.save(folder / name, "JPEG", quality=85)
            # where the output changed: the difference, amplified, in red over the dimmed input
            b = b.resize(a.size, Image.BILINEAR) if b.size != a.size else b
            a.thumbnail((size, size))
            b.thumbnail((size, size))
            b = b.resize(a.size)
            # (codec noise and colour shifts move every pixel a little: only changes over 24 levels show)
            d = ImageChops.difference(a, b).convert("L").point(lambda v: 0 if v < 24 else min(255, 64 + (v - 24) * 3))
            base = ImageOps.grayscale(a).point(lambda v: v // 3).convert("RGB")
            red = Image.merge("RGB", (d, Image.new("L", d.size, 0), Image.new("L", d.size, 0)))
            ImageChops.add(base, red).save(folder / names["diff"], "JPEG", quality=85)
        if mask:
            with Image.open(mask) as m:
                m = m.convert("L")
                m.thumbnail((size, size))
                m.save(folder / names["mask"], "PNG")
    except Exception as e:  # an unreadable image is shown as missing, with the reason
        return {}, f"{type(e).__name__}: {e}"
    return names, None


def _thumbnails(items: list, folder: Path, size: int, workers: int | None, progress: bool) -> list[tuple]:
    from ..progress import parallel_map

    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(r.input_image), str(r.output_image), str(r.mask) if r.mask else None, str(folder), size)
            for r in items]
    return list(parallel_map(_thumb_job, jobs, workers=workers, desc="thumbnails", unit="triple", show=progress))


def _why_job(job: tuple) -> tuple[str | None, str | None]:
    """The heatmap of one explanation over its output (at the input image's size, where the heatmap and box
    are), with the box, as a thumbnail; returns (name, error)."""
    from PIL import Image, ImageDraw, ImageOps

    src, out, heat, box, category, folder, size = job
    name = f"{_key(src, out, heat)}-w-{hashlib.sha1(category.encode()).hexdigest()[:8]}.jpg"
    if (Path(folder) / name).exists():
        return name, None
    try:
        with Image.open(src) as a, Image.open(out) as b, Image.open(heat) as h:
            size_in = ImageOps.exif_transpose(a).size
            b = ImageOps.exif_transpose(b).convert("RGB").resize(size_in, Image.BILINEAR)
            h = h.convert("L").resize(size_in, Image.BILINEAR)
            hot = Image.merge("RGB", (h, h.point(lambda v: v // 3), Image.new("L", size_in, 0)))
            view = Image.composite(Image.blend(b, hot, 0.6), b, h.point(lambda v: 255 if v > 12 else 0))
            if box:
                ImageDraw.Draw(view).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(0, 220, 255),
                                               width=max(1, round(max(size_in) / 160)))
            view.thumbnail((size, size))
            view.save(Path(folder) / name, "JPEG", quality=85)
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"
    return name, None


def _explanations(folder: str, items: list, out: Path, size: int, workers: int | None, progress: bool) -> list[list]:
    """Per item, its explanations from ``folder/explanations.jsonl`` with their overlay thumbnails."""
    from ..files import iter_jsonl
    from ..progress import parallel_map

    path = Path(folder) / "explanations.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `editguard explain MANIFEST --model-dir D --out {folder}`")
    by_id: dict[str, list[dict]] = {}
    for line in iter_jsonl(path):
        if "error" not in line:
            by_id.setdefault(str(line["id"]), []).append(line)
    jobs, where = [], []
    for k, r in enumerate(items):
        for e in by_id.get(str(r.id), []):
            jobs.append((str(r.input_image), str(r.output_image), str(Path(folder) / e["heatmap"]), e.get("box"),
                         e["category"], str(out / "thumbs"), size))
            where.append((k, e))
    why: list[list] = [[] for _ in items]
    done = parallel_map(_why_job, jobs, workers=workers, desc="heatmaps", unit="map", show=progress)
    for (k, e), (name, err) in zip(where, done):
        why[k].append({"category": e["category"], "overlay": f"thumbs/{name}" if name else None, "error": err,
                       "box": e.get("box"), "peak": e.get("peak"), "shares": e.get("shares", {})})
    return why


# -- the page ------------------------------------------------------------------------------------
def _summary(labels, scores, y, th, rows, slice_by, out: Path) -> dict:
    flags = scores >= th
    s: dict = {"n": len(rows), "flag_rate": {c: float(flags[:, j].mean()) for j, c in enumerate(labels)},
               "unsafe_rate": float(flags.any(1).mean()), "labelled": y is not None}
    if y is None:
        return s
    from .calibrate import ThresholdChoice, rates_at, slice_table

    s["rates"] = {c: {**rates_at(y[:, j], scores[:, j], float(th[j])), "support": int(y[:, j].sum())}
                  for j, c in enumerate(labels)}
    s["rates"]["unsafe (any)"] = {**rates_at(y.any(1), flags.any(1).astype(float), 0.5),
                                  "support": int(y.any(1).sum())}
    s["slices"] = {f: slice_table(rows, labels, th, f) for f in slice_by}
    try:
        from .plots import plot_pr_curves

        rates = s["rates"]
        choices = {c: ThresholdChoice(float(th[j]), "installed", True, rates[c]["precision"], rates[c]["recall"],
                                      rates[c]["fpr"], rates[c]["support"], float("nan")) for j, c in enumerate(labels)}
        plot_pr_curves(labels, y, scores, choices, out / "pr_curves.png")
        s["pr_curves"] = "pr_curves.png"
    except ImportError:  # matplotlib is the [calibrate] extra
        _logger.warning("no matplotlib: the page has no PR curves (pip install 'editguard[calibrate]')")
    return s


def _safe_json(data) -> str:
    """JSON that can sit inside a <script> element: nothing in it can close the element or open markup."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _clean(x):
    """NaN (undefined rates) as null, numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else round(float(x), 5)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _session_strips(rows: list[dict], records: list, thumbs: list[tuple], labels: list[str],
                    data_items: list[dict]) -> None:
    """For each scored turn of a session: the session's strip (the upload, then every scored turn's output
    and prompt, in order) and this turn's cumulative scores, so a flagged turn shows the whole conversation."""
    turns: dict[str, list[tuple[int, int]]] = {}
    for k, r in enumerate(rows):
        if r.get("session") is not None:
            turns.setdefault(str(r["session"]), []).append((int(r["turn"]), k))
    for sid, members in turns.items():
        members.sort()
        first = thumbs[members[0][1]][0]
        strip = [{"turn": t, "prompt": records[k].prompt, "output": f"thumbs/{thumbs[k][0]['output']}"
                  if "output" in thumbs[k][0] else None} for t, k in members]
        origin = f"thumbs/{first['input']}" if members[0][0] == 1 and "input" in first else None
        for t, k in members:
            cumulative = [round(float(rows[k].get(f"cumulative_score_{c}", rows[k][f"score_{c}"])), 5) for c in labels]
            data_items[k]["session"] = {"id": sid, "turn": t, "origin": origin, "turns": strip,
                                        "cumulative": cumulative}


def build_review(cfg: ReviewConfig) -> Path:
    """Write the review site; returns the path of index.html."""
    from ..files import write_text_atomic
    from ..manifest import read_manifest
    from .results import read_results, results_arrays

    rows = read_results(cfg.results)
    if not rows:
        raise FileNotFoundError(f"no results in {cfg.results}; run `editguard score` first")
    records = {r.id: r for r in read_manifest(cfg.manifest, require_labels=False, check_files=False,
                                              allow_outside_root=cfg.allow_outside_root)}
    missing = [r["id"] for r in rows if r["id"] not in records]
    if missing:
        raise ValueError(f"{len(missing)} scored ids are not in {cfg.manifest} (first: {missing[0]!r}); give the "
                         "manifest that was scored")
    labels, scores, y = results_arrays(rows)
    versions = sorted({str(r.get("model_version", "")) for r in rows})
    th, th_source = resolve_thresholds(cfg.thresholds, labels, versions[-1])
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    items = [records[r["id"]] for r in rows]
    thumbs = _thumbnails(items, out / "thumbs", cfg.thumb_size, cfg.workers, cfg.progress)
    why = (_explanations(cfg.explanations, items, out, cfg.thumb_size, cfg.workers, cfg.progress)
           if cfg.explanations else [[] for _ in items])
    data_items = []
    for k, (r, rec, (names, err)) in enumerate(zip(rows, items, thumbs)):
        meta = rec.meta if rec.meta else (json.loads(r["meta"]) if r.get("meta") else {})
        data_items.append({
            "id": str(r["id"]), "prompt": rec.prompt, "version": str(r.get("model_version", "")),
            "scores": [round(float(v), 5) for v in scores[k]],
            "labels": (r.get("labels") or []) if y is not None else None,
            "meta": {str(a): b if isinstance(b, (str, int, float, bool)) or b is None else json.dumps(b)
                     for a, b in meta.items()},
            "thumbs": {a: f"thumbs/{b}" for a, b in names.items()}, "error": err, "why": why[k]})
    _session_strips(rows, items, thumbs, labels, data_items)
    summary = _summary(labels, scores, y, th, rows, cfg.slice_by, out)
    review_id = hashlib.sha1(f"{Path(cfg.results).resolve()}|{len(rows)}".encode()).hexdigest()[:12]
    data = _clean({"title": cfg.title, "review_id": review_id, "categories": labels, "thresholds": th.tolist(),
                   "thresholds_source": th_source, "results": str(cfg.results), "versions": versions,
                   "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "summary": summary,
                   "items": data_items})
    page = PAGE.read_text(encoding="utf-8").replace("/*EDITGUARD_DATA*/", _safe_json(data), 1)
    write_text_atomic(out / "index.html", page)
    return out / "index.html"
