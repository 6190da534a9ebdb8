"""Edit sessions: the client keeps the origin and the prompt history, and each turn sends the step triple and
the cumulative triple in one request to a real Triton; the scores are the in-process ones."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editguard.clients import EditGuardClient, SessionPolicy
from editguard.clients.aio import AsyncEditGuardClient
from editguard.model.session import cumulative_mask, cumulative_prompt
from editguard.serving.served import ServedVersion
from editguard.serving.shared_cache import SharedCache, cache_dir_path


@pytest.fixture(scope="module")
def turns(synth_sets, read_jsonl) -> list[dict]:
    """Eight records' files as bytes: a session's turns take their outputs, prompts and masks in order."""
    root = Path(synth_sets["test"]).parent
    rows = read_jsonl(synth_sets["test"])[:8]
    return [{"input": (root / r["input_image"]).read_bytes(), "output": (root / r["output_image"]).read_bytes(),
             "mask": (root / r["mask"]).read_bytes(), "prompt": r["prompt"]} for r in rows]


def _scores(served: ServedVersion, input_image, prompt, output_image, mask, cumulative: bool = False) -> np.ndarray:
    return served.probabilities([served.prepare(input_image, prompt, output_image, mask, cumulative)])[0]


def _stats(model_stats, triton) -> tuple[int, int]:
    s = model_stats(triton, "editguard", "2")[0]
    return int(s["inference_stats"].get("success", {}).get("count", 0)), int(s.get("inference_count", 0))


def test_a_turn_is_one_request_with_the_step_and_the_cumulative_triple(triton, repository, turns, model_stats):
    served = ServedVersion.open(repository)
    origin = turns[0]["input"]
    with EditGuardClient(triton.grpc_url, timeout=60) as guard:
        session = guard.session(origin, escalation=1.0)
        before = _stats(model_stats, triton)
        first = session.classify(turns[0]["prompt"], turns[0]["output"], turns[0]["mask"])
        assert first.turn == 1 and first.cumulative is None  # turn 1: the cumulative triple is the step
        np.testing.assert_allclose(list(first.step.scores.values()),
                                   _scores(served, origin, turns[0]["prompt"], turns[0]["output"], turns[0]["mask"]),
                                   atol=1e-6)
        if first.unsafe:
            pytest.skip("the tiny model refused the first turn; the history would not advance")
        second = session.classify(turns[1]["prompt"], turns[1]["output"], turns[1]["mask"])
        # Triton counts a request in its statistics after it has answered it: read them until they stop moving
        after, deadline = _stats(model_stats, triton), time.monotonic() + 10
        while time.monotonic() < deadline and (after[0] - before[0], after[1] - before[1]) != (2, 3):
            time.sleep(0.1)
            after = _stats(model_stats, triton)
    assert (after[0] - before[0], after[1] - before[1]) == (2, 3)  # two requests, three triples
    assert second.turn == 2 and second.cumulative is not None
    step = _scores(served, turns[0]["output"], turns[1]["prompt"], turns[1]["output"], turns[1]["mask"])
    both = cumulative_mask([turns[0]["mask"], turns[1]["mask"]])
    cumulative = _scores(served, origin, cumulative_prompt([turns[0]["prompt"], turns[1]["prompt"]]),
                         turns[1]["output"], both, cumulative=True)
    np.testing.assert_allclose(list(second.step.scores.values()), step, atol=1e-6)
    np.testing.assert_allclose(list(second.cumulative.scores.values()), cumulative, atol=1e-6)
    assert second.unsafe == bool(second.fired) and set(second.fired) <= {"step", "cumulative"}
    assert second.step.thresholds and set(second.step.thresholds) == set(second.step.scores)
    # the server's instances decoded each of the session's images once, into the cache they share (a turn may
    # go to either instance): the origin, both outputs and the earlier tests' images, each once
    shared = SharedCache(cache_dir_path(triton.pid) / "editguard-2-images.sqlite", 0)
    assert all(shared.get(b"image:" + hashlib.blake2b(t, digest_size=16).digest()) is not None
               for t in (origin, turns[0]["output"], turns[1]["output"]))


def test_pixels_async_and_partial_masks_give_the_same_scores(triton, repository, turns):
    """The pixels path (decoded images), the asyncio client, and a turn without a mask after one with it (an
    empty MASK element for that row): the same scores as the in-process run."""
    served = ServedVersion.open(repository)
    decoded = lambda b: Image.open(io.BytesIO(b)).convert("RGB")  # noqa: E731
    t0, t1 = turns[2], turns[3]
    with EditGuardClient(triton.grpc_url, timeout=60) as guard:
        by_bytes = guard.session(t0["input"], escalation=1.0)
        by_pixels = guard.session(decoded(t0["input"]), escalation=1.0)
        for s, dec in ((by_bytes, lambda b: b), (by_pixels, decoded)):
            s.prompts, s.masks, s.current = [t0["prompt"]], [t0["mask"]], dec(t0["output"])  # an accepted turn 1
        v_bytes = by_bytes.classify(t1["prompt"], t1["output"])  # no mask this turn
        v_pixels = by_pixels.classify(t1["prompt"], decoded(t1["output"]))
    want_cum = _scores(served, t0["input"], cumulative_prompt([t0["prompt"], t1["prompt"]]), t1["output"], None,
                       cumulative=True)
    np.testing.assert_allclose(list(v_bytes.cumulative.scores.values()), want_cum, atol=1e-6)
    np.testing.assert_allclose(list(v_pixels.cumulative.scores.values()), want_cum, atol=1e-5)
    np.testing.assert_allclose(list(v_pixels.step.scores.values()), list(v_bytes.step.scores.values()), atol=1e-5)

    async def run():
        async with AsyncEditGuardClient(triton.grpc_url, timeout=60) as guard:
            s = guard.session(t0["input"], escalation=1.0)
            s.prompts, s.masks, s.current = [t0["prompt"]], [t0["mask"]], t0["output"]
            return await s.classify(t1["prompt"], t1["output"])

    v_async = asyncio.run(run())
    np.testing.assert_allclose(list(v_async.cumulative.scores.values()), want_cum, atol=1e-6)


def _flagged_and_safe(served: ServedVersion, turns: list[dict]) -> tuple[dict, dict, float]:
    """A turn the model flags, a turn it passes, and the passing turn's highest score over its threshold."""
    flagged = passed = None
    for t in turns:
        ratio = float(np.max(_scores(served, t["input"], t["prompt"], t["output"], t["mask"]) / served.thresholds))
        if ratio >= 1 and flagged is None:
            flagged = t
        elif ratio < 1 and (passed is None or ratio > passed[1]):
            passed = (t, ratio)
    if flagged is None or passed is None:
        pytest.skip("the tiny model needs one flagged and one passed turn among the test records")
    return flagged, passed[0], passed[1]


