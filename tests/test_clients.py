"""The thin client, batch scoring and calibration, against a real Triton over gRPC."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editguard.cli import main
from editguard.clients import (
    AsyncEditGuardClient,
    EditGuardClient,
    InvalidInputError,
    ServerUnavailableError,
    Triple,
    Verdict,
)
from editguard.clients.calibrate import (Target, UnmetTargetError, calibrate, choose_session_thresholds,
                                        choose_threshold, parse_target, rates_at)
from editguard.clients.results import ResultWriter, read_results, results_arrays
from editguard.clients.score import ScoreConfig, score
from editguard.serving.triton import TritonServer, free_port


def test_thin_client_imports_no_torch():
    code = ("import sys, editguard.clients, editguard.clients.score, editguard.clients.calibrate; "
            "from editguard.clients import EditGuardClient, AsyncEditGuardClient; EditGuardClient('127.0.0.1:1'); "
            "heavy = [m for m in ('torch', 'timm', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_round_trip_every_input_type(triton, synth_sets, read_jsonl, triple_bytes):
    t = triple_bytes(synth_sets["test"], 1)[0]
    root = Path(synth_sets["test"]).parent
    rec = read_jsonl(synth_sets["test"])[0]
    src_img = Image.open(io.BytesIO(t["input"])).convert("RGB")
    out_arr = np.asarray(Image.open(io.BytesIO(t["output"])).convert("RGB"))
    with EditGuardClient(triton.grpc_url) as guard:
        guard.wait_ready()
        ref = guard.classify(t["input"], t["prompt"], t["output"], t["mask"])
        variants = [
            guard.classify(root / rec["input_image"], t["prompt"], str(root / rec["output_image"]), root / rec["mask"]),
            guard.classify(src_img, t["prompt"], out_arr, np.asarray(Image.open(io.BytesIO(t["mask"])))),
        ]
    assert isinstance(ref, Verdict) and ref.model_name == "editguard" and ref.model_version == "2"
    assert list(ref.scores) == ["sexual", "minors", "identity_alteration", "violence_gore", "hate_symbols",
                                "religious_cultural", "unintended_change"]  # from the server's LABELS
    assert ref.unsafe == any(ref.flagged.values()) and ref.latency_ms > 0
    for v in variants:
        assert v.scores == pytest.approx(ref.scores, abs=1e-6)


def test_async_client(triton, synth_sets, triple_bytes):
    triples = triple_bytes(synth_sets["test"], 6)

    async def run():
        async with AsyncEditGuardClient(triton.grpc_url) as guard:
            await guard.wait_ready()
            one = await guard.classify(triples[0]["input"], triples[0]["prompt"], triples[0]["output"])
            many = [x async for x in guard.classify_many(
                [Triple(t["id"], t["input"], t["prompt"], t["output"]) for t in triples], concurrency=3)]
        return one, many

    one, many = asyncio.run(run())
    assert isinstance(one, Verdict) and len(many) == 6
    assert {i for i, _ in many} == {t["id"] for t in triples} and all(isinstance(v, Verdict) for _, v in many)


def test_bad_item_in_classify_many_fails_alone(triton, synth_sets, triple_bytes):
    triples = [Triple(t["id"], t["input"], t["prompt"], t["output"]) for t in triple_bytes(synth_sets["test"], 10)]
    triples[3] = Triple("corrupt", triples[3].input_image, "x", b"\x89PNG\r\n\x1a\n-not-really")
    triples[6] = Triple("missing-file", "/nonexistent/in.png", "x", triples[6].output_image)
    with EditGuardClient(triton.grpc_url) as guard:
        results = dict(guard.classify_many(triples, concurrency=4))
    assert len(results) == 10
    assert isinstance(results["corrupt"], InvalidInputError) and "OUTPUT_IMAGE" in str(results["corrupt"])
    assert results["corrupt"].item_id == "corrupt" and results["corrupt"].status == "INVALID_ARGUMENT"
    assert isinstance(results["missing-file"], InvalidInputError) and "can't read" in str(results["missing-file"])
    assert sum(isinstance(v, Verdict) for v in results.values()) == 8


def test_bad_request_is_never_retried(triton, synth_sets, model_stats, triple_bytes):
    t = triple_bytes(synth_sets["test"], 1)[0]

    def count():  # every request the model saw (Triton counts an error response as a handled request)
        s = model_stats(triton, "editguard")
        return sum(int(m["inference_stats"][k].get("count", 0)) for m in s for k in ("success", "fail"))

    def requests():
        # Triton records a request's statistics after its response has gone out, so the previous
        # test's last request can still be on its way into the counts: read until they settle
        last, deadline = count(), time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = count()
            if now == last:
                return now
            last = now
        return last

    before = requests()
    with EditGuardClient(triton.grpc_url) as guard, pytest.raises(InvalidInputError):
        guard.classify(t["input"], t["prompt"], t["output"][:80])
    assert requests() == before + 1


def test_retries_while_the_server_restarts(repository, synth_sets, triple_bytes):
    t = triple_bytes(synth_sets["test"], 1)[0]
    ports = dict(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server = TritonServer(repository, **ports).start()
    with EditGuardClient(server.grpc_url, timeout=120) as guard:
        before = guard.classify(t["input"], t["prompt"], t["output"])
        server.stop()
        with pytest.raises(ServerUnavailableError):  # a short deadline: the error, typed
            guard.classify(t["input"], t["prompt"], t["output"], timeout=0.5)
        restarted = TritonServer(repository, **ports)
        threading.Thread(target=lambda: (time.sleep(1.0), restarted.start()), daemon=True).start()
        after = guard.classify(t["input"], t["prompt"], t["output"])  # retried until it is back
    restarted.stop()
    assert after.scores == pytest.approx(before.scores, abs=1e-6) and after.latency_ms > 1000


def test_two_endpoints_share_the_load(triton, repository, synth_sets, model_stats, triple_bytes):
    triples = [Triple(t["id"], t["input"], t["prompt"], t["output"]) for t in triple_bytes(synth_sets["test"], 12)]
    with TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as other:
        with EditGuardClient([triton.grpc_url, other.grpc_url]) as guard:
            assert all(isinstance(v, Verdict) for _, v in guard.classify_many(triples, concurrency=4))
        s = model_stats(other, "editguard")
        served = sum(int(m["inference_stats"]["success"].get("count", 0)) for m in s)
    assert 3 <= served <= 9  # roughly half of 12


def test_score_resumes_after_kill_9_exactly_once(triton, synth_sets, tmp_path, read_jsonl):
    out = tmp_path / "res.jsonl"
    cmd = [sys.executable, "-m", "editguard", "score", str(synth_sets["val"]), "--out", str(out), "--server",
           triton.grpc_url, "--concurrency", "4", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 40):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out.read_text().count("\n")
    assert 40 <= partial < 300
    s = score(ScoreConfig(manifest=str(synth_sets["val"]), out=str(out), server=triton.grpc_url, progress=False))
    ids = [r["id"] for r in read_results(out)]
    assert s.skipped >= partial and len(ids) == len(set(ids)) == 300
    assert s.errors == 0 and not out.with_name(out.name + ".errors.jsonl").exists()  # nothing failed: no error file
    assert set(ids) == {r["id"] for r in read_jsonl(synth_sets["val"])}
    assert s.report["macro"]["auroc"] > 0.8


def test_score_in_process_parquet_matches_server_and_logs_failures(triton, repository, synth_sets, tmp_path,
                                                                   manifest_with_a_bad_item, read_jsonl):
    manifest, bad_id = manifest_with_a_bad_item(synth_sets["test"], tmp_path / "m.jsonl", 40, bad=7)
    kw = dict(manifest=str(manifest), allow_outside_root=True, progress=False)
    a = score(ScoreConfig(out=str(tmp_path / "local"), repository=str(repository), **kw))
    b = score(ScoreConfig(out=str(tmp_path / "served.jsonl"), server=triton.grpc_url, **kw))
    assert (a.scored, a.errors, b.scored, b.errors) == (39, 1, 39, 1)
    errs = read_jsonl(tmp_path / "local.errors.jsonl")
    assert errs[0]["id"] == bad_id and "truncated" in errs[0]["reason"]
    local = {r["id"]: r for r in read_results(tmp_path / "local")}
    served = {r["id"]: r for r in read_results(tmp_path / "served.jsonl")}
    for k, r in local.items():
        assert r["score_sexual"] == pytest.approx(served[k]["score_sexual"], abs=1e-4)
    again = score(ScoreConfig(out=str(tmp_path / "local"), repository=str(repository), **kw))
    assert (again.scored, again.skipped, again.errors) == (0, 39, 1)  # resumes; retries only the failure


def test_calibration_reaches_its_target_on_held_out_data(triton, synth_sets, tmp_path):
    for name in ("val", "test"):
        score(ScoreConfig(manifest=str(synth_sets[name]), out=str(tmp_path / f"{name}.jsonl"), server=triton.grpc_url,
                          progress=False))
    labels, s_val, y_val = results_arrays(read_results(tmp_path / "val.jsonl"))
    _, s_test, y_test = results_arrays(read_results(tmp_path / "test.jsonl"))
    # the aggregate decision (any category) at precision >= 0.9, chosen on val, checked on test
    choice = choose_threshold(y_val.max(1), s_val.max(1), target=Target("precision", 0.9))
    assert choice.achieved
    pred, truth = s_test.max(1) >= choice.threshold, y_test.max(1).astype(bool)
    held_out_precision = (pred & truth).sum() / pred.sum()
    # a threshold set at exactly 0.9 on val lands near 0.9 on test, within sampling error of test's
    # flagged count (about 0.035 at 75 flagged): allow two standard errors, no more
    two_se = 2 * (0.9 * 0.1 / pred.sum()) ** 0.5
    assert held_out_precision >= 0.9 - two_se, (choice, held_out_precision, two_se)
    res = calibrate(labels, y_val, s_val, targets={n: Target("precision", 0.8) for n in labels}, allow_unmet=True)
    met = [n for n, c in res.choices.items() if c.achieved]
    assert len(met) >= 5


def test_unmet_target_names_the_category_and_the_best():
    y = np.array([[0, 1], [1, 1], [0, 0], [1, 0]])
    s = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.1], [0.1, 0.2]])
    targets = {"a": Target("precision", 0.9), "b": Target("precision", 0.9)}
    with pytest.raises(UnmetTargetError, match=r"a: precision>=0.9 is out of reach, the best is 0.500") as e:
        calibrate(["a", "b"], y, s, targets=targets, n_boot=10)
    assert e.value.best == {"a": 0.5}
    res = calibrate(["a", "b"], y, s, targets=targets, n_boot=10, allow_unmet=True)
    assert not res.choices["a"].achieved and res.choices["b"].achieved
    with pytest.raises(ValueError, match="target metric must be 'precision', 'recall' or 'fpr', got 'f1'"):
        Target("f1", 0.5)


def test_an_fpr_target_is_a_ceiling_met_with_the_most_recall():
    """``fpr=F``: of the thresholds whose false-positive rate is at most F, the one with the most recall (the same
    as trying every threshold); out of reach, the lowest rate any threshold gives, named as the best."""
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    s = np.clip(rng.normal(0.3 + 0.35 * y, 0.2), 0, 1)
    w = rng.uniform(0.5, 2.0, 400)
    for target, weights in ((Target("fpr", 0.05), None), (Target("fpr", 0.2), None), (Target("fpr", 0.05), w)):
        c = choose_threshold(y, s, target=target, sample_weight=weights)
        assert str(target).startswith("fpr<=") and c.achieved and c.fpr <= target.value
        rates = [rates_at(y, s, t, sample_weight=weights) for t in np.unique(s)]
        assert c.recall == pytest.approx(max(r["recall"] for r in rates if r["fpr"] <= target.value))
    tied = np.array([0.9, 0.9, 0.2, 0.1])  # a negative tied with the top positive: any threshold that flags a
    c = choose_threshold(np.array([1, 0, 1, 0]), tied, target=Target("fpr", 0.1))  # positive flags 1 of 2 negatives
    assert not c.achieved and c.best == 0.5 and c.fpr == 0.5 and c.recall == 0.5
    sessions = choose_session_thresholds(y, s, np.where(rng.random(400) < 0.5, s + 0.05, -np.inf),
                                         target=Target("fpr", 0.05))
    assert sessions.achieved and sessions.fpr <= 0.05 and sessions.recall > 0
    assert parse_target("fpr=0.01") == Target("fpr", 0.01)


def test_installed_thresholds_change_verdicts_without_restart(triton, repository, synth_sets, tmp_path, png,
                                                              triple_bytes):
    t = triple_bytes(synth_sets["test"], 1)[0]
    out = tmp_path / "val.jsonl"
    score(ScoreConfig(manifest=str(synth_sets["val"]), out=str(out), server=triton.grpc_url, version="1",
                      progress=False))
    with EditGuardClient(triton.grpc_url, version="1") as guard:
        default = guard.classify(t["input"], t["prompt"], t["output"])
        assert main(["calibrate", str(out), "--target", "recall=1.0", "--out", str(tmp_path / "th.json"),
                     "--install", str(repository), "--plots", str(tmp_path / "plots"), "--slice-by", "skin_tone",
                     "--calibration", "isotonic", "--bootstrap", "20"]) == 0
        installed = json.loads((Path(repository) / "editguard" / "1" / "thresholds.json").read_text())
        assert installed["model_version"] == "1"
        lowest = min(c["threshold"] for c in installed["categories"].values())
        every = dict(installed, categories={n: {"threshold": 0.0} for n in default.scores})
        (Path(repository) / "editguard" / "1" / "thresholds.json").write_text(json.dumps(every))
        flagged = guard.classify(t["input"], t["prompt"], t["output"])
        (Path(repository) / "editguard" / "1" / "thresholds.json").unlink()
        back = guard.classify(t["input"], t["prompt"], t["output"])
    assert lowest < 0.5  # recall 1.0 needs lower thresholds than the default
    assert all(flagged.flagged.values()) and flagged.unsafe
    assert back.flagged == default.flagged
    for png in ("pr_curves.png", "reliability.png"):
        assert Image.open(tmp_path / "plots" / png).size[0] > 400


def _results(path: Path, y: np.ndarray, s: np.ndarray, labels: list[str]) -> Path:
    with ResultWriter(path) as w:
        for i in range(len(y)):
            w.write({"id": f"r{i}", "model_version": "1", "unsafe": bool(s[i].max() >= 0.5),
                     **{f"score_{n}": float(s[i, j]) for j, n in enumerate(labels)},
                     **{f"flag_{n}": bool(s[i, j] >= 0.5) for j, n in enumerate(labels)},
                     "labels": [n for j, n in enumerate(labels) if y[i, j]]})
    return path


def test_calibrate_check_reports_how_thresholds_carry_to_another_set(tmp_path, capsys, read_jsonl):
    """Thresholds chosen on one set, measured on another: figures match a direct count, and a
    category whose FPR grows past the factor is warned about."""
    rng = np.random.default_rng(0)
    labels = ["a", "b"]
    y = (rng.random((600, 2)) < 0.3).astype(int)
    clean = np.clip(0.7 * y + rng.normal(0.15, 0.1, y.shape), 0, 1)
    shifted = clean.copy()
    shifted[:, 0] += np.where(y[:, 0] == 0, rng.uniform(0, 0.6, len(y)), 0)  # category a's negatives drift up
    val, other = _results(tmp_path / "val.jsonl", y, clean, labels), _results(tmp_path / "o.jsonl", y, shifted, labels)
    out = tmp_path / "th.json"
    assert main(["calibrate", str(val), "--target", "precision=0.9", "--check", str(other), "--out", str(out),
                 "--bootstrap", "30"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    th = np.array([doc["categories"][n]["threshold"] for n in labels])
    check = doc["checks"][str(other)]
    for j, n in enumerate(labels):
        pred, truth = shifted[:, j] >= th[j], y[:, j].astype(bool)
        assert check["categories"][n]["fpr"] == pytest.approx((pred & ~truth).sum() / (~truth).sum())
        assert check["categories"][n]["recall"] == pytest.approx((pred & truth).sum() / truth.sum())
        lo, hi = check["categories"][n]["ci95"]["precision"]
        assert lo <= check["categories"][n]["precision"] <= hi
    assert doc["reference"]["categories"]["a"]["fpr"] < 0.02 < check["categories"]["a"]["fpr"]
    any_pred = (shifted >= th).any(1)
    assert check["unsafe_any"]["fpr"] == pytest.approx((any_pred & ~y.any(1)).sum() / (~y.any(1)).sum())
    assert [w.split(":")[0] for w in check["warnings"]] == ["a", "unsafe (any)"]  # b is unchanged: no warning
    assert "WARNING a: FPR" in printed and "calibration set -> this set" in printed
    unlabelled = tmp_path / "u.jsonl"
    unlabelled.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "labels"}) + "\n"
                                  for r in read_jsonl(other)))
    assert main(["calibrate", str(val), "--check", str(unlabelled), "--out", str(out), "--bootstrap", "5"]) != 0
    assert "no labelled results there; score a labelled manifest" in capsys.readouterr().err
