"""What an on-call and an operator see: Prometheus metrics from the served model, and logs a file can hold."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from PIL import Image

from editguard.clients import EditGuardClient, Verdict
from editguard.clients.errors import InvalidInputError
from editguard.serving.prometheus import SCORE_BUCKETS


def test_metrics_count_what_was_served_and_refused(triton, synth_sets, png, png_bomb, triple_bytes, served_metrics):
    scrape, value = served_metrics
    triples = triple_bytes(synth_sets["test"], 12)
    before = scrape(triton)
    with EditGuardClient(triton.grpc_url) as guard:
        verdicts = [guard.classify(t["input"], t["prompt"], t["output"], t["mask"]) for t in triples]
        t = triples[0]
        refusals = {"decode": (b"\x89PNG\r\n\x1a\nnot really", t["prompt"], t["output"], None),
                    "too_large": (png_bomb(), t["prompt"], t["output"], None),
                    "bad_mask": (t["input"], t["prompt"], t["output"], png(Image.new("L", (7, 5))))}
        for reason, args in refusals.items():
            with pytest.raises(InvalidInputError):
                guard.classify(*args)
    after = scrape(triton)
    assert all(isinstance(v, Verdict) and v.model_version == "2" for v in verdicts)
    d = lambda name, **kw: value(after, name, model="editguard", version=2, **kw) - value(
        before, name, model="editguard", version=2, **kw)
    assert d("editguard_triples_total") == 12
    assert d("editguard_unsafe_total") == sum(v.unsafe for v in verdicts)
    for cat in verdicts[0].scores:
        assert d("editguard_flagged_total", category=cat) == sum(v.flagged[cat] for v in verdicts), cat
        assert d("editguard_score_count", category=cat) == 12
        assert d("editguard_score_sum", category=cat) == pytest.approx(sum(v.scores[cat] for v in verdicts),
                                                                         abs=1e-4)
        below_half = sum(v.scores[cat] <= 0.5 for v in verdicts)
        assert d("editguard_score_bucket", category=cat, le=0.5) == below_half
    for reason in refusals:
        assert d("editguard_rejected_total", reason=reason) == 1, reason
    assert value(after, "editguard_score_bucket", model="editguard", le="+Inf") > 0
    assert sorted({float(dict(k)["le"]) for k in after["editguard_score_bucket"]} - {float("inf")}) == SCORE_BUCKETS


@pytest.mark.slow  # over 2 s: make test runs it, make test-fast does not
def test_progress_in_a_log_file_is_plain_lines(tmp_path):
    """A progress bar written to a pipe is periodic lines with rate and ETA, not carriage returns."""
    env = {"EDITGUARD_PROGRESS_SECONDS": "0.2", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "editguard", "synth", "--out", str(tmp_path / "s"), "--n", "300",
                        "--image-size", "64", "--workers", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("synth iid:")]
    assert len(lines) >= 2, r.stderr
    assert re.search(r"synth iid: \d+/300 triple \(\d+%\), [\d.]+ triple/s, .*ETA", lines[0]), lines[0]
    assert lines[-1].startswith("synth iid: 300/300 triple (100%)")


def test_line_progress_methods_match_tqdms():
    from editguard.progress import LineProgress

    out = io.StringIO()
    bar = LineProgress(range(5), desc="score", unit="triple", interval=0, stream=out)
    assert list(bar) == list(range(5))
    bar.set_postfix(errors=1)
    bar.close()  # closed once: no second final line
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 and lines[-1].startswith("score: 5/5 triple (100%)")


def test_parallel_map_counts_the_last_job_when_the_caller_zips(monkeypatch, capsys):
    """A caller that zips the results with a list of the same length stops after the last one without
    resuming the generator: the bar must still end at 3/3 (the review page's heatmaps ended at 1024/1025)."""
    from editguard.progress import parallel_map

    monkeypatch.setenv("EDITGUARD_PROGRESS_SECONDS", "0")
    assert [(a, b) for a, b in zip("abc", parallel_map(abs, [-1, -2, -3], workers=1, desc="maps", unit="map"))] == [
        ("a", 1), ("b", 2), ("c", 3)]
    import gc

    gc.collect()  # the abandoned generator closes its bar
    assert capsys.readouterr().err.splitlines()[-1].startswith("maps: 3/3 map (100%)")


@pytest.mark.slow  # over 2 s: make test runs it, make test-fast does not
def test_install_is_quiet(tmp_path):
    """Building the package (as `pip install` does) warns about nothing: package data is declared."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path), str(root)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    noisy = [ln for ln in (r.stdout + r.stderr).splitlines() if "warning" in ln.lower() and "namespace" in ln.lower()
             or "is absent from the `packages` configuration" in ln]
    assert not noisy, noisy
    import zipfile

    names = zipfile.ZipFile(next(tmp_path.glob("editguard-*.whl"))).namelist()
    for f in ("editguard/model_repository/editguard/model.py", "editguard/model_repository/editguard/config.pbtxt",
              "editguard/model_repository/editguard_classifier/configs/tensorrt.pbtxt",
              "editguard/model_repository/editguard_precheck/config.pbtxt",
              "editguard/model/presets/tiny.json"):
        assert f in names, f
