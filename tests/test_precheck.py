"""The check before generation, served as editguard_precheck next to editguard, on a real Triton."""

from __future__ import annotations

import asyncio
import io
import json
import shutil

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from PIL import Image

from editguard.clients import EditGuardClient, Verdict
from editguard.clients.aio import AsyncEditGuardClient
from editguard.clients.errors import InvalidInputError
from editguard.export.writer import ExportConfig, export_version
from editguard.model.model_dir import load_model_dir
from editguard.model.preprocess import collate
from editguard.model.repository import PRECHECK, PRECHECK_CLASSIFIER, versions
from editguard.serving.triton import TritonServer, free_port


@pytest.fixture(scope="module")
def precheck_dir(synth_sets, tmp_path_factory):
    from editguard.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "precheck"
    train(TrainConfig(train=str(synth_sets["train"]), val=str(synth_sets["val"]), out=str(out), preset="tiny",
                      epochs=3, patience=10, progress=False, ablation="precheck"))
    return out


@pytest.fixture(scope="module")
def served(tiny_model_dir, precheck_dir, tmp_path_factory):
    """A repository with the triple model and the pre-check, each at version 1, served."""
    repo = tmp_path_factory.mktemp("precheck-repo") / "repo"
    export_version(ExportConfig(model_dir=str(tiny_model_dir), repository=str(repo)))
    r = export_version(ExportConfig(model_dir=str(precheck_dir), repository=str(repo)))
    assert r.model == PRECHECK and versions(repo, PRECHECK) == [1] and versions(repo, PRECHECK_CLASSIFIER) == [1]
    server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                          admin_key="precheck-test-key")
    server.start(timeout=180)
    yield server, repo
    server.stop()


def _decoded(t: dict):
    return [Image.open(io.BytesIO(t[k])) for k in ("input", "mask")]


def test_precheck_verdicts_on_every_path(served, precheck_dir, synth_sets, triple_bytes):
    server, _ = served
    triples = triple_bytes(synth_sets["test"], 6)
    net, pre = load_model_dir(precheck_dir)
    net.eval()
    batch = collate([pre.triple(t["input"], t["prompt"], None, t["mask"]) for t in triples])
    assert "output_image" not in batch
    with torch.no_grad():
        expected = torch.sigmoid(net(**{k: torch.from_numpy(v) for k, v in batch.items()})).numpy()
    with EditGuardClient(server.grpc_url) as guard:
        by_bytes = [guard.precheck(t["input"], t["prompt"], t["mask"]) for t in triples]
        by_pixels = [guard.precheck(*_decoded(t)[:1], t["prompt"], _decoded(t)[1]) for t in triples]
        many = dict(guard.precheck_many([(t["id"], t["input"], t["prompt"], t["mask"]) for t in triples],
                                        concurrency=3))
        triple = guard.classify(triples[0]["input"], triples[0]["prompt"], triples[0]["output"], triples[0]["mask"])
    assert all(v.model_name == PRECHECK and v.model_version == "1" for v in by_bytes + by_pixels)
    np.testing.assert_allclose([list(v.scores.values()) for v in by_bytes], expected, atol=1e-5)
    np.testing.assert_allclose([list(v.scores.values()) for v in by_pixels],
                               [list(v.scores.values()) for v in by_bytes], atol=1e-6)
    assert sorted(many) == sorted(t["id"] for t in triples) and all(isinstance(v, Verdict) for v in many.values())
    assert triple.model_name == "editguard"  # the triple model serves beside it

    async def aio():
        async with AsyncEditGuardClient(server.grpc_url) as guard:
            one = await guard.precheck(triples[0]["input"], triples[0]["prompt"], triples[0]["mask"])
            rest = [x async for x in guard.precheck_many(
                [{"id": t["id"], "input_image": t["input"], "prompt": t["prompt"]} for t in triples[1:3]])]
            return one, rest

    one, rest = asyncio.run(aio())
    assert one.scores == pytest.approx(by_bytes[0].scores, abs=1e-6) and len(rest) == 2


