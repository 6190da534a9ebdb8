"""A new category on a trained model: `train --from` grows the head, trains the new branch, exports a new
version that serves beside the old one through a real Triton, carries the old thresholds, and `calibrate
--only` installs the new category's threshold alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from editguard.cli import main
from editguard.clients import EditGuardClient
from editguard.model.taxonomy import Taxonomy, appended_categories, default_taxonomy
from editguard.serving.triton import TritonServer, free_port
from editguard.training.grow import grow_network

NEW = "gore_on_person"


def _taxonomy(names: list[str], path: Path) -> Path:
    path.write_text(json.dumps({"name": "v2", "categories": names}))
    return path


@pytest.mark.parametrize("towers", [False, True])
def test_a_grown_head_keeps_the_old_scores_bit_identical(towers, few_triples, tmp_path):
    from editguard.manifest import read_manifest
    from editguard.model.model_dir import create_model, load_model_dir, save_model_dir
    from editguard.training.data import TripleDataset, collate_batch

    records = read_manifest(few_triples, labels=default_taxonomy().names)
    net, pre = create_model("tiny", tmp_path, prompts=[r.prompt for r in records])
    net.eval()
    batch = collate_batch([TripleDataset(records, pre, net.cfg.labels, cache=False)[i] for i in range(8)])
    batch.pop("labels")
    names = default_taxonomy().names + [NEW]
    grown = grow_network(net, Taxonomy.from_dict({"categories": names}), prior=np.array([0.05]), towers=towers).eval()
    with torch.no_grad():
        before, after = net(**batch), grown(**batch)
    assert after.shape == (8, len(names))
    assert torch.equal(after[:, :-1], before)  # bit for bit
    assert torch.allclose(torch.sigmoid(after[:, -1]), torch.tensor(0.05))  # the new category starts at its rate
    # and so after a round trip through a model dir
    save_model_dir(grown, tmp_path / "grown", tokenizer_dir=tmp_path / "tokenizer",
                   taxonomy=Taxonomy.from_dict({"categories": names}))
    loaded, _ = load_model_dir(tmp_path / "grown")
    assert loaded.cfg.label_heads == [{"labels": 1, "towers": towers}]
    with torch.no_grad():
        assert torch.equal(loaded(**batch)[:, :-1], before)


@pytest.mark.parametrize("names, said", [
    (["sexual", "minors"], "removes 'identity_alteration'"),
    (["sexual", "kids", "identity_alteration", "violence_gore", "hate_symbols", "religious_cultural",
      "unintended_change", NEW], "renames 'minors' to 'kids'"),
    (["minors", "sexual", "identity_alteration", "violence_gore", "hate_symbols", "religious_cultural",
      "unintended_change", NEW], "reorders the existing categories"),
    ([NEW, "sexual", "minors", "identity_alteration", "violence_gore", "hate_symbols", "religious_cultural",
      "unintended_change"], f"inserts ['{NEW}'] before existing categories"),
    (default_taxonomy().names, "adds no category"),
])
def test_taxonomy_changes_other_than_appending_are_refused(names, said, few_triples, tmp_path, capsys):
    with pytest.raises(ValueError, match="can only append|adds no category") as e:
        appended_categories(default_taxonomy(), Taxonomy.from_dict({"categories": names}))
    assert said in str(e.value)
    # the command says the same, naming the file, before it reads any data or model
    (tmp_path / "parent").mkdir()
    (tmp_path / "parent" / "labels.json").write_text(json.dumps(default_taxonomy().to_dict()))
    tax = _taxonomy(names, tmp_path / "v2.json")
    rc = main(["train", "--from", str(tmp_path / "parent"), "--taxonomy", str(tax), "--train", str(few_triples),
               "--val", str(few_triples), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and said in err and str(tax) in err


def _overlay(manifest: Path, path: Path) -> tuple[Path, int]:
    """Review decisions that tag the new harm: every edit that adds gore gets NEW beside its labels."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    tagged = [{"id": r["id"], "labels": r["labels"] + [NEW], "decision": "wrong"} for r in rows
              if "violence_gore" in r["labels"]]
    path.write_text("".join(json.dumps(t) + "\n" for t in tagged))
    return path, len(tagged)


@pytest.fixture(scope="module")
def grown(tiny_model_dir, synth_sets, subset_manifest, tmp_path_factory):
    """The tiny model grown by NEW, labelled by review decisions (an overlay) on a few hundred edits."""
    root = tmp_path_factory.mktemp("grown")
    train = subset_manifest(synth_sets["train"], 400, "grow")
    overlay, n = _overlay(train, root / "decisions.jsonl")
    val_overlay, _ = _overlay(synth_sets["val"], root / "val-decisions.jsonl")
    assert n >= 10
    tax = _taxonomy(default_taxonomy().names + [NEW], root / "v2.json")
    args = ["train", "--from", str(tiny_model_dir), "--taxonomy", str(tax), "--train", str(train), "--val",
            str(synth_sets["val"]), "--overlay", str(overlay), "--overlay", str(val_overlay), "--epochs", "2",
            "--replay-size", "100", "--no-progress"]
    return root, args


