"""The command line as scripts use it: exit codes, --version, --help, --json summaries, meta fields spelt
either way. (Each command's own work is tested with its stage.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from editguard.cli import ENVIRONMENT, EXIT_CODES, build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def test_version_and_every_help_a_newcomer_can_act_on(capsys):
    from editguard import __version__
    from editguard.model.config import list_presets

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"editguard {__version__}"
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        text = capsys.readouterr().out
        assert e.value.code == 0 and "example" in text, name
        assert "(default: None)" not in text, f"{name} --help shows a default of None"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(p in text for p in list_presets()) and "(default: cpu;" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(f"  {code:<4} " in text for code in EXIT_CODES) and all(v in text for v in ENVIRONMENT)


def test_exit_codes_tell_usage_from_errors_from_failed_checks(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own usage errors
        main(["score", "--nope"])
    assert e.value.code == 2
    assert main(["synth", "--n", "3"]) == 2  # editguard's: --out is missing
    err = capsys.readouterr().err
    assert "usage: editguard synth" in err and "--out is required" in err
    assert main(["evaluate", str(tmp_path), str(tmp_path / "none.jsonl")]) == 4
    assert main(["check-repository", str(tmp_path / "nothing")]) == 4
    assert "repository" in capsys.readouterr().err
    bad = tmp_path / "repo" / "editguard_classifier" / "1"
    bad.mkdir(parents=True)
    (bad.parent / "config.pbtxt").write_text(
        'name: "editguard_classifier"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    (bad / "model.onnx").write_bytes(_onnx_graph())
    assert main(["check-repository", str(tmp_path / "repo"), "--json", str(tmp_path / "check.json")]) == 1
    doc = json.loads((tmp_path / "check.json").read_text())
    assert doc["ok"] is False and doc["mismatches"] and all("editguard_classifier" in m for m in doc["mismatches"])


def _onnx_graph() -> bytes:
    """A one-node ONNX graph with input ``x`` [B, 4] and output ``y`` [B, 4]: dims that disagree with the config."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_json_to_stdout_keeps_the_text_on_stderr(few_triples, tmp_path):
    """``--json -``: stdout is one JSON document a script can parse; the human text goes to stderr."""
    manifest = tmp_path / "m" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("".join(json.dumps(dict(r, input_image=str(few_triples.parent / r["input_image"]),
                                                output_image=str(few_triples.parent / r["output_image"]),
                                                mask=str(few_triples.parent / r["mask"]))) + "\n"
                                for r in map(json.loads, few_triples.read_text().splitlines())))
    r = subprocess.run([sys.executable, "-m", "editguard", "split", str(manifest), "--group-by", "style",
                        "--allow-outside-root", "--no-progress", "--json", "-"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["items"] == 24 and doc["leaks"] == 0 and "style" in doc["grouped_by"]
    assert "leaks (items outside train" in r.stderr
    # a field no record has is an error naming the fields they do have, in either spelling
    for spec in ("meta.styl", "styl"):
        assert main(["split", str(manifest), "--group-by", spec, "--allow-outside-root", "--no-progress"]) == 4
    with pytest.raises(ValueError, match=r"no record has the meta field 'styl'; their meta fields are: .*style"):
        from editguard.training.splits import SplitConfig, split_manifest

        split_manifest(SplitConfig(str(manifest), group_by=["meta.styl"], allow_outside_root=True,
                                   progress=False))


def test_slices_take_either_spelling_are_saved_and_refuse_a_missing_field(tmp_path, capsys):
    from editguard.clients.calibrate import slice_table
    from editguard.clients.results import ResultWriter, read_results

    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.clip(0.7 * y + rng.normal(0.15, 0.1, 300), 0, 1)
    path = tmp_path / "results.jsonl"
    with ResultWriter(path) as w:
        for i in range(300):
            w.write({"id": f"r{i}", "model_version": "1", "unsafe": bool(s[i] >= 0.5), "score_a": float(s[i]),
                     "flag_a": bool(s[i] >= 0.5), "labels": ["a"] if y[i] else [],
                     "meta": json.dumps({"source": "x" if i % 3 else "y"})})
    rows = read_results(path)
    th = np.array([0.5])
    assert slice_table(rows, ["a"], th, "meta.source") == slice_table(rows, ["a"], th, "source")
    with pytest.raises(ValueError, match="no record has the meta field 'sourc'; their meta fields are: source"):
        slice_table(rows, ["a"], th, "meta.sourc")
    out = tmp_path / "th.json"
    assert main(["calibrate", str(path), "--target", "precision=0.8", "--slice-by", "meta.source", "--out", str(out),
                 "--bootstrap", "5"]) == 0
    saved = json.loads(out.read_text())["slices"]
    assert saved["by"] == "meta.source" and [r["slice"] for r in saved["rows"]] == ["(all)", "x", "y"]
    assert saved["rows"][1]["n"] == 200 and "x " in capsys.readouterr().out


def test_the_docs_list_every_exit_code_and_environment_variable():
    design = (ROOT / "docs" / "design.md").read_text()
    for code in EXIT_CODES:
        assert re.search(rf"^\| `?{code}`? \|", design, re.M), f"docs/design.md's exit-code table lacks {code}"
    used = set()
    for folder in ("editguard", "model", "training", "export", "clients", "model_repository"):
        for p in (ROOT / folder).rglob("*.py"):
            used |= set(re.findall(r"[\"'](EDITGUARD_[A-Z_]+)[\"']", p.read_text()))
    assert used <= set(ENVIRONMENT), f"not in the CLI's ENVIRONMENT table: {sorted(used - set(ENVIRONMENT))}"
    for name in ENVIRONMENT:
        assert f"`{name}`" in design, f"docs/design.md does not list {name}"
