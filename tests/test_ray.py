"""``editguard score --engine ray``: a Ray Data actor pool on a local Ray cluster gives the
single-process scorer's results, failures and resume, with either backend."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray", reason="the [ray] extra is not installed: pip install 'editguard[ray]'")

from editguard.cli import main  # noqa: E402
from editguard.clients.results import read_results  # noqa: E402
from editguard.clients.score import ScoreConfig, score  # noqa: E402


def _rows(path) -> dict[str, dict]:
    rows = read_results(path)
    assert len(rows) == len({r["id"] for r in rows}), "an id was written twice"
    return {r["id"]: r for r in rows}


def _assert_same(a: dict[str, dict], b: dict[str, dict], atol: float) -> None:
    assert a.keys() == b.keys()
    for k, ra in a.items():
        rb = b[k]
        assert list(ra) == list(rb)  # same columns, same order
        for col, v in ra.items():
            if col.startswith(("score_", "cumulative_score_")):
                assert v == pytest.approx(rb[col], abs=atol), (k, col)
            elif col != "model_version":
                assert v == rb[col], (k, col)


def test_ray_engine_matches_the_local_scorer_and_resumes_by_id(repository, synth_sets, tmp_path,
                                                               manifest_with_a_bad_item, read_jsonl, subset_manifest):
    manifest, bad_id = manifest_with_a_bad_item(synth_sets["test"], tmp_path / "m.jsonl", 300, bad=11)
    common = ["--repository", str(repository), "--allow-outside-root", "--no-progress"]
    assert main(["score", str(manifest), "--out", str(tmp_path / "local"), *common,
                 "--json", str(tmp_path / "local.json")]) == 3  # 3: some items failed
    summary = json.loads((tmp_path / "local.json").read_text())
    assert (summary["scored"], summary["errors"]) == (299, 1) and summary["errors_file"].endswith("local.errors.jsonl")
    # the CLI as a user runs it: Ray is started on the local machine for the run, 2 actors, then stopped
    assert main(["score", str(manifest), "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2",
                 "--batch-size", "16", *common]) == 3
    local, ray_rows = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(ray_rows) == 299 and bad_id not in ray_rows
    _assert_same(ray_rows, local, atol=1e-6)
    errs = {e["id"]: e for e in read_jsonl(tmp_path / "ray.errors.jsonl")}
    assert errs.keys() == {bad_id} and errs == {e["id"]: e for e in read_jsonl(tmp_path / "local.errors.jsonl")}

    # exactly once by id: results of an earlier (here: local, partial) run are kept, the rest are added
    first = subset_manifest(manifest, 120, tmp_path.name)
    part = score(ScoreConfig(manifest=str(first), out=str(tmp_path / "mixed"), repository=str(repository),
                             allow_outside_root=True, progress=False))
    assert (part.scored, part.errors) == (119, 1)
    rest = score(ScoreConfig(manifest=str(manifest), out=str(tmp_path / "mixed"), repository=str(repository),
                             allow_outside_root=True, progress=False, engine="ray", workers=1))
    assert (rest.skipped, rest.scored, rest.errors, rest.total_rows) == (119, 180, 1, 299)  # the failure is retried
    _assert_same(_rows(tmp_path / "mixed"), local, atol=1e-6)


def test_ray_actors_can_score_through_triton(triton, repository, synth_sets, tmp_path, manifest_with_a_bad_item,
                                             read_jsonl):
    manifest, bad_id = manifest_with_a_bad_item(synth_sets["val"], tmp_path / "m.jsonl", 64, bad=5)
    kw = dict(manifest=str(manifest), allow_outside_root=True, progress=False)
    local = score(ScoreConfig(out=str(tmp_path / "local"), repository=str(repository), **kw))
    served = score(ScoreConfig(out=str(tmp_path / "served"), server=triton.grpc_url, engine="ray", workers=2,
                               concurrency=4, **kw))
    assert (served.scored, served.errors) == (local.scored, local.errors) == (63, 1)
    _assert_same(_rows(tmp_path / "served"), _rows(tmp_path / "local"), atol=1e-4)
    err = read_jsonl(tmp_path / "served.errors.jsonl")[0]
    assert err["id"] == bad_id and err["error"] == "InvalidInputError" and "OUTPUT_IMAGE" in err["reason"]


def test_ray_scores_sessions_as_the_local_engine_does(repository, tmp_path):
    """A manifest of edit sessions: Ray scores each turn's step triple and its cumulative triple (the origin,
    the turn prompts joined, the turn's output, the union of the turns' masks) and writes the same rows as the
    local engine, cumulative scores and labels included."""
    from editguard.training.synth.sessions import generate_sessions

    manifest = generate_sessions(tmp_path / "s", 12, 5, "iid", image_size=96, workers=1, progress=False, clean=True)
    kw = dict(manifest=str(manifest), repository=str(repository), progress=False)
    local = score(ScoreConfig(out=str(tmp_path / "local.jsonl"), **kw))
    on_ray = score(ScoreConfig(out=str(tmp_path / "ray.jsonl"), engine="ray", workers=2, batch_size=8, **kw))
    assert on_ray.scored == local.scored == sum(1 for _ in manifest.open()) and on_ray.errors == 0
    rows = _rows(tmp_path / "ray.jsonl")
    assert any(r["turn"] > 1 and r["cumulative_score_sexual"] != r["score_sexual"] for r in rows.values())
    _assert_same(rows, _rows(tmp_path / "local.jsonl"), atol=1e-6)