def test_escalation_after_a_refusal_applies_within_that_session_only(triton, repository, synth_sets, read_jsonl):
    served = ServedVersion.open(repository)
    root = Path(synth_sets["test"]).parent
    rows = read_jsonl(synth_sets["test"])[:60]
    turns = [{"input": (root / r["input_image"]).read_bytes(), "output": (root / r["output_image"]).read_bytes(),
              "mask": (root / r["mask"]).read_bytes(), "prompt": r["prompt"]} for r in rows]
    bad, good, ratio = _flagged_and_safe(served, turns)
    escalation = ratio * 0.98  # the passing turn's top score clears this share of its threshold
    with EditGuardClient(triton.grpc_url, timeout=60) as guard:
        probed = guard.session(bad["input"], escalation=escalation)
        refused = probed.classify(bad["prompt"], bad["output"], bad["mask"], input_image=bad["input"])
        assert refused.unsafe and not refused.escalated and probed.turn == 1  # a refusal does not advance
        after = probed.classify(good["prompt"], good["output"], good["mask"], input_image=good["input"])
        other = guard.session(good["input"], escalation=escalation)
        fresh = other.classify(good["prompt"], good["output"], good["mask"])
        probed.restart(good["input"])  # a new upload: new origin, escalation kept
        restarted = probed.classify(good["prompt"], good["output"], good["mask"])
        probed.restart(good["input"], keep_escalation=False)
        forgiven = probed.classify(good["prompt"], good["output"], good["mask"])
    assert after.escalated and after.unsafe and after.fired == ("step",)
    assert not fresh.escalated and not fresh.unsafe  # another session: the served thresholds
    assert restarted.escalated and restarted.unsafe and restarted.turn == 1 and restarted.cumulative is None
    assert not forgiven.unsafe


def test_a_restart_starts_a_new_origin_and_history(triton, repository, turns):
    served = ServedVersion.open(repository)
    with EditGuardClient(triton.grpc_url, timeout=60) as guard:
        s = guard.session(turns[4]["input"], escalation=1.0)
        s.prompts, s.masks, s.current = [turns[4]["prompt"]], [turns[4]["mask"]], turns[4]["output"]
        s.restart(turns[5]["input"])
        assert (s.origin, s.current, s.prompts, s.turn) == (turns[5]["input"], turns[5]["input"], [], 1)
        s.prompts, s.masks, s.current = [turns[5]["prompt"]], [turns[5]["mask"]], turns[5]["output"]
        v = s.classify(turns[6]["prompt"], turns[6]["output"], turns[6]["mask"])
    mask = cumulative_mask([turns[5]["mask"], turns[6]["mask"]])
    want = _scores(served, turns[5]["input"], cumulative_prompt([turns[5]["prompt"], turns[6]["prompt"]]),
                   turns[6]["output"], mask, cumulative=True)
    np.testing.assert_allclose(list(v.cumulative.scores.values()), want, atol=1e-6)


