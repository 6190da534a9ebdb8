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


def test_sessions_read_with_their_turns_and_their_cumulative_triples(root):
    from editguard.manifest import sessions
    from editguard.model.session import cumulative_triples

    Image.new("L", (8, 8), 0).save(root / "m2.png")
    path = write(root, [rec("b", session="s1", turn=2, prompt="a bit more", cumulative_labels=["sexual"], mask="m.png"),
                        rec("a", session="s1", turn=1, prompt="shorter sleeves", mask="m2.png"),
                        {**rec("c"), "input_image": "b_in.png", "output_image": "b_out.png"}])
    recs = read_manifest(path, labels=LABELS)
    (s1,) = sessions(recs).values()
    assert [r.id for r in s1] == ["a", "b"] and recs[2].session is None
    (cum,) = cumulative_triples(recs)
    assert (cum.id, cum.input_image, cum.output_image) == ("b", s1[0].input_image, s1[1].output_image)
    assert cum.prompt == "shorter sleeves; a bit more" and cum.labels == ["sexual"] and cum.mask is not None


@pytest.mark.parametrize(
    "rows, field, words",
    [
        ([rec("a", session="s", turn=0)], "turn", "whole number from 1"),
        ([rec("a", session="s", turn="1")], "turn", "whole number from 1"),
        ([rec("a", turn=1)], "session", "non-empty session id"),
        ([rec("a", cumulative_labels=["sexual"])], "cumulative_labels", "add 'session' and 'turn'"),
        ([rec("a", session="s", turn=1, cumulative_labels=["nudity"])], "cumulative_labels", "unknown label"),
        ([rec("a", session="s", turn=1), rec("b", session="s", turn=3)], "turn", "lacks turn(s) [2]"),
        ([rec("a", session="s", turn=1), rec("b", session="s", turn=1)], "turn", "has turn 1 twice"),
    ],
)
def test_bad_session_fields_are_named(root, rows, field, words):
    (line, fld, msg), *_ = problems(write(root, rows))
    assert fld == field and words in msg


def test_split_keeps_a_session_in_one_split(few_triples, tmp_path):
    from editguard.training.splits import SplitConfig, split_manifest

    rows = [json.loads(x) for x in Path(few_triples).read_text().splitlines()]
    root = Path(few_triples).parent
    for k, r in enumerate(rows):  # 8 sessions of 3 turns, over images that do not look alike
        r.update(session=f"s{k // 3}", turn=k % 3 + 1, input_image=str(root / r["input_image"]),
                 output_image=str(root / r["output_image"]), mask=str(root / r["mask"]))
    manifest = tmp_path / "sessions.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = split_manifest(SplitConfig(str(manifest), fractions=(0.5, 0.25, 0.25), allow_outside_root=True,
                                        progress=False))
    where: dict[str, set] = {}
    for name in ("train", "val", "test"):
        for r in read_manifest(tmp_path / f"{name}.jsonl", allow_outside_root=True):
            where.setdefault(r.session, set()).add(name)
            assert r.turn is not None
    assert len(where) == 8 and all(len(s) == 1 for s in where.values())
    assert report["leaks"] == 0 and "session" in report["grouped_by"]
