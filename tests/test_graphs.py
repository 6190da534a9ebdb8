"""The production graph: a frozen prompt tower as its own cached model, editguard as an ensemble in front
of the classifier, and every config checked against the graph it serves. A real Triton, over gRPC."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from editguard.cli import main
from editguard.clients import EditGuardClient
from editguard.clients.client import build_inputs
from editguard.export.check import check_repository
from editguard.export.writer import ExportConfig, export_version
from editguard.model.pbtxt import read_config, write_config
from editguard.model.repository import CLASSIFIER, CLIENT_MODEL, PREPARE, PROMPTS, VERDICTS
from editguard.serving.control import load_models
from editguard.serving.served import ServedVersion
from editguard.serving.triton import TritonServer, free_port

PROMPT = PROMPTS[CLIENT_MODEL]


@pytest.fixture(scope="module")
def frozen_model(few_triples, tmp_path_factory) -> Path:
    """The tiny architecture with its prompt tower frozen (as in every pretrained preset), trained one epoch."""
    from editguard.model.config import preset_config
    from editguard.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("frozen")
    cfg = preset_config("tiny").to_dict()
    cfg["text_encoder"].update(freeze=True, normalize=True)
    (root / "preset.json").write_text(json.dumps({k: cfg[k] for k in ("image_encoder", "text_encoder", "preprocess",
                                                                       "fusion_width")}))
    train(TrainConfig(train=str(few_triples), val=str(few_triples), out=str(root / "model"),
                      preset=str(root / "preset.json"), epochs=1, progress=False))
    return root / "model"


@pytest.fixture(scope="module")
def ensemble(frozen_model, tmp_path_factory):
    """Versions 1 (FP32) and 2 (FP16) of the frozen-prompt model, served as the ensemble graph."""
    repo = tmp_path_factory.mktemp("ensemble-repo")
    for fp16 in (False, True):
        export_version(ExportConfig(model_dir=str(frozen_model), repository=str(repo), max_batch=16, fp16=fp16))
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      graph="ensemble") as server:
        yield server


def _infer(url: str, t: dict, corrupt: bool = False):
    with grpcclient.InferenceServerClient(url) as c:
        return c.infer(CLIENT_MODEL, build_inputs(grpcclient, t["input"], t["prompt"], t["output"][:60] if corrupt
                                           else t["output"], t["mask"]))


def _stats(model_stats, server, model: str, version: str = "2") -> dict:
    s = model_stats(server, model, version)[0]
    return {k: int(s["inference_stats"].get(k, {}).get("count", 0)) for k in ("success", "cache_hit", "cache_miss")} | {
        "inferences": int(s.get("inference_count", 0)), "executions": int(s.get("execution_count", 0))}


def test_a_frozen_prompt_tower_is_exported_as_its_own_model(ensemble, few_triples, triple_bytes):
    repo = Path(ensemble.repository)
    assert (repo / PROMPT / "2" / "model.onnx").exists()
    clf = read_config(repo / CLASSIFIER / "configs" / "onnxruntime.pbtxt")
    assert [i.name for i in clf.input][-1] == "prompt_embedding" and "input_ids" not in [i.name for i in clf.input]
    assert read_config(repo / PROMPT / "config.pbtxt").response_cache.enable
    steps = read_config(repo / CLIENT_MODEL / "configs" / "ensemble.pbtxt").ensemble_scheduling.step
    assert [s.model_name for s in steps] == [PREPARE, PROMPT, CLASSIFIER, VERDICTS]
    meta = json.loads((repo / CLASSIFIER / "2" / "export.json").read_text())
    assert meta["parity_fp16"]["max_abs_prob"] <= 1e-2  # over the chain: prompt graph into classifier graph
    # in-process (the inline graph), the prompt tower runs behind an LRU: each distinct window once (a prompt's
    # windows, then its clauses)
    served = ServedVersion.open(repo)
    triples = triple_bytes(few_triples, 8)
    items = [served.prepare(t["input"], t["prompt"], t["output"], t["mask"]) for t in triples]
    first = served.probabilities(items)
    windows = [(i.tobytes(), a.tobytes())
               for it in items for i, a in zip(it["input_ids"], it["attention_mask"]) if a[0]]
    distinct = len(set(windows))
    assert distinct >= len({t["prompt"] for t in triples})
    assert (served.prompt.misses, served.prompt.hits) == (distinct, len(windows) - distinct)
    np.testing.assert_array_equal(served.probabilities(items), first)
    assert served.prompt.hits == 2 * len(windows) - distinct


def test_the_prompt_graph_runs_only_the_windows_a_prompt_fills(ensemble, frozen_model):
    """The prompt graph's window axis is dynamic: the server runs a short prompt's one window, not all of them,
    and gets what the whole graph gives (zero rows past the prompt's end). Native configs take any count."""
    from editguard.model.model_dir import load_model_dir
    from editguard.model.preprocess import collate
    from editguard.serving.served import OnnxClassifier

    repo = Path(ensemble.repository)
    _, pre = load_model_dir(frozen_model)
    prompts = ["remove the hat", " ".join(["make the sky a little bluer and warmer"] * 6)]
    batch = collate([pre.triple(np.zeros((8, 8, 3), np.uint8), p, np.zeros((8, 8, 3), np.uint8)) for p in prompts])
    ids, att = batch["input_ids"], batch["attention_mask"]
    filled = int((att[:, :, 0] > 0).sum())
    assert att.shape[1] == pre.cfg.windows and 2 < filled < att.shape[0] * att.shape[1]
    for version in ("1", "2"):
        net = OnnxClassifier(repo / PROMPT / version)
        assert net.windowed
        whole = net.session.run(None, {"input_ids": ids, "attention_mask": att})[0]  # every window run
        shapes, run = [], net.session.run
        net.session.run = lambda names, feed: shapes.append(feed["input_ids"].shape) or run(names, feed)
        windowed = net.run([net.check({"input_ids": ids, "attention_mask": att})])[0]["prompt_embedding"]
        assert shapes == [(filled, 1, att.shape[2])]
        np.testing.assert_allclose(windowed, whole, atol=1e-6 if version == "1" else 1e-3)
        assert not windowed[att[:, :, 0] == 0].any()
        net.session.run = run
        blank = net.run([net.check({"input_ids": ids, "attention_mask": np.zeros_like(att)})])[0]
        assert blank["prompt_embedding"].shape == windowed.shape and not blank["prompt_embedding"].any()
    native = read_config(repo / PROMPT / "configs" / "onnxruntime.pbtxt")
    assert [list(i.dims) for i in native.input] == [[-1, pre.cfg.max_tokens]] * 2


def test_ensemble_serves_the_inline_scores_and_caches_prompts(ensemble, few_triples, triple_bytes, model_stats):
    repo = Path(ensemble.repository)
    triples = triple_bytes(few_triples, 6)
    inline = ServedVersion.open(repo)  # the inline graph's definition (test_serving holds it to the served one)
    expected = inline.probabilities([inline.prepare(t["input"], t["prompt"], t["output"], t["mask"]) for t in triples])
    before = _stats(model_stats, ensemble, PROMPT)
    served = np.concatenate([_infer(ensemble.grpc_url, t).as_numpy("SCORES") for t in triples + triples])
    np.testing.assert_allclose(served[:6], expected, atol=1e-6)
    np.testing.assert_array_equal(served[6:], served[:6])
    after = _stats(model_stats, ensemble, PROMPT)
    distinct = len({t["prompt"] for t in triples})
    assert after["cache_hit"] - before["cache_hit"] >= 12 - distinct  # Triton's response cache answered repeats
    assert after["inferences"] - before["inferences"] <= distinct  # the tower ran once per distinct prompt
    # the pixels path: the client reads the version's preprocessing from the ensemble's parameters
    with EditGuardClient(ensemble.grpc_url) as guard:
        import io

        from PIL import Image

        t = triples[0]
        src, out, mask = (Image.open(io.BytesIO(t[k])) for k in ("input", "output", "mask"))
        assert guard.pixels_prep().version == "2"
        v = guard.classify(src, t["prompt"], out, mask)
        assert list(v.scores.values()) == pytest.approx(expected[0].tolist(), abs=1e-6)


def test_a_session_turn_rides_the_ensemble_as_one_request(ensemble, few_triples, triple_bytes, model_stats):
    """The step and the cumulative triple of a session turn go through the ensemble in one request, with the
    inline graph's scores and the thresholds they were judged at."""
    from editguard.model.session import cumulative_mask, cumulative_prompt

    repo = Path(ensemble.repository)
    t0, t1 = triple_bytes(few_triples, 2, start=6)
    inline = ServedVersion.open(repo)
    mask = cumulative_mask([t0["mask"], t1["mask"]])
    expected = inline.probabilities([inline.prepare(t0["output"], t1["prompt"], t1["output"], t1["mask"]),
                                     inline.prepare(t0["input"], cumulative_prompt([t0["prompt"], t1["prompt"]]),
                                                    t1["output"], mask, cumulative=True)])
    before = _stats(model_stats, ensemble, PREPARE)
    with EditGuardClient(ensemble.grpc_url, timeout=60) as guard:
        session = guard.session(t0["input"], escalation=1.0)
        session.prompts, session.masks, session.current = [t0["prompt"]], [t0["mask"]], t0["output"]
        v = session.classify(t1["prompt"], t1["output"], t1["mask"])
    after = _stats(model_stats, ensemble, PREPARE)
    assert (after["success"] - before["success"], after["inferences"] - before["inferences"]) == (1, 2)
    np.testing.assert_allclose([list(v.step.scores.values()), list(v.cumulative.scores.values())], expected,
                               atol=1e-6)
    assert list(v.step.thresholds.values()) == pytest.approx(inline.thresholds.tolist())


def test_one_corrupt_upload_in_a_batch_fails_alone(ensemble, few_triples, triple_bytes, model_stats, served_metrics):
    """...and the steps count it all under model="editguard", as the inline client model does."""
    scrape, value = served_metrics

    triples = triple_bytes(few_triples, 12)
    before = _stats(model_stats, ensemble, PREPARE)
    metrics_before = scrape(ensemble)

    def one(k: int):
        try:
            return _infer(ensemble.grpc_url, triples[k], corrupt=(k == 5)).as_numpy("SCORES")
        except InferenceServerException as e:
            return e

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    assert isinstance(results[5], InferenceServerException) and "OUTPUT_IMAGE" in results[5].message()
    assert "INVALID_ARG" in str(results[5].status())
    assert all(isinstance(r, np.ndarray) for k, r in enumerate(results) if k != 5)
    after = _stats(model_stats, ensemble, PREPARE)
    assert after["inferences"] - before["inferences"] >= 11
    assert after["executions"] - before["executions"] < after["inferences"] - before["inferences"]  # batched
    metrics = scrape(ensemble)
    d = lambda name, **kw: value(metrics, name, model="editguard", version=2, **kw) - value(  # noqa: E731
        metrics_before, name, model="editguard", version=2, **kw)
    assert d("editguard_triples_total") == 11 and d("editguard_rejected_total") == 1


def test_thresholds_take_effect_without_a_reload(ensemble, few_triples, triple_bytes):
    path = Path(ensemble.repository) / CLIENT_MODEL / "2" / "thresholds.json"
    t = triple_bytes(few_triples, 1)[0]
    labels = (Path(ensemble.repository) / CLIENT_MODEL / "labels.txt").read_text().split()
    try:
        path.write_text(json.dumps({"categories": {c: {"threshold": 0.0} for c in labels}}))
        assert _infer(ensemble.grpc_url, t).as_numpy("FLAGGED").all()
        path.write_text(json.dumps({"categories": {c: {"threshold": 1.0} for c in labels}}))
        res = _infer(ensemble.grpc_url, t)
        assert not res.as_numpy("FLAGGED").any() and not res.as_numpy("UNSAFE").any()
    finally:
        path.unlink(missing_ok=True)


def test_roll_out_a_version_through_the_ensemble(frozen_model, few_triples, triple_bytes, tmp_path, model_stats):
    """Version 3 lands while version 2 serves; after the roll-out every step runs version 3."""
    repo = tmp_path / "repo"
    export_version(ExportConfig(model_dir=str(frozen_model), repository=str(repo), max_batch=16))
    t = triple_bytes(few_triples, 1)[0]
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      graph="ensemble") as server:
        first = _infer(server.grpc_url, t)
        assert first.get_response().model_version == "1"
        r = export_version(ExportConfig(model_dir=str(frozen_model), repository=str(repo), max_batch=16))
        assert r.models == [PROMPT, CLASSIFIER, PREPARE, VERDICTS, CLIENT_MODEL]
        load_models(server.grpc_url, connection=server.connection())
        second = _infer(server.grpc_url, t)
        assert second.get_response().model_version == "2"
        for model in (PREPARE, PROMPT, CLASSIFIER, VERDICTS):
            assert _stats(model_stats, server, model, "2")["success"] >= 1, model
    np.testing.assert_allclose(second.as_numpy("SCORES"), first.as_numpy("SCORES"), atol=1e-6)