def test_precheck_refuses_what_it_cannot_take(served, synth_sets, triple_bytes):
    server, _ = served
    t = triple_bytes(synth_sets["test"], 1)[0]

    def request(**fields):
        inputs = []
        for name, value in fields.items():
            x = grpcclient.InferInput(name, [1, 1], "BYTES")
            x.set_data_from_numpy(np.array([[value]], dtype=np.object_))
            inputs.append(x)
        return inputs

    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        for fields, words in (
                ({"INPUT_IMAGE": t["input"], "OUTPUT_IMAGE": t["output"], "PROMPT": b"x"}, "unexpected inference input 'OUTPUT_IMAGE'"),
                ({"INPUT_IMAGE": b"\x89PNG\r\n\x1a\nbroken", "PROMPT": b"x"}, "INPUT_IMAGE"),
                ({"PROMPT": b"x"}, "needs INPUT_IMAGE")):
            with pytest.raises(Exception) as e:
                c.infer(PRECHECK, request(**fields))
            assert "INVALID_ARGUMENT" in str(e.value.status()) and words in str(e.value), str(e.value)
        ok = c.infer(PRECHECK, request(INPUT_IMAGE=t["input"], PROMPT=t["prompt"].encode()))
        assert ok.as_numpy("SCORES").shape == (1, 7)
    with EditGuardClient(server.grpc_url) as guard, pytest.raises(InvalidInputError, match="use precheck"):
        guard.classify(t["input"], t["prompt"], None)


def test_precheck_roll_out_score_and_calibrate(served, precheck_dir, synth_sets, tmp_path, monkeypatch, read_jsonl,
                                               subset_manifest, triple_bytes):
    from editguard.cli import main

    server, repo = served
    monkeypatch.setenv("EDITGUARD_ADMIN_KEY", server.admin_key)
    t = triple_bytes(synth_sets["test"], 1)[0]
    assert main(["export", str(precheck_dir), "--repository", str(repo), "--server", server.grpc_url]) == 0
    with EditGuardClient(server.grpc_url) as guard:
        assert guard.precheck(t["input"], t["prompt"], t["mask"]).model_version == "2"
        assert guard.classify(t["input"], t["prompt"], t["output"]).model_version == "1"  # untouched
    manifest = subset_manifest(synth_sets["val"], 40, "precheck")
    results = tmp_path / "pre.jsonl"
    assert main(["score", str(manifest), "--out", str(results), "--server", server.grpc_url, "--precheck",
                 "--no-progress"]) == 0
    rows = read_jsonl(results)
    assert len(rows) == 40 and {r["model_version"] for r in rows} == {"2"}
    # the same scores in-process from the repository
    local = tmp_path / "pre-local.jsonl"
    assert main(["score", str(manifest), "--out", str(local), "--repository", str(repo), "--precheck",
                 "--no-progress"]) == 0
    by_id = {r["id"]: r for r in read_jsonl(local)}
    cat = next(k for k in rows[0] if k.startswith("score_"))
    assert max(abs(r[cat] - by_id[r["id"]][cat]) for r in rows) < 1e-5
    assert main(["calibrate", str(results), "--target", "precision=0.5", "--allow-unmet", "--bootstrap", "20",
                 "--out", str(tmp_path / "th.json"), "--model", PRECHECK, "--install", str(repo)]) == 0
    installed = json.loads((repo / PRECHECK / "2" / "thresholds.json").read_text())
    assert installed["model_version"] == "2" and not (repo / "editguard" / "2").exists()
    # installed thresholds change the pre-check's verdicts without a reload
    doc = dict(installed, categories={c: dict(v, threshold=0.0) for c, v in installed["categories"].items()})
    (repo / PRECHECK / "2" / "thresholds.json").write_text(json.dumps(doc))
    with EditGuardClient(server.grpc_url) as guard:
        assert guard.precheck(t["input"], t["prompt"]).unsafe
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_precheck_cannot_be_explained(precheck_dir, tmp_path):
    """Explanations need both images: `export --explain` and the Explainer refuse a pre-check, saying why."""
    from editguard.export.writer import ExportConfig, export_version
    from editguard.model.explain import Explainer

    with pytest.raises(ValueError, match="pre-check"):
        export_version(ExportConfig(model_dir=str(precheck_dir), repository=str(tmp_path / "r"), explain=True))
    with pytest.raises(ValueError, match="sees both images and the prompt"):
        Explainer.from_model_dir(precheck_dir)
