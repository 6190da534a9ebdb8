"""The synthetic benchmark: deterministic, labelled by the whole triple, with held-out phrasings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editguard.cli import main
from editguard.model import default_taxonomy
from editguard.training.manifest import read_manifest
from editguard.training.synth import generate, list_ops, load_prompts
from editguard.training.synth.ops import NEUTRAL, SAFE_OPS, UNSAFE_OPS

from conftest import read_jsonl


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


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


def test_every_category_and_safe_edits_present(synth_sets):
    recs = read_jsonl(synth_sets["train"])
    seen = {lab for r in recs for lab in r["labels"]}
    assert seen == set(default_taxonomy().names)
    assert 0.35 < np.mean([not r["labels"] for r in recs]) < 0.75


def test_labels_need_the_pair_look_alikes_exist(synth_sets):
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


def test_ood_phrasings_are_held_out(tmp_path):
    iid = {r["prompt"].lower() for r in read_jsonl(generate(tmp_path / "i", 300, 1, "iid", 64, progress=False))}
    ood = {r["prompt"].lower() for r in read_jsonl(generate(tmp_path / "o", 300, 1, "ood", 64, progress=False))}
    ood_templates = {p for o in SAFE_OPS + UNSAFE_OPS for p in o.ood} | set(NEUTRAL["ood"])
    iid_templates = {p for o in SAFE_OPS + UNSAFE_OPS for p in o.iid} | set(NEUTRAL["iid"])
    assert not ood_templates & iid_templates
    assert len(iid & ood) < 0.05 * len(ood)
    styles = {r["meta"]["style"] for r in read_jsonl(tmp_path / "o" / "manifest.jsonl")}
    assert styles == {"dots", "checker"}


def test_prompts_file_replaces_phrasings(tmp_path):
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


def test_synth_cli_writes_manifest(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--n", "20", "--seed", "3", "--image-size", "64"]) == 0
    recs = read_jsonl(tmp_path / "s" / "manifest.jsonl")
    assert len(recs) == 20 and Image.open(tmp_path / "s" / recs[0]["input_image"]).size == (64, 64)
