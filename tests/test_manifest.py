"""Manifest reading and validation: every bad record is named by file, line and field."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from editguard.manifest import ManifestError, read_manifest
from editguard.model import default_taxonomy

LABELS = default_taxonomy().names


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in ("a_in.png", "a_out.png", "b_in.png", "b_out.png", "m.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    return tmp_path


def rec(i="a", **kw):
    base = {"id": i, "input_image": f"{i}_in.png", "output_image": f"{i}_out.png", "prompt": "make it blue",
            "labels": []}
    base.update(kw)
    return base


def write(root: Path, records, name="m.jsonl") -> Path:
    p = root / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return p


def problems(path: Path, **kw) -> list[tuple[int, str, str]]:
    with pytest.raises(ManifestError) as e:
        read_manifest(path, labels=LABELS, **kw)
    assert str(path) in str(e.value)
    return e.value.problems


def test_good_manifest_reads_every_record(root):
    recs = read_manifest(write(root, [rec("a", mask="m.png", meta={"src": "x"}), rec("b", labels=["sexual"])]),
                         labels=LABELS)
    assert [r.id for r in recs] == ["a", "b"]
    assert recs[0].mask == (root / "m.png").resolve() and recs[0].meta == {"src": "x"}
    assert recs[1].labels == ["sexual"] and recs[1].line == 2


@pytest.mark.parametrize(
    "bad, field, words",
    [
        (rec("a", input_image="missing.png"), "input_image", "file not found"),
        (rec("a", labels=["nudity"]), "labels", "unknown label 'nudity'"),
        (rec("a", output_image="../outside.png"), "output_image", "escapes the manifest's folder"),
        (rec("a", output_image="/etc/hostname"), "output_image", "escapes the manifest's folder"),
        ({k: v for k, v in rec("a").items() if k != "prompt"}, "prompt", "missing"),
        (rec("a", labels="sexual"), "labels", "must be a list"),
        (rec("a", meta=[1]), "meta", "must be an object"),
        (rec("a", extra=1), "extra", "unknown field"),
        ("{not json", "*", "not valid JSON"),
        (rec("a", id=""), "id", "non-empty string"),
    ],
)
def test_bad_record_names_line_and_field(root, bad, field, words):
    path = write(root, [rec("b"), bad])
    (line, fld, msg), = problems(path)
    assert (line, fld) == (2, field) and words in msg


def test_duplicate_id_names_both_lines(root):
    (line, fld, msg), = problems(write(root, [rec("a"), rec("b"), rec("a")]))
    assert (line, fld) == (3, "id") and "first on line 1" in msg


def test_every_problem_is_reported_not_just_the_first(root):
    probs = problems(write(root, [rec("a", labels=["x"]), rec("b", input_image="nope.png"), rec("a")]))
    assert [(ln, f) for ln, f, _ in probs] == [(1, "labels"), (2, "input_image"), (3, "id")]


def test_outside_root_allowed_on_request(root, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    Image.new("RGB", (8, 8)).save(other / "x.png")
    path = write(root, [rec("a", output_image=str(other / "x.png"))])
    problems(path)
    assert read_manifest(path, labels=LABELS, allow_outside_root=True)[0].output_image == other / "x.png"


def test_labels_optional_for_scoring(root):
    path = write(root, [{k: v for k, v in rec("a").items() if k != "labels"}])
    problems(path)
    r, = read_manifest(path, labels=LABELS, require_labels=False)
    assert r.has_labels is False


def test_csv_and_parquet_have_the_same_columns(root):
    rows = [rec("a", labels=["sexual", "minors"], meta={"s": 1}), rec("b", mask="m.png")]
    with open(root / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "input_image", "output_image", "prompt", "mask", "labels", "meta"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "labels": "|".join(r["labels"]), "meta": json.dumps(r.get("meta", {}))})
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{**r, "meta": json.dumps(r.get("meta", {})), "mask": r.get("mask")}
                                         for r in rows]), root / "m.parquet")
    for name in ("m.csv", "m.parquet"):
        a, b = read_manifest(root / name, labels=LABELS)
        assert a.labels == ["minors", "sexual"] and a.meta == {"s": 1}
        assert b.mask == (root / "m.png").resolve() and a.line < b.line


def test_bad_csv_row_names_its_line(root):
    (root / "bad.csv").write_text("id,input_image,output_image,prompt,labels\na,a_in.png,a_out.png,x,\n"
                                  "b,b_in.png,gone.png,y,sexual\n")
    (line, fld, _), = problems(root / "bad.csv")
    assert (line, fld) == (3, "output_image")
