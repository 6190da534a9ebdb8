"""Training learns, resumes, and the CLI walks synth -> train -> evaluate."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from editguard.cli import main
from editguard.training.evaluate import evaluate


def test_short_training_learns(tiny_model_dir, synth_sets, read_jsonl):
    log = read_jsonl(tiny_model_dir / "train_log.jsonl")
    assert log[-1]["train_loss"] < 0.7 * log[0]["train_loss"]
    report = evaluate(tiny_model_dir, synth_sets["test"], progress=False)
    assert report["macro"]["auroc"] > 0.8
    metrics = json.loads((tiny_model_dir / "metrics.json").read_text())
    assert set(metrics["per_category"]) == set(report["per_category"])
    for f in ("config.json", "labels.json", "model.safetensors", "tokenizer/tokenizer.json", "train_config.json"):
        assert (tiny_model_dir / f).exists()


@pytest.mark.slow
def test_seeded_training_is_reproducible_and_resumes_after_a_kill(synth_sets, tmp_path, read_jsonl, subset_manifest):
    from editguard.training.train import TrainConfig, train

    small = subset_manifest(synth_sets["train"], 300, tmp_path.name)
    val = subset_manifest(synth_sets["val"], 100, tmp_path.name)
    kw = dict(train=str(small), val=str(val), preset="tiny", epochs=3, patience=5, progress=False)
    a = train(TrainConfig(out=str(tmp_path / "a"), **kw))
    b = train(TrainConfig(out=str(tmp_path / "b"), **kw))
    assert a["macro"] == b["macro"]
    # a real interruption: kill -9 the run once its first checkpoint is on disk, then --resume
    cmd = [sys.executable, "-m", "editguard", "train", "--train", str(small), "--val", str(val),
           "--out", str(tmp_path / "c"), "--preset", "tiny", "--epochs", "3", "--patience", "5", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "c" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["state"]["epoch"]
    assert 1 <= done < 3
    c = train(TrainConfig(out=str(tmp_path / "c"), resume=True, **kw))
    assert c["macro"] == pytest.approx(a["macro"], abs=1e-6)
    assert len(read_jsonl(tmp_path / "c" / "train_log.jsonl")) == 3
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(TrainConfig(out=str(tmp_path / "d"), resume=True, **kw))


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, capsys):
    d = str(tmp_path)
    assert main(["synth", "--out", f"{d}/tr", "--n", "600", "--seed", "1", "--image-size", "64"]) == 0
    assert main(["synth", "--out", f"{d}/va", "--n", "150", "--seed", "2", "--image-size", "64"]) == 0
    assert main(["train", "--train", f"{d}/tr/manifest.jsonl", "--val", f"{d}/va/manifest.jsonl",
                 "--out", f"{d}/m", "--preset", "tiny", "--epochs", "2", "--no-progress"]) == 0
    assert main(["evaluate", f"{d}/m", f"{d}/va/manifest.jsonl", "--json", f"{d}/r.json"]) == 0
    out = capsys.readouterr().out
    assert "identity_alteration" in out and "macro" in out
    r = json.loads(Path(f"{d}/r.json").read_text())
    assert set(r["per_category"]["sexual"]) == {"auroc", "auprc", "recall_at_p90", "support"}
    assert set(r["macro"]) == {"auroc", "auprc"}


def test_cli_errors_are_clear(tmp_path, capsys, few_triples):
    assert main(["evaluate", str(tmp_path), str(tmp_path / "none.jsonl")]) == 4  # could not do its work
    assert "not an editguard model dir" in capsys.readouterr().err
    # a validation set without a single unsafe edit can't choose an epoch: refused before training starts
    safe = few_triples.parent / "safe-only.jsonl"
    safe.write_text("".join(line for line in few_triples.read_text().splitlines(True) if '"labels": []' in line))
    assert safe.read_text()
    assert main(["train", "--train", str(few_triples), "--val", str(safe), "--out", str(tmp_path / "m"),
                 "--epochs", "1", "--no-progress"]) == 4
    assert "safe-only.jsonl has no unsafe edit" in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_training_augmentations_match_real_edits():
    """Degradation keeps shape and dtype; mask jitter keeps "no mask" as it is."""
    from editguard.training.data import degrade, jitter_mask

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    outs = [degrade(img, rng) for _ in range(20)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, img) for o in outs) >= 15
    full = np.full((64, 64), 255, np.uint8)
    assert all(np.array_equal(jitter_mask(full, rng), full) for _ in range(10))
    m = np.zeros((64, 64), np.uint8)
    m[20:30, 20:30] = 255
    assert any(not np.array_equal(jitter_mask(m, rng), m) for _ in range(10))