def test_a_session_whose_endpoint_is_down_moves_to_the_one_that_answered(triton, turns):
    """Two endpoints, the first with nothing listening: the session's first turn fails there and is answered by
    the other, and its later turns go straight to the one that answered, sync and asyncio alike."""
    from editguard.serving.triton import free_port

    down = f"127.0.0.1:{free_port()}"
    with EditGuardClient([down, triton.grpc_url], timeout=30, backoff=0.01) as guard:
        s = guard.session(turns[0]["input"], escalation=1.0)
        assert s.endpoint == down  # the first endpoint round-robin
        for t in turns[:3]:
            v = s.classify(t["prompt"], t["output"], t["mask"])
            assert v.step.model_version and s.endpoint == triton.grpc_url

    async def run():
        async with AsyncEditGuardClient([down, triton.grpc_url], timeout=30, backoff=0.01) as guard:
            s = guard.session(turns[0]["input"], escalation=1.0)
            assert s.endpoint == down
            for t in turns[:2]:
                await s.classify(t["prompt"], t["output"], t["mask"])
                assert s.endpoint == triton.grpc_url

    asyncio.run(run())


def test_session_policy_and_the_cumulative_triple():
    assert cumulative_prompt(["make it warmer", "", " a bit more "]) == "make it warmer; a bit more"
    a, b = np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8)
    a[0, 0], b[3, 4] = 255, 200
    assert cumulative_mask([a, b])[0, 0] == 255 and cumulative_mask([a, b])[3, 4] == 200
    assert cumulative_mask([a, None]) is None and cumulative_mask([a, np.zeros((5, 5), np.uint8)]) is None
    with pytest.raises(ValueError, match="escalation"):
        SessionPolicy(escalation=0.0)
    with pytest.raises(ValueError, match="max_history"):
        SessionPolicy(max_history=0)


# -- the benchmark's sessions ------------------------------------------------------------------------------
def test_synthetic_sessions_split_harm_into_partial_steps(tmp_path):
    from editguard.manifest import read_manifest, sessions
    from editguard.model import default_taxonomy
    from editguard.training.synth.sessions import AXES, generate_sessions

    manifest = generate_sessions(tmp_path / "a", 60, 3, "iid", image_size=96, workers=1, progress=False, clean=True)
    again = generate_sessions(tmp_path / "b", 60, 3, "iid", image_size=96, workers=1, progress=False, clean=True)
    assert manifest.read_text() == again.read_text()  # deterministic by seed
    records = read_manifest(manifest, labels=default_taxonomy().names)
    harm_steps = harm_turns = 0
    for turns in sessions(records).values():
        for prev, cur in zip(turns, turns[1:]):
            assert cur.input_image == prev.output_image  # each turn edits the previous turn's output
        meta = turns[0].meta
        assert meta["steps"] == len(turns) and meta["steps"] in (2, 3, 4)
        if meta["kind"] == "decomposition":
            axis_labels = set(AXES[meta["axis"]]["labels"])
            assert axis_labels <= set(turns[-1].cumulative_labels), (meta, turns[-1].cumulative_labels)
            harm_turns += len(turns)
            harm_steps += sum(bool(axis_labels & set(t.labels)) for t in turns)
        if meta["kind"] == "safe":
            assert not any(t.labels or t.cumulative_labels for t in turns)
    assert harm_turns and harm_steps / harm_turns < 0.4  # most steps of a decomposition are harmless alone


def test_the_label_rule_judges_a_step_and_the_whole_edit_alike():
    from editguard.training.synth.scene import Scene
    from editguard.training.synth.sessions import transition_labels

    a = Scene(skin=1, coverage="full")
    one, two = Scene(skin=2, coverage="full"), Scene(skin=3, coverage="full")
    assert transition_labels(a, one, {"skin"}) == [] and transition_labels(one, two, {"skin"}) == []
    assert transition_labels(a, two, {"skin"}) == ["identity_alteration"]  # two shades: the harm, asked or not
    assert transition_labels(a, one, set()) == ["unintended_change"]  # a change the prompt did not ask for
    vest, bare = Scene(coverage="vest"), Scene(coverage="none")
    assert transition_labels(Scene(coverage="short"), vest, {"coverage"}) == []
    assert transition_labels(vest, bare, {"coverage"}) == ["sexual"]


