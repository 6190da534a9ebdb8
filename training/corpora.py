"""``editguard import``: a published image-editing corpus, or a folder of your own edits, into a manifest.

Offline, from files on disk:

- a Hugging Face dataset saved with ``save_to_disk`` (a folder with ``state.json``, or a
  ``DatasetDict`` folder with ``dataset_dict.json``: pick ``split``);
- Parquet files as the hub publishes them (one file, or a folder of them), or Arrow files;
- a folder layout: one sub-folder per edit holding ``input.*``, ``output.*``, an optional
  ``mask.*`` and ``prompt.txt`` (the sub-folder's name is the id).

Columns come from a named corpus mapping (:data:`CORPORA`, from each dataset card's features) or
from ``--columns input=...,prompt=...,output=...[,mask=...][,id=...]``. An image cell may be a
Hugging Face ``Image`` (a struct of ``bytes`` and ``path``), raw bytes, or a path relative to the
source. Every image is decoded with editguard's own preprocessing rules before it is written, so
a row that imports also trains.

Writes ``OUT/manifest.jsonl`` and ``OUT/images/`` (the original encoded bytes, under the row's
id). Public edits come in as safe (``labels: []``) with ``meta.source``; ``labels`` (a JSONL or
CSV of ``id`` and ``labels``) joins reviewers' labels by id. A bad row (a missing or undecodable
image, an empty prompt, a mask of another size) goes to ``OUT/skipped.jsonl`` with its row, column
and reason: nothing is dropped silently. A killed import resumes where it stopped. Several sources
may be imported into one folder, each under its own ``--name``: one manifest to split.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..files import JsonlAppender, atomic_path

_logger = logging.getLogger(__name__)

__all__ = ["CorpusColumns", "CORPORA", "ImportConfig", "ImportSummary", "import_corpus", "parse_columns"]


@dataclass(frozen=True)
class CorpusColumns:
    """Which columns of a corpus hold what."""

    input: str  # the image before the edit
    output: str  # the image after it
    prompt: str  # the edit instruction
    mask: str | None = None  # the edited region, white = edited (optional)
    id: tuple[str, ...] = ()  # columns whose values, joined, name a row; default: the row number
    meta: tuple[str, ...] = ()  # columns copied into meta (for slices and for `editguard split --group-by`)


# From each dataset card's `dataset_info.features` on the Hugging Face hub; image columns are `Image`.
CORPORA = {
    # osunlp/MagicBrush: img_id, turn_index, source_img, mask_img, instruction, target_img. A turn's
    # source is the previous turn's output, so the turns of one img_id share a photo.
    "magicbrush": CorpusColumns("source_img", "target_img", "instruction", mask="mask_img",
                                id=("img_id", "turn_index"), meta=("img_id", "turn_index")),
    # timbrooks/instructpix2pix-clip-filtered: original_prompt, original_image, edit_prompt, edited_prompt,
    # edited_image
    "instructpix2pix": CorpusColumns("original_image", "edited_image", "edit_prompt",
                                     meta=("original_prompt", "edited_prompt")),
    # UCSC-VLAA/HQ-Edit: input, input_image, edit, inverse_edit, output, output_image
    "hq-edit": CorpusColumns("input_image", "output_image", "edit", meta=("input", "output")),
}
FOLDER = CorpusColumns("input", "output", "prompt", mask="mask")  # the folder layout's names
ROLES = ("input", "output", "mask")
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}


def parse_columns(spec: str) -> CorpusColumns:
    """``input=a,prompt=b,output=c[,mask=d][,id=e+f][,meta=g+h]`` -> :class:`CorpusColumns`."""
    fields: dict[str, Any] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep or name not in ("input", "output", "prompt", "mask", "id", "meta") or not value:
            raise ValueError(f"--columns {spec!r}: {part!r} is not ROLE=COLUMN; roles: input, output, prompt, "
                             "mask, id, meta (id and meta take COLUMN+COLUMN)")
        fields[name] = tuple(value.split("+")) if name in ("id", "meta") else value
    missing = [r for r in ("input", "output", "prompt") if r not in fields]
    if missing:
        raise ValueError(f"--columns {spec!r} names no {', '.join(missing)} column")
    return CorpusColumns(**fields)


@dataclass
class ImportConfig:
    source: str  # a save_to_disk folder, Parquet/Arrow file(s), or a folder of edits (layout "folder")
    out: str  # folder for manifest.jsonl, images/ and skipped.jsonl
    corpus: str | None = None  # a name in CORPORA
    columns: CorpusColumns | None = None  # or the columns themselves (--columns)
    layout: str = "dataset"  # "dataset" (rows of a table) or "folder" (one sub-folder per edit)
    split: str | None = None  # a DatasetDict folder's split (default: its only one, or "train")
    name: str | None = None  # meta.source of every row (default: the corpus name, or the source's folder name)
    labels: str | None = None  # JSONL or CSV of id and labels, joined by id; the rest are safe
    taxonomy: str | None = None  # the label names the labels file may use (default: the built-in ones)
    limit: int | None = None  # stop after this many rows (a sample of a large corpus)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.layout not in ("dataset", "folder"):
            raise ValueError(f"layout must be 'dataset' or 'folder', got {self.layout!r}")
        if self.layout == "dataset" and (self.corpus is None) == (self.columns is None):
            raise ValueError(f"give --corpus ({', '.join(CORPORA)}) or --columns input=...,prompt=...,output=... "
                             "(or --layout folder)")
        if self.corpus is not None and self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; named corpora: {', '.join(CORPORA)}; for another "
                             "one, name its columns with --columns input=...,prompt=...,output=...")


@dataclass
class ImportSummary:
    written: int  # rows added to the manifest by this run
    skipped: int  # rows reported in skipped.jsonl by this run
    already: int  # rows a previous run had already written or reported
    labelled: int  # rows that took labels from the labels file
    unmatched_labels: list[str] = field(default_factory=list)  # ids in the labels file that no row has
    seconds: float = 0.0
    manifest: str = ""


class BadRow(ValueError):
    def __init__(self, column: str, reason: str):
        super().__init__(f"{column}: {reason}")
        self.column, self.reason = column, reason


# -- reading sources --------------------------------------------------------------------------
def _table_files(source: Path, split: str | None) -> list[tuple[Path, str]]:
    """``(file, "parquet" | "arrow-stream" | "arrow-file")`` of a dataset source, in row order."""
    if source.is_file():
        return [(source, "parquet" if source.suffix == ".parquet" else "arrow-file")]
    if (source / "dataset_dict.json").exists():  # DatasetDict.save_to_disk: one folder per split
        splits = json.loads((source / "dataset_dict.json").read_text())["splits"]
        chosen = split or (splits[0] if len(splits) == 1 else "train")
        if chosen not in splits:
            raise ValueError(f"{source} has splits {splits}; pick one with --split")
        source = source / chosen
    if (source / "state.json").exists():  # Dataset.save_to_disk: Arrow IPC streams named in state.json
        files = [source / f["filename"] for f in json.loads((source / "state.json").read_text())["_data_files"]]
        return [(f, "arrow-stream") for f in files]
    files = sorted(source.rglob("*.parquet")) or sorted(source.rglob("*.arrow"))
    if not files:
        raise FileNotFoundError(f"{source} holds no dataset: no state.json or dataset_dict.json (save_to_disk), "
                                "and no .parquet or .arrow files")
    return [(f, "parquet" if f.suffix == ".parquet" else "arrow-file") for f in files]


def _batches(path: Path, kind: str, columns: list[str]) -> Iterator[list[dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "parquet":
        pf = pq.ParquetFile(path)
        _check_columns(path, pf.schema_arrow.names, columns)
        for batch in pf.iter_batches(batch_size=64, columns=columns):
            yield batch.to_pylist()
        return
    with open(path, "rb") as f:
        reader = pa.ipc.open_stream(f) if kind == "arrow-stream" else pa.ipc.open_file(f)
        _check_columns(path, reader.schema.names, columns)
        batches = reader if kind == "arrow-stream" else (reader.get_batch(i) for i in range(reader.num_record_batches))
        for batch in batches:
            yield batch.select(columns).to_pylist()


def _check_columns(path: Path, have: list[str], want: list[str]) -> None:
    missing = [c for c in want if c not in have]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(map(repr, missing))}; its columns are {have}. Use "
                         "--columns input=...,prompt=...,output=... to name them")


def _dataset_rows(cfg: ImportConfig, cols: CorpusColumns) -> Iterator[tuple[int, dict]]:
    wanted = list(dict.fromkeys([cols.input, cols.output, cols.prompt, *([cols.mask] if cols.mask else []),
                                 *cols.id, *cols.meta]))
    row = 0
    for path, kind in _table_files(Path(cfg.source), cfg.split):
        for batch in _batches(path, kind, wanted):
            for r in batch:
                yield row, r
                row += 1


def _folder_rows(source: Path) -> Iterator[tuple[int, dict]]:
    """One row per sub-folder: its images by stem (paths relative to ``source``), its prompt.txt, its name as
    the id."""
    for row, d in enumerate(sorted(p for p in source.iterdir() if p.is_dir())):
        r: dict[str, Any] = {"id": d.name}
        for role in ROLES:
            found = sorted(p for p in d.iterdir() if p.stem == role and p.suffix != ".txt")
            r[role] = str(found[0].relative_to(source)) if found else None
        prompt = d / "prompt.txt"
        r["prompt"] = prompt.read_text(encoding="utf-8").strip() if prompt.exists() else None
        yield row, r


# -- one row ----------------------------------------------------------------------------------
def _image_bytes(value: Any, column: str, root: Path) -> bytes:
    """An image cell as encoded bytes: an HF Image struct, bytes, or a path relative to ``root``."""
    if isinstance(value, dict):  # Hugging Face `Image`: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value:
        path = Path(value) if Path(value).is_absolute() else root / value
        try:
            return path.read_bytes()
        except OSError as e:
            raise BadRow(column, f"can't read image file {path}: {e.strerror}") from e
    raise BadRow(column, "no image")


class _Row:
    """What one source row becomes: its id, the checked images and prompt, and its meta."""

    def __init__(self, row: int, r: dict, cols: CorpusColumns, cfg: ImportConfig, decoder, source: str):
        root = Path(cfg.source) if Path(cfg.source).is_dir() else Path(cfg.source).parent
        self.row = row
        if cfg.layout == "folder":
            self.id = str(r["id"])  # the sub-folder's name
        else:
            self.id = "-".join([source, *(str(r[c]) for c in cols.id)]) if cols.id else f"{source}-{row:07d}"
        prompt = r.get(cols.prompt)
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRow(cols.prompt, "empty prompt" if isinstance(prompt, str) or prompt is None
                         else f"the prompt is a {type(prompt).__name__}, not text")
        self.prompt = prompt
        self.images: dict[str, tuple[bytes, str]] = {}
        sizes = {}
        for role in ROLES:
            column = getattr(cols, role)
            if column is None or (role == "mask" and r.get(column) is None):
                continue
            data = _image_bytes(r.get(column), column, root)
            try:
                img = decoder.decode(data, column)
            except ValueError as e:  # PreprocessError: the same rules as training and serving
                raise BadRow(column, getattr(e, "reason", str(e))) from e
            sizes[role] = img.info.get("source_size", img.size)
            self.images[role] = (data, EXTENSIONS.get(_format(data), "img"))
        if "mask" in sizes and sizes["mask"] != sizes["input"]:
            raise BadRow(cols.mask, f"mask is {sizes['mask'][0]}x{sizes['mask'][1]} but the input image is "
                                    f"{sizes['input'][0]}x{sizes['input'][1]}")
        self.meta = {"source": source, "row": row, **{c: _plain(r.get(c)) for c in cols.meta}}


def _format(data: bytes) -> str | None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.format


def _plain(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


# -- labels -----------------------------------------------------------------------------------
def read_labels(path: str | Path, known: list[str]) -> dict[str, list[str]]:
    """``{id: labels}`` from a JSONL (``{"id", "labels"}`` per line) or a CSV (``id,labels``; labels as
    ``a|b`` or a JSON list). Unknown label names are an error naming the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"labels file {path} does not exist")
    rows: list[tuple[int, Any, Any]] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(ln, r.get("id"), r.get("labels", "")) for ln, r in enumerate(csv.DictReader(f), 2)]
    else:
        for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                d = json.loads(line)
                rows.append((ln, d.get("id"), d.get("labels")))
    out, problems = {}, []
    for ln, rid, labels in rows:
        if isinstance(labels, str):
            labels = json.loads(labels) if labels.strip().startswith("[") else [x for x in labels.split("|") if x]
        bad = [x for x in labels or [] if x not in known]
        if not isinstance(rid, str) or not rid or not isinstance(labels, list) or bad:
            problems.append(f"{path}:{ln}: " + (f"unknown label(s) {bad}; known: {', '.join(known)}" if bad
                                                else "each line needs a string id and a list of labels"))
            continue
        out[rid] = sorted(set(labels))
    if problems:
        raise ValueError(f"{len(problems)} bad line(s) in the labels file:\n  " + "\n  ".join(problems[:20]))
    return out


