"""Real editing corpora into manifests, and splits that keep each source photo in one split.

The fixtures are written here in each corpus's published schema (its dataset card's features:
Hugging Face ``Image`` columns are structs of encoded ``bytes`` and ``path``), as the hub's Parquet
files and as ``save_to_disk`` folders, with a few rows of real encoded photo-like images.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from editguard.cli import main
from editguard.manifest import read_manifest
from editguard.training.corpora import CORPORA, ImportConfig, import_corpus, parse_columns
from editguard.training.splits import SplitConfig, hamming, phash, split_manifest

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets.Image's Arrow storage
SCHEMAS = {  # each corpus's features, from its dataset card (osunlp/MagicBrush, timbrooks/..., UCSC-VLAA/HQ-Edit)
    "magicbrush": {"img_id": "string", "turn_index": "int32", "source_img": "image", "mask_img": "image",
                   "instruction": "string", "target_img": "image"},
    "instructpix2pix": {"original_prompt": "string", "original_image": "image", "edit_prompt": "string",
                        "edited_prompt": "string", "edited_image": "image"},
    "hq-edit": {"input": "string", "input_image": "image", "edit": "string", "inverse_edit": "string",
                "output": "string", "output_image": "image"},
}


def photo(seed: int, size: tuple[int, int] = (120, 96)) -> Image.Image:
    """A photo-like image: a drawn scene with uneven light and sensor noise."""
    from editguard.training.synth.realism import photo_finish
    from editguard.training.synth.scene import IID_STYLES, random_scene, render

    img = photo_finish(render(random_scene(np.random.default_rng(seed), IID_STYLES), max(size)), seed)
    return img.resize(size)


def encoded(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}) | kw)
    return buf.getvalue()


def _hf_table(corpus: str, rows: list[dict]) -> pa.Table:
    """Rows in the corpus's schema, with the ``huggingface`` metadata that `datasets` writes."""
    kinds = SCHEMAS[corpus]
    arrow = {"string": pa.string(), "int32": pa.int32(), "image": IMAGE}
    features = {k: {"_type": "Image"} if t == "image" else {"dtype": t, "_type": "Value"} for k, t in kinds.items()}
    schema = pa.schema([(k, arrow[t]) for k, t in kinds.items()],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    cells = {k: [({"bytes": r[k], "path": None} if kinds[k] == "image" and r[k] is not None else r[k]) for r in rows]
             for k in kinds}
    return pa.table(cells, schema=schema)


def save_to_disk(folder: Path, splits: dict[str, pa.Table]) -> Path:
    """A DatasetDict as `save_to_disk` leaves it: dataset_dict.json, and per split an Arrow IPC stream named
    in state.json, beside dataset_info.json."""
    folder.mkdir(parents=True)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for name, table in splits.items():
        d = folder / name
        d.mkdir()
        with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as sink, \
                pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
        (d / "dataset_info.json").write_text(json.dumps({"features": features, "splits": {name: {}}}))
        (d / "state.json").write_text(json.dumps({
            "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0123456789abcdef",
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
            "_split": name}))
    return folder


def hub_parquet(folder: Path, table: pa.Table, parts: int = 2) -> Path:
    """The table as the hub publishes it: data/train-0000N-of-0000M.parquet."""
    (folder / "data").mkdir(parents=True)
    step = -(-table.num_rows // parts)
    for k in range(parts):
        pq.write_table(table.slice(k * step, step), folder / "data" / f"train-{k:05d}-of-{parts:05d}.parquet")
    return folder


def corpus_rows(corpus: str, n: int = 5) -> list[dict]:
    rows = []
    for i in range(n):
        src, out = photo(i), photo(i).rotate(3)
        if corpus == "magicbrush":
            mask = Image.new("L", src.size, 0)
            mask.paste(255, (20, 20, 60, 60))
            rows.append({"img_id": str(1000 + i // 2), "turn_index": 1 + i % 2, "source_img": encoded(src, "PNG"),
                         "mask_img": encoded(mask, "PNG"), "instruction": f"put a hat on him {i}",
                         "target_img": encoded(out, "PNG")})
        elif corpus == "instructpix2pix":
            rows.append({"original_prompt": "a photo of a man", "original_image": encoded(src),
                         "edit_prompt": f"make it winter {i}", "edited_prompt": "a photo of a man in snow",
                         "edited_image": encoded(out)})
        else:
            rows.append({"input": "a man at a desk", "input_image": encoded(src, "PNG"), "edit": f"add a lamp {i}",
                         "inverse_edit": "remove the lamp", "output": "a man at a desk with a lamp",
                         "output_image": encoded(out, "PNG")})
    return rows


@pytest.mark.parametrize("corpus, form", [("magicbrush", "save_to_disk"), ("instructpix2pix", "parquet"),
                                          ("hq-edit", "parquet")])
def test_named_corpora_import_from_their_published_files(tmp_path, corpus, form, read_jsonl):
    rows = corpus_rows(corpus)
    table = _hf_table(corpus, rows)
    if form == "save_to_disk":
        source = save_to_disk(tmp_path / "src", {"train": table, "dev": table.slice(0, 2)})
    else:
        source = hub_parquet(tmp_path / "src", table)
    s = import_corpus(ImportConfig(source=str(source), out=str(tmp_path / "out"), corpus=corpus, split="train",
                                   progress=False))
    assert (s.written, s.skipped) == (5, 0)
    records = read_manifest(tmp_path / "out" / "manifest.jsonl")  # a valid manifest
    cols = CORPORA[corpus]
    for r, row in zip(records, rows):
        assert r.labels == [] and r.meta["source"] == corpus  # public edits come in as safe
        assert r.input_image.read_bytes() == row[cols.input]["bytes"] if isinstance(row[cols.input], dict) \
            else r.input_image.read_bytes() == row[cols.input]  # the original bytes, as published
        assert r.output_image.read_bytes() == row[cols.output] and r.prompt == row[cols.prompt]
        assert (r.mask is not None) == (corpus == "magicbrush")
    if corpus == "magicbrush":
        assert [r.id for r in records][:2] == ["magicbrush-1000-1", "magicbrush-1000-2"]
        assert records[1].meta["img_id"] == "1000" and records[1].meta["turn_index"] == 2
    assert read_jsonl(tmp_path / "out" / "skipped.jsonl") == []


def test_bad_rows_are_reported_with_row_and_column_and_the_import_resumes(tmp_path, read_jsonl):
    rows = corpus_rows("magicbrush", 6)
    rows[1]["target_img"] = b"\x89PNG\r\n\x1a\ntruncated"
    rows[2]["instruction"] = "  "
    rows[3]["mask_img"] = encoded(Image.new("L", (7, 9)), "PNG")
    rows[4]["source_img"] = None
    source = save_to_disk(tmp_path / "src", {"train": _hf_table("magicbrush", rows)})
    cfg = dict(source=str(source), out=str(tmp_path / "out"), corpus="magicbrush", progress=False)
    first = import_corpus(ImportConfig(**cfg, limit=3))
    assert (first.written, first.skipped) == (1, 2)
    again = import_corpus(ImportConfig(**cfg))  # a rerun, as after a kill: nothing twice
    assert (again.written, again.skipped, again.already) == (1, 2, 3)
    skipped = {r["row"]: r for r in read_jsonl(tmp_path / "out" / "skipped.jsonl")}
    assert skipped[1]["column"] == "target_img" and "truncated image" in skipped[1]["reason"]
    assert skipped[2] == {"source": "magicbrush", "row": 2, "column": "instruction", "reason": "empty prompt"}
    assert skipped[3]["column"] == "mask_img" and "mask is 7x9" in skipped[3]["reason"]
    assert skipped[4] == {"source": "magicbrush", "row": 4, "column": "source_img", "reason": "no image"}
    assert [r["meta"]["row"] for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")] == [0, 5]
    # the command: exit 3 (rows were skipped) and a summary a script can read
    assert main(["import", str(source), "--corpus", "magicbrush", "--out", str(tmp_path / "cli"), "--no-progress",
                 "--json", str(tmp_path / "import.json")]) == 3
    summary = json.loads((tmp_path / "import.json").read_text())
    assert (summary["written"], summary["skipped"]) == (2, 4) and summary["skipped_file"].endswith("skipped.jsonl")
    # a second source into the same folder keeps its own rows (it is not "already imported")
    other = import_corpus(ImportConfig(**{**cfg, "name": "magicbrush-dev"}))
    assert (other.written, other.skipped, other.already) == (2, 4, 0)
    assert len(read_manifest(tmp_path / "out" / "manifest.jsonl")) == 4


def test_any_dataset_by_its_columns_and_labels_joined_by_id(tmp_path, capsys):
    rows = [{"request_id": f"r{i}", "before": {"bytes": encoded(photo(i)), "path": None}, "request": f"edit {i}",
             "after": {"bytes": encoded(photo(i + 50)), "path": None}} for i in range(4)]
    with pa.OSFile(str(tmp_path / "logs.arrow"), "wb") as sink:
        t = pa.Table.from_pylist(rows)
        with pa.ipc.new_file(sink, t.schema) as w:
            w.write_table(t)
    (tmp_path / "reviewed.csv").write_text("id,labels\nmine-r1,identity_alteration|unintended_change\nmine-r9,sexual\n")
    assert main(["import", str(tmp_path / "logs.arrow"), "--columns", "input=before,prompt=request,output=after,"
                 "id=request_id", "--name", "mine", "--labels", str(tmp_path / "reviewed.csv"),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "imported 4 rows (1 with labels)" in out.out and "1 ids in" in out.err
    labels = {r.id: r.labels for r in read_manifest(tmp_path / "out" / "manifest.jsonl")}
    assert labels == {"mine-r0": [], "mine-r1": ["identity_alteration", "unintended_change"], "mine-r2": [],
                      "mine-r3": []}
    with pytest.raises(ValueError, match="names no output column"):
        parse_columns("input=a,prompt=b")
    with pytest.raises(ValueError, match="has no column 'nope'"):
        import_corpus(ImportConfig(source=str(tmp_path / "logs.arrow"), out=str(tmp_path / "o2"), progress=False,
                                   columns=parse_columns("input=nope,prompt=request,output=after")))
    (tmp_path / "bad.csv").write_text("id,labels\nmine-r1,violence|gore\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: unknown label\(s\) \['violence', 'gore'\]"):
        import_corpus(ImportConfig(source=str(tmp_path / "logs.arrow"), out=str(tmp_path / "o3"), name="mine",
                                   columns=parse_columns("input=before,prompt=request,output=after"),
                                   labels=str(tmp_path / "bad.csv"), progress=False))


def test_a_folder_of_edits(tmp_path, monkeypatch):
    for i in range(3):
        d = tmp_path / "edits" / f"case{i}"
        d.mkdir(parents=True)
        photo(i).save(d / "input.jpg")
        photo(i + 9).save(d / "output.png")
        (d / "prompt.txt").write_text(f"make it brighter {i}\n")
    Image.new("L", photo(0).size, 255).save(tmp_path / "edits" / "case0" / "mask.png")
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "labels"], ["case2", '["violence_gore"]']])
    monkeypatch.chdir(tmp_path)  # relative paths, as typed at a shell
    s = import_corpus(ImportConfig(source="edits/", out="out", layout="folder", labels="labels.csv", progress=False))
    assert (s.written, s.labelled) == (3, 1)
    recs = {r.id: r for r in read_manifest(tmp_path / "out" / "manifest.jsonl")}
    assert recs["case2"].labels == ["violence_gore"] and recs["case0"].mask is not None
    assert recs["case1"].prompt == "make it brighter 1" and recs["case1"].meta["source"] == "edits"


def _photo_family(root: Path, k: int) -> list[dict]:
    """One source photo edited several ways: a plain edit, the same photo re-encoded and resized, and a
    second turn whose input is the first turn's output (MagicBrush-like)."""
    src = photo(k, (128, 96))
    first, second = src.rotate(2), src.rotate(2).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    files = {"src.png": encoded(src, "PNG"), "src_q60.jpg": encoded(src, "JPEG", quality=60),
             "src_small.jpg": encoded(src.resize((96, 72)), "JPEG"), "t1.png": encoded(first, "PNG"),
             "t2.png": encoded(second, "PNG"), "other.png": encoded(photo(k + 500, (128, 96)), "PNG")}
    for name, data in files.items():
        (root / "images" / f"{k}_{name}").write_bytes(data)
    im = lambda n: f"images/{k}_{n}"  # noqa: E731
    labels = [[], ["violence_gore"], [], ["identity_alteration"]][k % 4]
    return [{"id": f"p{k}-a", "input_image": im("src.png"), "output_image": im("t1.png"), "prompt": "add a hat",
             "labels": labels, "meta": {"photo": k}},
            {"id": f"p{k}-b", "input_image": im("src_q60.jpg"), "output_image": im("other.png"),
             "prompt": "swap the background", "labels": [], "meta": {"photo": k}},
            {"id": f"p{k}-c", "input_image": im("src_small.jpg"), "output_image": im("t1.png"),
             "prompt": "make it sunny", "labels": labels, "meta": {"photo": k}},
            {"id": f"p{k}-d", "input_image": im("t1.png"), "output_image": im("t2.png"), "prompt": "mirror it",
             "labels": [], "meta": {"photo": k}}]


def test_split_never_puts_one_source_photo_in_two_splits(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    rows = [r for k in range(40) for r in _photo_family(tmp_path, k)]
    rows.append(dict(rows[0], id="p0-a-again"))  # the same triple scraped twice
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert hamming(phash(tmp_path / "images/0_src.png"), phash(tmp_path / "images/0_src_small.jpg")) <= 10
    report = split_manifest(SplitConfig(manifest=str(manifest), progress=False))
    splits = {name: read_manifest(tmp_path / f"{name}.jsonl") for name in ("train", "val", "test")}
    where = {r.meta["photo"]: set() for r in read_manifest(manifest)}
    for name, recs in splits.items():
        for r in recs:
            where[r.meta["photo"]].add(name)
    assert all(len(s) == 1 for s in where.values()), "a source photo landed in two splits"
    assert report["leaks"] == 0 and report["naive_random_split_leaks"] > 20
    assert report["groups"] == 40 and sum(len(r) for r in splits.values()) == len(rows)
    sizes = {n: len(r) for n, r in splits.items()}
    assert 120 <= sizes["train"] <= 140 and sizes["val"] >= 12 and sizes["test"] >= 12
    for name in ("val", "test"):  # stratified: each split holds some of each label
        assert {"violence_gore", "identity_alteration", "safe"} <= set(report["splits"][name]["labels"])
    assert ["p0-a", "p0-a-again"] in report["near_duplicate_triples"]
    # a key the user gives joins what the images alone would not
    assert main(["split", str(manifest), "--group-by", "meta.photo", "--max-distance", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "leaks (items outside train whose group is in train): 0" in out and "40 groups" in out