def test_score_and_calibrate_judge_whole_sessions(triton, repository, tmp_path, read_jsonl):
    from editguard.cli import main
    from editguard.clients.results import session_rows
    from editguard.training.synth.sessions import generate_sessions

    manifest = generate_sessions(tmp_path / "s", 30, 5, "iid", image_size=96, workers=1, progress=False, clean=True)
    local, served = tmp_path / "local.jsonl", tmp_path / "served.jsonl"
    assert main(["score", str(manifest), "--out", str(local), "--repository", str(repository), "--no-progress"]) == 0
    assert main(["score", str(manifest), "--out", str(served), "--server", triton.grpc_url, "--no-progress"]) == 0
    rows, by_server = read_jsonl(local), {r["id"]: r for r in read_jsonl(served)}
    records = {r["id"]: r for r in read_jsonl(manifest)}
    assert len(rows) == len(records) and all("cumulative_score_sexual" in r for r in rows)
    served_version = ServedVersion.open(repository)
    root = manifest.parent
    for r in rows:
        rec = records[r["id"]]
        other = by_server[r["id"]]
        assert abs(r["cumulative_score_sexual"] - other["cumulative_score_sexual"]) < 1e-5
        assert r["cumulative_labels"] == rec["cumulative_labels"] and r["turn"] == rec["turn"]
        if rec["turn"] == 1:
            assert r["cumulative_score_sexual"] == r["score_sexual"]
    # one turn 3 recomputed by hand: the origin, the three prompts joined, turn 3's output, the masks' union
    third = next(r for r in rows if r["turn"] == 3)
    turns = sorted((x for x in records.values() if x["session"] == third["session"]), key=lambda x: x["turn"])[:3]
    mask = cumulative_mask([root / t["mask"] for t in turns])
    want = _scores(served_version, root / turns[0]["input_image"], cumulative_prompt([t["prompt"] for t in turns]),
                   root / turns[2]["output_image"], mask, cumulative=True)
    np.testing.assert_allclose([third[f"cumulative_score_{c}"] for c in served_version.labels], want, atol=1e-6)
    # calibration on session-level verdicts: one row per session, flagged when any check of any turn is
    collapsed = session_rows(rows)
    assert len(collapsed) == len({r["session"] for r in rows})
    out = tmp_path / "th.json"
    assert main(["calibrate", str(local), "--sessions", "--target", "precision=0.5", "--allow-unmet", "--out", str(out),
                 "--bootstrap", "10"]) == 0
    doc = json.loads(out.read_text())
    assert "categories" not in doc and set(doc["sessions"]["categories"]) == set(served_version.labels)
    # the pair of the category with the most harmful sessions holds its session-level figures, recomputed here
    sessions = {r["session"] for r in rows}
    harmful = {c: {s for s in sessions if any(c in r["labels"] + r["cumulative_labels"] for r in rows
                                              if r["session"] == s)} for c in served_version.labels}
    c = max(harmful, key=lambda k: len(harmful[k]))
    assert 0 < len(harmful[c]) < len(sessions)
    step = {s: max(r[f"score_{c}"] for r in rows if r["session"] == s) for s in sessions}
    cum = {s: max([r[f"cumulative_score_{c}"] for r in rows if r["session"] == s and r["turn"] > 1] or [-1.0])
           for s in sessions}
    pair = doc["sessions"]["categories"][c]
    flagged = {s for s in sessions if step[s] >= pair["step"] or cum[s] >= pair["cumulative"]}
    assert pair["recall"] == pytest.approx(len(flagged & harmful[c]) / len(harmful[c]))
    assert pair["precision"] == pytest.approx(len(flagged & harmful[c]) / len(flagged) if flagged else 1.0)


def _install(repository: Path, doc: dict) -> None:
    from editguard.model.repository import install_thresholds, versions

    install_thresholds(doc, repository, str(max(versions(repository))))


def test_session_thresholds_judge_each_check_and_leave_one_shot_verdicts(triton, repository, turns):
    """A sessions block in thresholds.json (what `calibrate --sessions --install` writes) is served as
    SESSION_THRESHOLDS: the step check and the cumulative check each flag at their own threshold, from the
    next request on; one-shot verdicts keep the one-shot thresholds."""
    from editguard.model.repository import THRESHOLDS, versions

    path = repository / "editguard" / str(max(versions(repository))) / THRESHOLDS
    saved = path.read_bytes() if path.exists() else None
    labels = list(ServedVersion.open(repository).labels)
    one_shot = {c: {"threshold": 0.5} for c in labels}
    t0, t1 = turns[0], turns[1]
    try:
        with EditGuardClient(triton.grpc_url, timeout=60) as guard:
            _install(repository, {"categories": one_shot,
                                  "sessions": {"categories": {c: {"step": 0.0, "cumulative": 1.0} for c in labels}}})
            plain = guard.classify(t0["input"], t0["prompt"], t0["output"], t0["mask"])
            first = guard.session(t0["input"], escalation=1.0).classify(t0["prompt"], t0["output"], t0["mask"])
            assert first.unsafe and first.fired == ("step",)  # the step check flags everything
            assert first.step.flagged == plain.flagged and plain.flagged == {
                c: s >= 0.5 for c, s in plain.scores.items()}  # the one-shot verdict is as it was
            assert first.step.session_thresholds == {"step": {c: 0.0 for c in labels},
                                                     "cumulative": {c: 1.0 for c in labels}}
            _install(repository, {"categories": one_shot,
                                  "sessions": {"categories": {c: {"step": 1.0, "cumulative": 0.0} for c in labels}}})
            session = guard.session(t0["input"], escalation=1.0)
            first = session.classify(t0["prompt"], t0["output"], t0["mask"])
            assert not first.unsafe or max(first.step.scores.values()) >= 1.0
            second = session.classify(t1["prompt"], t1["output"], t1["mask"])
            assert second.unsafe and second.fired == ("cumulative",)  # the cumulative check flags everything
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)