# -- check-repository -----------------------------------------------------------------------------------
def _broken(repo: Path, copy: Path, model: str, name: str, edit) -> list[str]:
    """A copy of ``repo`` at ``copy`` with one config edited; the check's errors."""
    shutil.copytree(repo, copy)
    path = copy / model / ("configs/" + name if name != "config.pbtxt" else name)
    cfg = read_config(path)
    edit(cfg)
    write_config(path, cfg)
    return check_repository(copy)


def test_check_repository_catches_each_kind_of_mismatch(ensemble, tmp_path, capsys):
    repo = Path(ensemble.repository)
    assert check_repository(repo) == []
    assert main(["check-repository", str(repo)]) == 0

    def rename(cfg):
        cfg.input[0].name = "pixels"

    def retype(cfg):
        cfg.output[1].data_type = 10  # TYPE_FP16

    def resize(cfg):
        del cfg.input[0].dims[:]
        cfg.input[0].dims.extend([96, 96, 3])

    def unmapped(cfg):
        del cfg.ensemble_scheduling.step[2].input_map["prompt_embedding"]

    def unknown_tensor(cfg):
        cfg.ensemble_scheduling.step[3].input_map["probabilities"] = "scores"

    def no_output(cfg):
        del cfg.ensemble_scheduling.step[3].output_map["UNSAFE"]

    def missing_step(cfg):
        cfg.ensemble_scheduling.step[1].model_name = "editguard_text"

    cases = [
        (CLASSIFIER, "onnxruntime.pbtxt", rename, "input 'pixels': declared in the config, but model.onnx (version 1) "
                                                  "has no such input"),
        (CLASSIFIER, "onnxruntime.pbtxt", rename, "input 'input_image': model.onnx (version 1) needs it"),
        (CLASSIFIER, "tensorrt.pbtxt", retype, "output 'probabilities': config says TYPE_FP16, model.onnx (version 1) "
                                               "has TYPE_FP32"),
        (CLASSIFIER, "onnxruntime.pbtxt", resize, "input 'input_image': config dims [96, 96, 3], model.onnx (version "
                                                  "1) has [64, 64, 3] per item"),
        (PROMPT, "config.pbtxt", rename, "editguard_prompt/config.pbtxt: input 'pixels'"),
        (CLIENT_MODEL, "onnxruntime.pbtxt", unmapped,
         "step 3 (editguard_classifier): required input 'prompt_embedding'"),
        (CLIENT_MODEL, "ensemble.pbtxt", unknown_tensor,
         "step 4 (editguard_verdicts) reads tensor 'scores', which neither"),
        (CLIENT_MODEL, "ensemble.pbtxt", no_output, "output 'UNSAFE': no step of the ensemble produces it"),
        (CLIENT_MODEL, "tensorrt.pbtxt", missing_step, "step 2: model 'editguard_text' is not in"),
    ]
    for k, (model, name, edit, expected) in enumerate(cases):
        errors = _broken(repo, tmp_path / f"broken{k}", model, name, edit)
        assert any(expected in e for e in errors), (expected, errors)
        assert all(str(tmp_path) in e for e in errors)  # each names the file
    # a batch axis fixed below max_batch_size, and a config that does not parse
    copy = tmp_path / "fixed-batch"
    shutil.copytree(repo, copy)
    import onnx

    g = onnx.load(str(copy / PROMPT / "1" / "model.onnx"))
    for v in list(g.graph.input) + list(g.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(g, str(copy / PROMPT / "1" / "model.onnx"))
    (copy / VERDICTS / "config.pbtxt").write_text("name: \"editguard_verdicts\"\ninput [ { name: ")
    old_code = copy / PREPARE / "1" / "model.py"  # as an older release exported it
    old_code.write_text(old_code.read_text().replace("editguard.serving.served", "editguard.model.served"))
    errors = check_repository(copy)
    assert any(f"{old_code}: not the model.py of the installed editguard" in e for e in errors), errors
    assert any("max_batch_size 16, but model.onnx (version 1)'s batch axis is fixed at 4" in e for e in errors), errors
    assert any("editguard_verdicts/config.pbtxt: not a valid Triton model config" in e for e in errors), errors
    capsys.readouterr()
    assert main(["check-repository", str(copy)]) == 1
    out, err = capsys.readouterr()
    assert "fixed at 4" in out and "mismatch(es)" in err


@pytest.mark.slow  # it calls TritonServer.start, which the fast tier refuses
def test_the_native_graphs_need_nvidias_triton(tmp_path):
    """The nvidia-pytriton binary has only the Python backend: asking it for a native graph says what to do."""
    from editguard.serving.triton import TritonError

    if shutil.which("tritonserver"):
        pytest.skip("NVIDIA's tritonserver is on PATH here: the native graphs may load")
    (tmp_path / "repo").mkdir()
    with pytest.raises(TritonError, match="NVIDIA's Triton container.*--graph ensemble"):
        TritonServer(tmp_path / "repo", graph="tensorrt").start()


def test_a_session_turn_reads_its_cumulative_prompt_from_the_cache(ensemble, few_triples, triple_bytes):
    """A session turn's cumulative prompt is read turn by turn: after the steps, it runs no new prompt window
    in-process (the joined text would), and the ensemble, told which row is cumulative, gives the same scores."""
    from editguard.model.session import cumulative_prompt

    repo = Path(ensemble.repository)
    served = ServedVersion.open(repo)
    t = triple_bytes(few_triples, 3)
    prompts = [x["prompt"] for x in t]
    served.probabilities([served.prepare(x["input"], x["prompt"], x["output"], x["mask"]) for x in t])  # the steps
    misses = served.prompt.misses
    joined = cumulative_prompt(prompts)
    want = served.probabilities([served.prepare(t[0]["input"], joined, t[2]["output"], None, cumulative=True)])[0]
    assert served.prompt.misses == misses
    as_text = served.probabilities([served.prepare(t[0]["input"], joined, t[2]["output"], None)])[0]
    assert served.prompt.misses > misses  # the joined text's windows are new
    assert np.abs(as_text - want).max() > 1e-5  # so the scores below tell the two readings apart
    with EditGuardClient(ensemble.grpc_url, timeout=60) as guard:
        session = guard.session(t[0]["input"], escalation=1.0)
        session.prompts, session.masks, session.current = prompts[:2], [None, None], t[1]["output"]
        turn = session.classify(prompts[2], t[2]["output"])
    np.testing.assert_allclose(list(turn.cumulative.scores.values()), want, atol=1e-6)


def test_two_instances_share_decoded_images_and_prompt_windows(frozen_model, synth_sets, triple_bytes, tmp_path):
    """Two served instances of a version (Triton's processes) on one shared directory: the second decodes
    nothing and runs no prompt window the first did, and the scores are those of an instance on its own."""
    from editguard.serving.shared_cache import server_cache_dir

    t = triple_bytes(synth_sets["test"], 1)[0]
    src, out = t["input"], t["output"]
    shared = server_cache_dir(os.getpid(), tmp_path)
    export_version(ExportConfig(model_dir=str(frozen_model), repository=str(tmp_path / "repo"), max_batch=4))
    front, classifier = tmp_path / "repo" / CLIENT_MODEL / "1", tmp_path / "repo" / CLASSIFIER / "1"
    a, b = (ServedVersion(front, classifier, shared_dir=shared) for _ in range(2))
    alone = ServedVersion(front, classifier)
    prompts = ["make the sky pink", "make the sky pink. then give them a hat"]
    scores = [[v.probabilities([v.prepare(src, p, out)]) for p in prompts] for v in (a, b, alone)]
    assert b.pre.images.misses == 0 and b.pre.images.hits == 4 and a.pre.images.misses == 2
    np.testing.assert_array_equal(np.array(scores[0]), np.array(scores[1]))
    np.testing.assert_array_equal(np.array(scores[0]), np.array(scores[2]))
    assert b.prompt.misses == 0 and a.prompt.misses > 0  # the frozen prompt tower's windows are shared too
