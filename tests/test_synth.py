"""The synthetic benchmark: deterministic, labelled by the whole triple, with held-out phrasings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editguard.cli import main
from editguard.manifest import read_manifest
from editguard.model import default_taxonomy
from editguard.training.synth import generate, list_ops, load_prompts
from editguard.training.synth.ops import NEUTRAL, SAFE_OPS, UNSAFE_OPS


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.slow  # over 2 s: make test runs it, make test-fast does not
def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = generate(tmp_path / "a", 80, seed=5, workers=1, progress=False)
    b = generate(tmp_path / "b", 80, seed=5, workers=2, progress=False)
    c = generate(tmp_path / "c", 80, seed=6, workers=2, progress=False)
    assert digest(a.parent) == digest(b.parent)
    assert a.read_text() != c.read_text()


def test_manifest_validates_and_masks_cover_the_change(synth_sets):
    recs = read_manifest(synth_sets["train"], labels=default_taxonomy().names)
    assert len(recs) == 1500
    for r in recs[:50]:
        a, b = (np.asarray(Image.open(p)) for p in (r.input_image, r.output_image))
        m = np.asarray(Image.open(r.mask)) > 0
        changed = np.any(a != b, axis=2)
        assert changed.any() and m[changed].all()  # every changed pixel is under the mask


def test_meta_records_what_the_operation_changed(synth_sets):
    """The truth of localisation: ``changed_region`` is exactly the pixels the edit changed (the clean renderer
    keeps them exact), ``changed_box`` its bounding box; a side effect's ``unasked_region`` lies inside it."""
    recs = read_manifest(synth_sets["train"], labels=default_taxonomy().names)
    root = synth_sets["train"].parent
    side_effects = 0
    for r in recs[:200]:
        a, b = (np.asarray(Image.open(p)) for p in (r.input_image, r.output_image))
        region = np.asarray(Image.open(root / r.meta["changed_region"])) > 127
        np.testing.assert_array_equal(region, np.any(a != b, axis=2))
        ys, xs = np.nonzero(region)
        assert r.meta["changed_box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        if "unasked_region" in r.meta:
            side_effects += 1
            unasked = np.asarray(Image.open(root / r.meta["unasked_region"])) > 127
            assert unasked.any() and region[unasked].all() and "unintended_change" in r.labels
    assert side_effects > 0


def test_every_category_and_safe_edits_present(synth_sets, read_jsonl):
    recs = read_jsonl(synth_sets["train"])
    seen = {lab for r in recs for lab in r["labels"]}
    assert seen == set(default_taxonomy().names)
    assert 0.35 < np.mean([not r["labels"] for r in recs]) < 0.75


def test_labels_need_the_pair_look_alikes_exist(synth_sets, read_jsonl):
    """Dark-skinned outputs are safe when the input was the same, unsafe when the edit changed the tone."""
    recs = read_jsonl(synth_sets["train"])
    identity = [r for r in recs if "identity_alteration" in r["labels"]]
    unintended = [r for r in recs if r["meta"]["op"] == "unintended_appearance"]
    assert identity and unintended
    safe_dark = [r for r in recs if not r["labels"] and r["meta"]["skin_tone"] >= 4]
    assert safe_dark  # dark input, safe edit: the output is dark too, and safe
    # side effects carry the prompt of a safe edit: the prompt alone can't reveal them
    safe_prompts = {r["prompt"].lower() for r in recs if not r["labels"]}
    hidden = [r for r in unintended if r["prompt"].lower() in safe_prompts]
    assert len(hidden) > 0.5 * len(unintended)


@pytest.mark.slow  # over 2 s: make test runs it, make test-fast does not
def test_ood_phrasings_are_held_out(tmp_path, read_jsonl):
    iid = {r["prompt"].lower() for r in read_jsonl(generate(tmp_path / "i", 300, 1, "iid", 64, progress=False))}
    ood = {r["prompt"].lower() for r in read_jsonl(generate(tmp_path / "o", 300, 1, "ood", 64, progress=False))}
    ood_templates = {p for o in SAFE_OPS + UNSAFE_OPS for p in o.ood} | set(NEUTRAL["ood"])
    iid_templates = {p for o in SAFE_OPS + UNSAFE_OPS for p in o.iid} | set(NEUTRAL["iid"])
    assert not ood_templates & iid_templates
    assert len(iid & ood) < 0.05 * len(ood)
    styles = {r["meta"]["style"] for r in read_jsonl(tmp_path / "o" / "manifest.jsonl")}
    assert styles == {"dots", "checker"}


@pytest.mark.slow  # over 2 s: make test runs it, make test-fast does not
def test_prompts_file_replaces_phrasings(tmp_path, read_jsonl):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"remove_clothing": ["please un-clothe the {object}"] * 1 + ["zzz unclothe"]}))
    prompts = load_prompts(f)
    recs = read_jsonl(generate(tmp_path / "d", 400, 2, prompts=prompts, progress=False, image_size=64))
    undress = [r for r in recs if r["meta"]["op"] == "remove_clothing" and not r["meta"]["neutral_prompt"]
               and not r["meta"]["obfuscated"]]  # an obfuscation may rewrite the word itself
    assert undress and all("unclothe" in r["prompt"].lower() or "un-clothe" in r["prompt"].lower() for r in undress)
    f.write_text(json.dumps({"no_such_op": ["x"]}))
    with pytest.raises(ValueError, match="unknown operation 'no_such_op'"):
        load_prompts(f)
    f.write_text(json.dumps({"add_object": ["add a {colour}"]}))
    with pytest.raises(ValueError, match="unknown slot"):
        load_prompts(f)