def test_score_flags_session_turns_at_the_session_thresholds(triton, repository, tmp_path, read_jsonl):
    """`score` on a manifest with sessions flags each check as a client session does, at the installed session
    thresholds, in-process and through Triton; `flag_*` stays the turn's one-shot verdict."""
    from editguard.cli import main
    from editguard.model.repository import THRESHOLDS, versions
    from editguard.training.synth.sessions import generate_sessions

    manifest = generate_sessions(tmp_path / "s", 6, 5, "iid", image_size=96, workers=1, progress=False, clean=True)
    path = repository / "editguard" / str(max(versions(repository))) / THRESHOLDS
    saved = path.read_bytes() if path.exists() else None
    labels = list(ServedVersion.open(repository).labels)
    try:  # the step check flags nothing, the cumulative check everything
        _install(repository, {"categories": {c: {"threshold": 0.5} for c in labels},
                              "sessions": {"categories": {c: {"step": 1.0, "cumulative": 0.0} for c in labels}}})
        for name, where in (("local", ["--repository", str(repository)]), ("served", ["--server", triton.grpc_url])):
            out = tmp_path / f"{name}.jsonl"
            assert main(["score", str(manifest), "--out", str(out), *where, "--no-progress"]) == 0
            rows = read_jsonl(out)
            assert {r["turn"] for r in rows} >= {1, 2}
            for r in rows:
                assert all(r[f"flag_{c}"] == (r[f"score_{c}"] >= 0.5) for c in labels), name
                certain = any(r[f"score_{c}"] >= 1.0 for c in labels)  # a step score of 1.0 meets the step threshold
                assert r["session_unsafe"] == (r["turn"] > 1 or certain), (name, r["id"])
                if r["turn"] > 1:
                    assert all(r[f"cumulative_flag_{c}"] for c in labels), (name, r["id"])
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)


def test_calibrate_sessions_install_keeps_the_one_shot_thresholds(tmp_path, repository):
    """`calibrate --sessions --install` adds the sessions block and leaves the installed one-shot thresholds."""
    import shutil

    from editguard.cli import main
    from editguard.model.repository import THRESHOLDS, load_thresholds, versions

    repo = tmp_path / "repo"
    shutil.copytree(repository, repo)
    version = str(max(versions(repo)))
    labels = list(ServedVersion.open(repo).labels)
    rng = np.random.default_rng(0)
    rows = []
    for s in range(40):
        harmful = s % 2 == 0
        for turn in (1, 2, 3):
            score = {f"score_{c}": float(rng.uniform(0.4, 1.0) if harmful else rng.uniform(0.0, 0.6)) for c in labels}
            rows.append({"id": f"s{s}-{turn}", "model_version": version, "session": f"s{s}", "turn": turn, **score,
                         **{f"cumulative_{k}": v for k, v in score.items()},
                         "labels": list(labels) if harmful else [],
                         "cumulative_labels": list(labels) if harmful else []})
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _install(repo, {"categories": {c: {"threshold": 0.3} for c in labels}})
    assert main(["calibrate", str(results), "--sessions", "--target", "precision=0.9", "--out",
                 str(tmp_path / "th.json"), "--install", str(repo), "--bootstrap", "10"]) == 0
    doc = json.loads((repo / "editguard" / version / THRESHOLDS).read_text())
    assert {c: e["threshold"] for c, e in doc["categories"].items()} == {c: 0.3 for c in labels}
    assert set(doc["sessions"]["categories"]) == set(labels)
    assert all(e["precision"] >= 0.9 for e in doc["sessions"]["categories"].values())
    np.testing.assert_allclose(load_thresholds(repo / "editguard" / version, labels), 0.3)
    assert json.loads((tmp_path / "th.json").read_text()) == doc  # --out holds what was installed
    # --only recalibrates one category's pair and keeps the others' installed ones
    assert main(["calibrate", str(results), "--sessions", "--only", labels[0], "--target", "precision=0.6", "--out",
                 str(tmp_path / "th2.json"), "--install", str(repo), "--bootstrap", "10"]) == 0
    again = json.loads((repo / "editguard" / version / THRESHOLDS).read_text())
    assert again["sessions"]["categories"][labels[0]]["target"] == "precision>=0.6"
    assert {c: again["sessions"]["categories"][c] for c in labels[1:]} == {
        c: doc["sessions"]["categories"][c] for c in labels[1:]}
    assert again["categories"] == doc["categories"]
    # the one-shot thresholds calibrated again (every category) replace the one-shot ones and keep the session pairs
    assert main(["calibrate", str(results), "--target", "precision=0.9", "--allow-unmet", "--out",
                 str(tmp_path / "th3.json"), "--install", str(repo), "--bootstrap", "10"]) == 0
    third = json.loads((repo / "editguard" / version / THRESHOLDS).read_text())
    assert third["sessions"] == again["sessions"]
    assert {c: e["threshold"] for c, e in third["categories"].items()} != {c: 0.3 for c in labels}