def test_the_review_overlay_supplies_the_new_labels(grown, tiny_model_dir, capsys):
    root, args = grown
    without = [a for i, a in enumerate(args) if a != "--overlay" and args[i - 1] != "--overlay"]
    assert main([*without, "--out", str(root / "no-labels")]) != 0
    assert f"--train has no positive of ['{NEW}']" in capsys.readouterr().err
    assert main([*args, "--out", str(root / "model")]) == 0
    model = root / "model"
    info = json.loads((model / "grown_from.json").read_text())
    assert info["added"] == [NEW] and info["old_scores"] == "unchanged" and info["replayed"] == 100
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["per_category"][NEW]["support"] > 0 and metrics["per_category"][NEW]["auroc"] > 0.8
    # the parent is untouched, and the grown model's old weights are the parent's
    from safetensors.numpy import load_file

    parent, child = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(model / "model.safetensors"))
    assert set(child) - set(parent) == {k for k in child if k.startswith("branches.0.")}
    assert all(np.array_equal(parent[k], child[k]) for k in parent)


def test_a_grown_model_serves_beside_its_parent_and_calibrates_alone(grown, tiny_model_dir, synth_sets, tmp_path,
                                                                      monkeypatch, triple_bytes):
    from editguard.model.repository import install_thresholds

    root, _ = grown
    model = root / "model"
    assert (model / "metrics.json").exists(), "test_the_review_overlay_supplies_the_new_labels trains it"
    repo = tmp_path / "repo"
    assert main(["export", str(tiny_model_dir), "--repository", str(repo), "--max-batch", "16"]) == 0
    old = {n: {"threshold": t} for n, t in zip(default_taxonomy().names, np.linspace(0.3, 0.7, 7).round(3))}
    install_thresholds({"model_version": "1", "categories": old}, repo, "1")
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        monkeypatch.setenv("EDITGUARD_ADMIN_KEY", server.admin_key)
        assert main(["export", str(model), "--repository", str(repo), "--max-batch", "16",
                     "--server", server.grpc_url]) == 0
        carried = json.loads((repo / "editguard" / "2" / "thresholds.json").read_text())
        assert carried["categories"] == old and carried["carried_from"] == "1"
        assert (repo / "editguard" / "labels.txt").read_text().split() == default_taxonomy().names + [NEW]
        t = triple_bytes(synth_sets["test"], 1)[0]
        with EditGuardClient(server.grpc_url, version="1") as v1, EditGuardClient(server.grpc_url) as v2:
            a, b = v1.classify(t["input"], t["prompt"], t["output"]), v2.classify(t["input"], t["prompt"], t["output"])
        assert (a.model_version, b.model_version) == ("1", "2")
        assert list(b.scores) == list(a.scores) + [NEW]
        assert max(abs(a.scores[n] - b.scores[n]) for n in a.scores) < 1e-6
        # the new category's threshold alone, from labelled results of the new version
        overlay, _ = _overlay(synth_sets["val"], tmp_path / "decisions.jsonl")
        results = tmp_path / "val.jsonl"
        assert main(["score", str(synth_sets["val"]), "--out", str(results), "--server", server.grpc_url,
                     "--no-progress"]) == 0
        assert main(["calibrate", str(results), "--overlay", str(overlay), "--only", NEW, "--target", "recall=0.9",
                     "--bootstrap", "20", "--out", str(tmp_path / "th.json"), "--install", str(repo)]) == 0
        installed = json.loads((repo / "editguard" / "2" / "thresholds.json").read_text())
        assert {k: v for k, v in installed["categories"].items() if k != NEW} == old
        assert installed["categories"][NEW]["target"] == "recall>=0.9" and installed["updated"]["categories"] == [NEW]
        th = installed["categories"][NEW]["threshold"]
        # the served verdicts use it from the next request
        with EditGuardClient(server.grpc_url) as v2:
            verdicts = [v2.classify(t["input"], t["prompt"], t["output"]) for t in triple_bytes(synth_sets["val"], 8)]
        assert all(v.flagged[NEW] == (v.scores[NEW] >= th) for v in verdicts)
    # --only without --install would drop the other categories' thresholds: refused
    assert main(["calibrate", str(results), "--only", NEW, "--out", str(tmp_path / "x.json")]) != 0