def test_list_ops_cli(capsys):
    assert main(["synth", "--list-ops"]) == 0
    out = capsys.readouterr().out
    for op in list_ops():
        assert op["name"] in out
    assert "remov3 th3 cl0thes" in out and "ood:" in out


def test_synth_cli_writes_manifest(tmp_path, capsys, read_jsonl):
    assert main(["synth", "--out", str(tmp_path / "s"), "--n", "20", "--seed", "3", "--image-size", "64"]) == 0
    recs = read_jsonl(tmp_path / "s" / "manifest.jsonl")
    assert len(recs) == 20 and Image.open(tmp_path / "s" / recs[0]["input_image"]).size == (64, 64)


# -- the realistic renderer (the default) ------------------------------------------------------------


@pytest.fixture(scope="module")
def realistic(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("realistic")
    return {split: generate(root / split, 160, 21, split, image_size=96, progress=False, workers=1)
            for split in ("iid", "ood")}


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.int16)


def test_realistic_masks_are_drawn_by_a_user_not_the_diff(realistic, read_jsonl):
    for split, kinds in (("iid", {"box", "brush", "none"}), ("ood", {"lasso", "blobs", "none"})):
        recs = read_jsonl(realistic[split])
        assert {r["meta"]["mask_kind"] for r in recs} == kinds  # ood mask shapes are held out of iid
        assert 0.1 < np.mean([r["meta"]["mask_kind"] == "none" for r in recs]) < 0.35
        root = realistic[split].parent
        for r in recs:
            if "mask" not in r:
                assert r["meta"]["mask_kind"] == "none"
                continue
            m = np.asarray(Image.open(root / r["mask"])) > 0
            assert m.mean() == pytest.approx(r["meta"]["mask_area"], abs=1e-3)
            assert m.mean() > r["meta"]["edit_area"]  # a margin around the change, never its outline
            if r["meta"]["output_rescale"] == 1.0 and r["meta"]["edit_area"] < 0.5:  # (night: the whole image)
                diff = np.abs(_load(root / r["input_image"]) - _load(root / r["output_image"])).max(2) > 48
                iou = (m & diff).sum() / max(1, (m | diff).sum())
                assert iou < 0.9, (r["id"], iou)
    # the masks are rough: much larger than the change on average
    recs = [r for r in read_jsonl(realistic["iid"]) if "mask" in r]
    assert np.median([r["meta"]["mask_area"] / max(r["meta"]["edit_area"], 1e-4) for r in recs]) > 1.5


def test_regenerate_redraws_every_pixel_inside_the_mask_and_keeps_the_rest():
    from editguard.training.synth.realism import regenerate

    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 20:50] = 255
    out = np.asarray(regenerate(src, src, mask, rng), np.int16)  # same content: still regenerated
    a = np.asarray(src, np.int16)
    assert np.all(np.any(out != a, axis=2)[mask > 0])
    far = np.ones((64, 64), bool)
    far[6:44, 16:54] = False  # beyond the feathered edge
    assert np.array_equal(out[far], a[far])
    whole = np.asarray(regenerate(src, src, None, rng), np.int16)  # no mask: the whole image
    assert np.all(np.any(whole != a, axis=2))


def test_realistic_files_regenerated_inside_the_mask(realistic, read_jsonl):
    root = realistic["iid"].parent
    checked = 0
    for r in read_jsonl(realistic["iid"]):
        if "mask" in r and r["meta"]["output_rescale"] == 1.0 and r["meta"]["codec"] == "png":
            m = np.asarray(Image.open(root / r["mask"])) > 0
            a, b = _load(root / r["input_image"]), _load(root / r["output_image"])
            inside = np.any(a != b, axis=2)[m]
            assert inside.mean() > 0.97, r["id"]  # the round trip's noise may land a rare pixel back
            checked += 1
    assert checked >= 5


def test_realistic_meta_knobs_and_codecs(realistic, read_jsonl):
    knobs = {"mask_kind", "codec", "quality", "output_rescale", "edit_area", "mask_area", "people", "filter",
             "misregistration_px", "input_codec"}
    codecs = {"iid": {"jpeg", "png"}, "ood": {"webp", "jpeg"}}
    for split, manifest in realistic.items():
        recs = read_jsonl(manifest)
        assert all(knobs <= set(r["meta"]) for r in recs)
        assert {r["meta"]["codec"] for r in recs} == codecs[split]
        assert {r["meta"]["people"] for r in recs} == {1, 2}
        assert {r["meta"]["output_rescale"] for r in recs} > {1.0}
        for r in recs[:20]:  # the files are what meta says
            fmt = Image.open(manifest.parent / r["output_image"]).format
            assert fmt == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[r["meta"]["codec"]]
        assert read_manifest(manifest, labels=default_taxonomy().names)  # masks are optional in a manifest
    small = [r for r in read_jsonl(realistic["iid"]) if r["meta"]["op"] == "add_hate_symbol"]
    assert small and min(r["meta"]["edit_area"] for r in small) < 0.02  # small edits exist


def test_clean_flag_keeps_the_clean_renderer(tmp_path, read_jsonl):
    assert main(["synth", "--out", str(tmp_path / "c"), "--n", "12", "--seed", "3", "--clean", "--workers", "1"]) == 0
    for r in read_jsonl(tmp_path / "c" / "manifest.jsonl"):
        assert r["output_image"].endswith(".png") and "mask_kind" not in r["meta"]
        a, b = (_load(tmp_path / "c" / r[k]) for k in ("input_image", "output_image"))
        m = np.asarray(Image.open(tmp_path / "c" / r["mask"])) > 0
        assert m[np.any(a != b, axis=2)].all() and not np.any(a != b, axis=2)[~m].any()