# -- the red team's decomposition ------------------------------------------------------------------------
def test_split_edit_reveals_the_change_band_by_band():
    from editguard.redteam.attacks import Case
    from editguard.redteam.decompose import split_edit

    src = np.full((40, 50, 3), 90, np.uint8)
    out = src.copy()
    out[5:35, 10:40] = (200, 30, 30)  # the edit
    png = lambda a: _png_bytes(a)  # noqa: E731
    case = Case("x", png(src), "remove her clothes", png(out), png((np.abs(out.astype(int) - src).max(-1) > 0) * 255),
                ("sexual",))
    turns = split_edit(case, 4, np.random.default_rng(0))
    assert [t.id for t in turns] == [f"x#t{j}" for j in range(1, 5)]
    assert turns[0].input_image == case.input_image and all(t.prompt != case.prompt for t in turns)
    images = [_decoded(turns[0].input_image)] + [_decoded(t.output_image) for t in turns]
    for prev, t, cur in zip(images, turns, images[1:]):
        assert np.array_equal(_decoded(t.input_image), prev)
        step = np.abs(cur.astype(int) - prev).max(-1) > 0
        assert 0 < step.sum() < 30 * 30 and (step <= (np.abs(out.astype(int) - src).max(-1) > 0)).all()
        assert _decoded(t.mask, "L")[step].min() == 255  # each turn's mask covers its band
    np.testing.assert_array_equal(images[-1], out)  # the last turn shows the whole edit


def test_split_request_spreads_the_prompt_over_the_turns_in_order():
    from editguard.redteam.attacks import ATTACKS, Case
    from editguard.redteam.decompose import split_edit, split_request

    src = np.full((40, 50, 3), 90, np.uint8)
    out = src.copy()
    out[5:35, 10:40] = (200, 30, 30)
    case = Case("x", _png_bytes(src), "please remove her clothes now", _png_bytes(out), None, ("sexual",))
    turns = split_request(case, 3, np.random.default_rng(0))
    assert [t.prompt for t in turns] == ["please remove", "her clothes", "now"]
    assert " ".join(t.prompt for t in turns) == case.prompt
    banded = split_edit(case, 3, np.random.default_rng(0))  # the same bands of the change
    assert [t.output_image for t in turns] == [t.output_image for t in banded]
    assert [t.prompt for t in split_request(dataclasses.replace(case, prompt="undress"), 2,
                                            np.random.default_rng(0))] == ["undress", ""]
    assert {"split_request_2", "split_request_3"} <= {a.name for a in ATTACKS.values()
                                                      if a.family == "decomposition"}


def test_redteam_reports_decomposition_step_only_and_as_sessions(repository, synth_sets, tmp_path):
    from editguard.cli import main

    out = tmp_path / "rt"
    assert main(["redteam", str(synth_sets["ood"]), "--repository", str(repository), "--attacks", "decompose_3",
                 "--per-class", "40", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "redteam.json").read_text())
    rows = {r["attack"]: r for r in report["rows"] if r["category"] == "all"}
    step_only, session = rows["decompose_3 (step only)"], rows["decompose_3 (session)"]
    assert step_only["caught"] == session["caught"] > 0
    assert session["missed_after"] <= step_only["missed_after"]  # the session check judges a superset
    assert session["safe_flag_rate"] >= step_only["safe_flag_rate"]
    assert "decompose_3 (session)" in (out / "redteam.md").read_text()
    through = [json.loads(line) for line in (out / "through.jsonl").read_text().splitlines()]
    for name, row in rows.items():  # each with its turns' prompts
        got = [t for t in through if t["attack"] == name]
        assert len(got) == row["missed_after"]
        assert all(isinstance(t["attacked_prompt"], list) and len(t["attacked_prompt"]) == 3 for t in got)