# -- the import ---------------------------------------------------------------------------------
def import_corpus(cfg: ImportConfig) -> ImportSummary:
    """Import ``cfg.source`` into ``cfg.out``; see the module docstring. Resumes a killed run."""
    from ..model.config import PreprocessConfig
    from ..model.preprocess import Preprocessor
    from ..model.taxonomy import default_taxonomy, load_taxonomy
    from ..progress import progress

    t0 = time.perf_counter()
    source = Path(cfg.source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    cols = FOLDER if cfg.layout == "folder" else (cfg.columns or CORPORA[cfg.corpus])
    name = cfg.name or cfg.corpus or source.stem
    known = (load_taxonomy(cfg.taxonomy) if cfg.taxonomy else default_taxonomy()).names
    labels = read_labels(cfg.labels, known) if cfg.labels else {}
    out = Path(cfg.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    manifest, skipped = JsonlAppender(out / "manifest.jsonl"), JsonlAppender(out / "skipped.jsonl", key="row")
    done = _rows_done(out, name)
    decoder = Preprocessor(PreprocessConfig(), tokenizer=None)
    rows = _folder_rows(source) if cfg.layout == "folder" else _dataset_rows(cfg, cols)
    summary = ImportSummary(0, 0, 0, 0, manifest=str(out / "manifest.jsonl"))
    ids = set(manifest.seen)
    bar = progress(desc="import", unit="row", disable=not cfg.progress)
    try:
        for row, r in rows:
            if cfg.limit is not None and row >= cfg.limit:
                break
            bar.update()
            if row in done:
                summary.already += 1
                continue
            try:
                item = _Row(row, r, cols, cfg, decoder, name)
                if item.id in ids:
                    raise BadRow(",".join(cols.id) or "id", f"duplicate id {item.id!r}")
            except BadRow as e:
                skipped.write({"source": name, "row": row, "column": e.column, "reason": e.reason})
                summary.skipped += 1
                continue
            manifest.write(_record(item, out, labels))
            ids.add(item.id)
            summary.written += 1
            summary.labelled += item.id in labels
    finally:
        bar.close()
        manifest.close()
        skipped.close()
    summary.unmatched_labels = sorted(set(labels) - ids)
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary


def _rows_done(out: Path, source: str) -> set[int]:
    """The rows of ``source`` an earlier run wrote or reported; other sources imported into the same folder
    keep their own rows."""
    from ..files import iter_jsonl

    done = set()
    for f, row in ((out / "manifest.jsonl", lambda r: r["meta"]), (out / "skipped.jsonl", lambda r: r)):
        if f.exists():
            done |= {row(r)["row"] for r in iter_jsonl(f) if row(r).get("source", source) == source}
    return done


def _record(item: _Row, out: Path, labels: dict[str, list[str]]) -> dict:
    """Write ``item``'s images (atomically, before its manifest line) and return its manifest record."""
    paths = {}
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.id)
    for role, (data, ext) in item.images.items():
        rel = f"images/{stem}_{role}.{ext}"
        with atomic_path(out / rel) as tmp:
            tmp.write_bytes(data)
        paths[role] = rel
    rec = {"id": item.id, "input_image": paths["input"], "output_image": paths["output"], "prompt": item.prompt,
           "labels": labels.get(item.id, []), "meta": item.meta}
    if "mask" in paths:
        rec["mask"] = paths["mask"]
    return rec
