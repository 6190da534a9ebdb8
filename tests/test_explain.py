"""Explanations: where in the image, and which part of the triple moved the score (`editguard explain`)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from editguard.model.explain import METHODS, PARTS, Explainer, _shapley


def test_shapley_values_add_up_to_the_whole():
    rng = np.random.default_rng(1)
    values = rng.normal(size=8)
    phi = _shapley(values)
    assert set(phi) == set(PARTS)
    assert sum(phi.values()) == pytest.approx(values[7] - values[0])
    additive = np.array([sum(w for i, w in enumerate((1.0, 2.0, 4.0)) if k >> i & 1) for k in range(8)])
    assert _shapley(additive) == pytest.approx({"output": 1.0, "change": 2.0, "prompt": 4.0})


@pytest.mark.parametrize("method", METHODS)
def test_the_heatmap_points_at_a_planted_change(tiny_model_dir, tmp_path, planted, explained_on_the_patch, method):
    """Attribution is to changed pixels only: every peak lies on the planted patch, at the input image's
    size and coordinates (a 128x96 photo, letterboxed for the network), and the box overlaps it."""
    src, out, box = planted(tmp_path)
    explained_on_the_patch(Explainer.from_model_dir(tiny_model_dir, method=method), src, out, box, (128, 96), 4)


def test_a_1024_px_upload_is_explained_in_its_own_pixels(tiny_model_dir, tmp_path, planted):
    """The network sees a 1024 x 768 upload at 64 px; the heatmap, peak and box come back at the upload's
    size, on the planted change (one network pixel is 16 of the upload's)."""
    src, out, (x0, y0, x1, y1) = planted(tmp_path, box=(320, 192, 576, 448), size=(1024, 768))
    explainer = Explainer.from_model_dir(tiny_model_dir)
    found = [e for e in explainer.explain(src, "make the wall red", out, categories=explainer.labels) if e.peak]
    assert found, "no category's score rests on the change"
    margin = 32
    for e in found:
        assert e.heatmap.shape == (768, 1024) and e.heatmap.max() == 255
        px, py = e.peak
        assert x0 - margin <= px < x1 + margin and y0 - margin <= py < y1 + margin, (e.category, e.peak)
        bx0, by0, bx1, by1 = e.box
        assert 0 <= bx0 < x1 and x0 < bx1 <= 1024 and 0 <= by0 < y1 and y0 < by1 <= 768, e.box


def test_nothing_changed_points_nowhere(tiny_model_dir, tmp_path, planted):
    src, _, _ = planted(tmp_path)
    explainer = Explainer.from_model_dir(tiny_model_dir)
    for e in explainer.explain(src, "remove her clothes", src, categories=["sexual"]):
        assert e.peak is None and e.box is None and e.heatmap.max() == 0
        assert e.shares["output"] == 0 and e.shares["change"] == 0  # an unchanged output carries nothing


def test_the_parts_combine_as_the_network_scores(few_triples, tmp_path):
    """Explanations run each tower once per image and per change, then combine the embeddings for the 8
    ablations and the path steps. With a pair tower and a grown branch with towers of its own, the Shapley
    values and the gradients equal those of the network's own forward run on each ablated triple."""
    import torch

    from editguard.manifest import read_manifest
    from editguard.model.config import preset_config
    from editguard.model.model_dir import create_model
    from editguard.model.preprocess import collate
    from editguard.model.taxonomy import Taxonomy, default_taxonomy
    from editguard.training.grow import grow_network

    records = read_manifest(few_triples, require_labels=False)
    net, pre = create_model(preset_config("tiny", pair_encoder="test_resnet"), tmp_path,
                            prompts=[r.prompt for r in records])
    names = default_taxonomy().names + ["extra"]
    net = grow_network(net, Taxonomy.from_dict({"categories": names}), prior=np.array([0.05]), towers=True).eval()
    assert net.use_pair and len(net.tower_parts) == 2
    explainer = Explainer(net, pre)
    r = records[0]
    batch = {k: torch.from_numpy(v) for k, v in collate([pre.triple(r.input_image, r.prompt, r.output_image,
                                                                      r.mask)]).items()}
    src, out, mask = batch["input_image"], batch["output_image"], batch["mask"]
    with torch.no_grad():
        text = explainer._embeddings(batch)
        subsets = [net(input_image=src, output_image=out if k & 1 else src, mask=mask,
                       prompt_embedding=text[0 if k & 4 else 1][None], pair_output_image=out if k & 2 else src)[0]
                   for k in range(8)]
    found = explainer.explain(r.input_image, r.prompt, r.output_image, r.mask, categories=names)
    for col, e in enumerate(found):
        expected = _shapley(np.array([float(v[col]) for v in subsets]))
        assert e.contributions == pytest.approx(expected, abs=1e-4), e.category
        assert e.score == pytest.approx(float(torch.sigmoid(subsets[7][col])), abs=1e-5)
    # integrated gradients: the same gradients as through the whole network
    steps = explainer.steps
    path = (src.float() + ((torch.arange(steps) + 0.5) / steps).view(-1, 1, 1, 1) * (out.float() - src.float()))
    path.requires_grad_(True)
    logits = net(input_image=src.expand(steps, -1, -1, -1), output_image=path, mask=mask.expand(steps, -1, -1),
                 prompt_embedding=text[0:1].expand(steps, *text.shape[1:]))
    columns = [0, len(names) - 1]  # a category of the main head and the branch's
    maps = explainer._integrated_gradients(batch, text[0:1], columns)
    for col, m in zip(columns, maps):
        (grad,) = torch.autograd.grad(logits[:, col].sum(), path, retain_graph=True)
        expected = ((out.float() - src.float()) * grad.mean(0, keepdim=True)).sum(-1)[0].clamp_min(0)
        np.testing.assert_allclose(m, expected.numpy(), rtol=1e-3, atol=1e-6 * float(expected.max()) + 1e-9)


def test_explain_from_the_command_line_and_python_agree(tiny_model_dir, few_triples, tmp_path, read_jsonl):
    """`editguard explain` writes explanations.jsonl and the heatmaps; the Python call gives the same peak,
    box and shares; an unreadable edit gets an error line, the others go on (exit 3)."""
    rows = read_jsonl(few_triples)[:5]
    rows[2] = {**rows[2], "id": "broken", "output_image": "images/missing.png"}
    manifest = few_triples.parent / "explain_manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (few_triples.parent / "images" / "missing.png").write_bytes(b"not a png")
    out = tmp_path / "explain"
    r = subprocess.run([sys.executable, "-m", "editguard", "explain", str(manifest), "--model-dir", str(tiny_model_dir),
                        "--out", str(out), "--categories", "sexual,unintended_change", "--no-progress",
                        "--json", str(tmp_path / "summary.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["edits"] == 5 and summary["errors"] == 1 and summary["explanations"] == 8
    lines = read_jsonl(out / "explanations.jsonl")
    broken = [x for x in lines if x["id"] == "broken"]
    assert len(broken) == 1 and "output_image" in broken[0]["error"]
    explainer = Explainer.from_model_dir(tiny_model_dir)
    root = few_triples.parent
    for row in rows[:2]:
        found = explainer.explain(root / row["input_image"], row["prompt"], root / row["output_image"],
                                  root / row["mask"], categories=["sexual", "unintended_change"])
        for e in found:
            line = next(x for x in lines if x["id"] == row["id"] and x["category"] == e.category)
            assert line["peak"] == e.peak and line["box"] == e.box
            assert line["shares"] == pytest.approx(e.shares, abs=1e-4)
            heat = np.asarray(Image.open(out / line["heatmap"]))
            np.testing.assert_array_equal(heat, e.heatmap)


def test_served_explanations_match_and_never_touch_the_verdict(tiny_model_dir, few_triples, triton, tmp_path,
                                                              read_jsonl):
    """`export --explain` serves editguard_explain beside the version: EditGuardClient.explain gives the in-process
    peak, box and shares, at the installed thresholds' flagged categories by default; a bad request is refused
    naming its field and the server goes on; SCORES and FLAGGED are the same before and after. A server without
    it (the `triton` fixture's repository) refuses with what to do."""
    import asyncio

    from editguard.clients import AsyncEditGuardClient, EditGuardClient
    from editguard.clients.errors import InvalidInputError, ServerError
    from editguard.export.writer import ExportConfig, export_version
    from editguard.serving.triton import TritonServer, free_port

    repo = tmp_path / "repo"
    export_version(ExportConfig(model_dir=str(tiny_model_dir), repository=str(repo), max_batch=8, explain=True))
    root = few_triples.parent
    rows = read_jsonl(few_triples)[:4]
    triples = [(root / r["input_image"], r["prompt"], root / r["output_image"], root / r["mask"]) for r in rows]
    explainer = Explainer.from_model_dir(tiny_model_dir)
    cats = ["sexual", "unintended_change"]
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server, \
            EditGuardClient(server.grpc_url, timeout=60) as guard:
        before = [guard.classify(*t) for t in triples]
        for t in triples:
            served = guard.explain(*t, categories=cats)
            local = explainer.explain(*t, categories=cats)
            assert [e["category"] for e in served] == cats
            for s, e in zip(served, local):
                assert s["peak"] == e.peak and s["box"] == e.box
                assert s["shares"] == pytest.approx(e.shares, abs=1e-3)
                assert s["score"] == pytest.approx(e.score, abs=1e-5)
        for t, verdict in zip(triples, before):  # by default: what the verdict flags (no thresholds installed: 0.5)
            assert [e["category"] for e in guard.explain(*t)] == verdict.flagged_categories
        with pytest.raises(InvalidInputError, match="output_image"):
            guard.explain(triples[0][0], "x", b"not an image")
        with pytest.raises(InvalidInputError, match="unknown categories"):
            guard.explain(*triples[0], categories=["nope"])
        async def explained_async():
            async with AsyncEditGuardClient(server.grpc_url, timeout=60) as aguard:
                return await aguard.explain(*triples[1], categories=cats)

        assert asyncio.run(explained_async()) == guard.explain(*triples[1], categories=cats)
        after = [guard.classify(*t) for t in triples]
        assert [v.scores for v in after] == [v.scores for v in before]
        assert [v.flagged for v in after] == [v.flagged for v in before]
    with EditGuardClient(triton.grpc_url, timeout=30) as guard, pytest.raises(ServerError, match="--explain"):
        guard.explain(*triples[0])