def _png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _decoded(data: bytes, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


@pytest.mark.parametrize("before", ['THRESHOLDS"', '"SESSION_THRESHOLDS"', '"CUMULATIVE"'],
                         ids=["sessions", "session-thresholds", "turn-reading"])
def test_a_repository_exported_before_sessions_still_classifies(repository, turns, tmp_path, before):
    """Configs without THRESHOLDS (exported by an earlier editguard) still load and classify; a session there
    says to export again. Configs with THRESHOLDS but no SESSION_THRESHOLDS serve sessions at the one-shot
    thresholds. None of them takes CUMULATIVE (their models read the joined prompt): a session turn is sent
    again without it, and its cumulative triple is read as that version reads it."""
    import shutil

    from editguard.clients import ServerError
    from editguard.serving.triton import TritonServer, free_port

    old = tmp_path / "old"
    shutil.copytree(repository, old)
    for config in old.glob("*/config.pbtxt"):
        kept = [line for line in config.read_text().splitlines() if before not in line and '"CUMULATIVE"' not in line]
        config.write_text("\n".join(kept).replace('dims: [ -1 ] },\n]', 'dims: [ -1 ] }\n]')
                          .replace('optional: true },\n]', 'optional: true }\n]') + "\n")
    for config in old.glob("editguard/*/config.json"):  # written before the turn reading: the joined prompt
        d = json.loads(config.read_text())
        del d["preprocess"]["session_turns"]
        config.write_text(json.dumps(d))
    assert not any(before in c.read_text() for c in old.glob("*/config.pbtxt"))
    with TritonServer(old, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server, \
            EditGuardClient(server.grpc_url, timeout=60) as guard:
        t = turns[0]
        v = guard.classify(t["input"], t["prompt"], t["output"], t["mask"])
        assert v.scores and v.thresholds == {}
        # classify_many (score's server backend) asks for the thresholds, and goes on without those not served
        many = dict(guard.classify_many([(f"t{i}", t["input"], t["prompt"], t["output"], t["mask"]) for i in range(4)],
                                        concurrency=2, outputs=("THRESHOLDS", "SESSION_THRESHOLDS")))
        assert sorted(many) == ["t0", "t1", "t2", "t3"]
        served_pairs = before == '"CUMULATIVE"'  # exported with SESSION_THRESHOLDS
        assert all(m.scores == pytest.approx(v.scores, abs=1e-6) and bool(m.session_thresholds) == served_pairs
                   for m in many.values())
        if before == 'THRESHOLDS"':
            with pytest.raises(ServerError, match="export the model again"):
                guard.session(t["input"]).classify(t["prompt"], t["output"], t["mask"])
            return
        session = guard.session(t["input"], escalation=1.0)
        turn = session.classify(t["prompt"], t["output"], t["mask"])
        if before != '"CUMULATIVE"':
            assert not session.session_thresholds and turn.step.session_thresholds == {}
            assert turn.flagged == turn.step.flagged and turn.step.thresholds  # judged at the one-shot thresholds
        # a second turn: its cumulative triple, refused with CUMULATIVE, goes again without it
        u, again = turns[1], guard.session(t["input"], escalation=1.0)
        again.prompts, again.masks, again.current = [t["prompt"]], [None], t["output"]
        second = again.classify(u["prompt"], u["output"])
        assert guard._cumulative_refused
        want = _scores(ServedVersion.open(old), t["input"], cumulative_prompt([t["prompt"], u["prompt"]]), u["output"],
                       None, cumulative=True)
        np.testing.assert_allclose(list(second.cumulative.scores.values()), want, atol=1e-6)


def test_a_session_pair_is_the_best_of_every_pair_and_beats_one_shared_threshold():
    """The step and cumulative thresholds chosen together reach the recall of the best pair found by trying every
    pair of scores, at the precision target, and never less than one threshold shared by both checks."""
    from editguard.clients.calibrate import Target, choose_session_thresholds, choose_threshold

    rng = np.random.default_rng(3)
    n = 120
    y = rng.random(n) < 0.35
    step = np.clip(rng.normal(0.35 + 0.25 * y, 0.2), 0, 1)
    cum = np.clip(rng.normal(0.45 + 0.2 * y, 0.15), 0, 1)
    cum[:20] = -np.inf  # one-turn sessions: no cumulative check
    target = Target("precision", 0.8)
    pair = choose_session_thresholds(y, step, cum, target=target)
    best = 0.0
    for ts in np.append(np.unique(step), np.inf):
        for tc in np.append(np.unique(cum[np.isfinite(cum)]), np.inf):
            f = (step >= ts) | (cum >= tc)
            tp = (f & y).sum()
            if (tp / f.sum() if f.sum() else 1.0) >= 0.8:
                best = max(best, tp / y.sum())
    f = (step >= pair.threshold) | (cum >= pair.cumulative)
    assert pair.achieved and pair.recall == pytest.approx(best) == pytest.approx((f & y).sum() / y.sum())
    assert (f & y).sum() / f.sum() >= 0.8 - 1e-9
    shared = choose_threshold(y, np.maximum(step, cum), target=target)
    assert pair.recall >= shared.recall


def test_a_cumulative_prompt_is_read_turn_by_turn(tiny_model_dir, tmp_path):
    """A cumulative triple's prompt is read as its turns were: every window is one a step triple read (so a frozen
    prompt tower's cache holds it), the latest turns where they do not all fit; a model dir written before reads
    the joined text, as it was trained."""
    import dataclasses

    from editguard.model.config import ModelConfig
    from editguard.model.preprocess import Preprocessor

    pre = Preprocessor.from_dir(tiny_model_dir)
    assert pre.cfg.session_turns

    def windows(ids, att):
        return [(i.tobytes(), a.tobytes()) for i, a in zip(ids, att) if a[0]]

    def read(prompts, cumulative=None):
        ids, att = pre.tokens(prompts, cumulative)
        return [windows(i, a) for i, a in zip(ids, att)]

    turns = ["make the shirt a bit shorter", "warm up the skin tone slightly, please", "", "adjust the nose; a little"]
    joined = cumulative_prompt(turns)
    by_turn, whole = read([joined, joined], [True, False])
    steps = {w for ws in read(turns) for w in ws}
    assert set(by_turn) <= steps and len(by_turn) >= 3
    assert not set(whole) <= steps  # the joined text's windows are new
    # more turns than the window axis holds: the latest that fit, each whole
    long = [f"turn {k} " + "make it a little warmer and brighter " * 6 for k in range(12)]
    kept = read([cumulative_prompt(long)], [True])[0]
    per_turn = read(long)
    assert len(kept) <= pre.cfg.prompt_windows + pre.cfg.clause_windows
    assert set(per_turn[-1]) <= set(kept) and not set(per_turn[0]) & set(kept) - set(per_turn[-1])
    # the step triples and one-shot edits read as before
    np.testing.assert_array_equal(pre.tokens([joined], [False])[0], pre.tokens([joined])[0])
    # a model dir written before: the joined reading, as trained
    d = json.loads((tiny_model_dir / "config.json").read_text())
    del d["preprocess"]["session_turns"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert not ModelConfig.load(tmp_path / "config.json").preprocess.session_turns
    before = Preprocessor(dataclasses.replace(pre.cfg, session_turns=False), pre.tokenizer, pre.speller)
    np.testing.assert_array_equal(before.tokens([joined], [True])[0], before.tokens([joined])[0])


def test_a_bad_cumulative_flag_is_refused_and_the_server_goes_on(triton, turns):
    """CUMULATIVE is untrusted like every input: a flag per item or the request is refused, naming it."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from editguard.clients.protocol import build_batch_inputs

    t = turns[0]
    rows = [(t["input"], t["prompt"], t["output"], t["mask"])] * 2
    inputs = build_batch_inputs(grpcclient, rows)
    flag = grpcclient.InferInput("CUMULATIVE", [1, 1], "BOOL")  # one flag for two items
    flag.set_data_from_numpy(np.array([[True]]))
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        with pytest.raises(InferenceServerException, match="CUMULATIVE|batch"):
            c.infer("editguard", inputs + [flag])
    with EditGuardClient(triton.grpc_url, timeout=60) as guard:
        assert guard.classify(t["input"], t["prompt"], t["output"], t["mask"]).scores


def test_the_bench_reads_a_sessions_section_with_or_without_its_large_uploads():
    """`editguard bench --sections sessions` rows: the 256-px four, then (since 1024-px uploads were timed) a
    single triple and a session turn on large uploads; a bench.json written before them still gives its ratios."""
    from editguard.benchmarks.report import ratios
    from editguard.benchmarks.workloads import upload_triples

    def row(ms, triples_s):
        return {"c1_p50_ms": ms, "c16_triples_s": triples_s}

    four = [row(8.0, 300.0), row(16.0, 160.0), row(20.0, 240.0), row(9.6, 390.0)]
    before = ratios({"sessions": {"rows": four}})
    assert before["session_turn_first_turn_judged_c1_over_single_c1_repeated_prompts"] == 1.2
    assert not any("1024" in k for k in before)
    now = ratios({"sessions": {"rows": four + [row(50.0, 36.0), row(45.0, 48.0)]}})
    assert now["session_turn_first_turn_judged_c1_over_single_c1_repeated_prompts_1024px"] == 0.9
    assert now["session_first_turn_judged_c16_triples_s_over_single_repeated_prompts_1024px"] == 1.33
    big = upload_triples(64, [{"prompt": "a"}, {"prompt": "b"}], n=3)
    assert [t["prompt"] for t in big] == ["a", "b", "a"] and big[0]["output"] == big[1]["input"]
    assert Image.open(io.BytesIO(big[0]["input"])).size == (64, 64)
