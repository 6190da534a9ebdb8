"""A real Triton on the CPU serving an exported tiny model, over real gRPC."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from editguard.clients.client import build_inputs
from editguard.export.writer import ExportConfig, export_version
from editguard.model.model_dir import load_model_dir
from editguard.model.pbtxt import read_config
from editguard.model.preprocess import collate
from editguard.model.repository import CLASSIFIER, CLIENT_MODEL, templates_dir
from editguard.serving.triton import free_port

OUTPUTS = ("SCORES", "FLAGGED", "UNSAFE", "LABELS")


def inputs(t: dict, corrupt: bool = False, mask: bool = True) -> list:
    return build_inputs(grpcclient, t["input"], t["prompt"], t["output"][:60] if corrupt else t["output"],
                        t["mask"] if mask else None)


def infer(url: str, t: dict, version: str = "", **kw):
    with grpcclient.InferenceServerClient(url) as c:
        return c.infer(CLIENT_MODEL, inputs(t, **kw), model_version=version,
                       outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS])


def test_every_config_parses_with_tritons_schema(repository):
    paths = list(templates_dir().rglob("*.pbtxt")) + list(Path(repository).rglob("*.pbtxt"))
    assert len(paths) >= 8
    for p in paths:
        cfg = read_config(p)
        folder = p.parent.parent if p.parent.name == "configs" else p.parent
        assert cfg.name == folder.name and cfg.max_batch_size > 0, p
    client_config = read_config(Path(repository) / CLIENT_MODEL / "config.pbtxt")
    assert [i.name for i in client_config.input] == ["INPUT_IMAGE", "OUTPUT_IMAGE", "PROMPT", "MASK", "INPUT_PIXELS",
                                             "OUTPUT_PIXELS", "MASK_PIXELS", "PIXELS_SPEC", "CUMULATIVE"]
    cumulative = client_config.input[-1]
    assert cumulative.data_type == 1 and list(cumulative.dims) == [1]  # TYPE_BOOL [1]
    encoded = [i for i in client_config.input
               if i.name in ("INPUT_IMAGE", "OUTPUT_IMAGE", "PROMPT", "MASK", "PIXELS_SPEC")]
    assert all(i.data_type == 13 and list(i.dims) == [1] for i in encoded)  # TYPE_STRING [1]
    assert all(i.optional for i in client_config.input if i.name != "PROMPT")
    assert client_config.dynamic_batching.max_queue_delay_microseconds > 0
    assert client_config.parameters["mode"].string_value == "inline"
    specs = json.loads(client_config.parameters["preprocess"].string_value)
    assert set(specs) == {"1", "2"} and specs["2"]["image_size"] == 64
    for variant in ("onnxruntime", "tensorrt", "ensemble"):  # the graphs Triton picks with --model-config-name
        graph = read_config(Path(repository) / CLIENT_MODEL / "configs" / f"{variant}.pbtxt")
        assert graph.platform == "ensemble" and graph.max_batch_size == 32
        assert [s.model_name for s in graph.ensemble_scheduling.step] == [  # tiny's prompt tower is trained: no step
            "editguard_prepare", CLASSIFIER, "editguard_verdicts"]
        assert graph.parameters["preprocess"] == client_config.parameters["preprocess"]  # what pixels clients read
    native = read_config(Path(repository) / CLASSIFIER / "configs" / "onnxruntime.pbtxt")
    assert native.platform == "onnxruntime_onnx" and list(native.input[0].dims) == [64, 64, 3]
    assert native.max_batch_size == 32  # --max-batch rewrote it
    trt = native.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_engine_cache_enable"] == "1"


def test_export_parity_recorded(repository):
    meta = json.loads((Path(repository) / CLASSIFIER / "1" / "export.json").read_text())
    assert meta["parity_fp32"]["max_abs_prob"] <= 1e-4 and meta["parity_fp32"]["n"] == 16
    assert (Path(repository) / CLIENT_MODEL / "labels.txt").read_text().split() == meta["labels"]


def test_served_scores_equal_torch(triton, tiny_model_dir, synth_sets, triple_bytes):
    triples = triple_bytes(synth_sets["test"], 12)
    net, pre = load_model_dir(tiny_model_dir)
    batch = collate([pre.triple(t["input"], t["prompt"], t["output"], t["mask"]) for t in triples])
    with torch.no_grad():
        ref = torch.sigmoid(net(**{k: torch.from_numpy(v) for k, v in batch.items()})).numpy()
    served = np.concatenate([infer(triton.grpc_url, t).as_numpy("SCORES") for t in triples])
    assert np.abs(served - ref).max() <= 1e-4
    res = infer(triton.grpc_url, triples[0])
    assert [x.decode() for x in res.as_numpy("LABELS")[0]] == net.cfg.labels
    assert res.as_numpy("UNSAFE")[0, 0] == res.as_numpy("FLAGGED")[0].any()
    assert res.get_response().model_version == "2"  # the latest version by default


def test_dynamic_batching_forms_batches(triton, synth_sets, model_stats, triple_bytes):
    triples = triple_bytes(synth_sets["test"], 16)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: infer(triton.grpc_url, triples[i % 16]), range(96)))
    assert all(r.as_numpy("SCORES").shape == (1, 7) for r in results)
    stats = model_stats(triton, CLIENT_MODEL)  # it runs the network inline
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for s in stats for b in s.get("batch_stats", [])}
    assert max(sizes) > 1, f"the network only ever ran batch sizes {sizes}"
    print(f"front (inline network) executions by batch size: {dict(sorted(sizes.items()))}")


def test_corrupt_image_fails_alone(triton, synth_sets, triple_bytes):
    triples = triple_bytes(synth_sets["test"], 8)
    before = infer(triton.grpc_url, triples[1]).as_numpy("SCORES")

    def call(i):
        try:
            return infer(triton.grpc_url, triples[i % 8], corrupt=(i == 5))
        except InferenceServerException as e:
            return e

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(24)))
    errors = [r for r in results if isinstance(r, InferenceServerException)]
    assert len(errors) == 1 and "OUTPUT_IMAGE" in str(errors[0]) and "truncated" in str(errors[0])
    assert errors[0].status() == "StatusCode.INVALID_ARGUMENT"
    np.testing.assert_allclose(infer(triton.grpc_url, triples[1]).as_numpy("SCORES"), before, atol=1e-6)


def test_missing_mask_is_accepted(triton, synth_sets, triple_bytes):
    t = triple_bytes(synth_sets["test"], 1)[0]
    assert infer(triton.grpc_url, t, mask=False).as_numpy("SCORES").shape == (1, 7)


def test_two_versions_side_by_side(triton, synth_sets, triple_bytes):
    t = triple_bytes(synth_sets["test"], 1)[0]
    a, b = infer(triton.grpc_url, t, version="1"), infer(triton.grpc_url, t, version="2")
    assert (a.get_response().model_version, b.get_response().model_version) == ("1", "2")
    np.testing.assert_allclose(a.as_numpy("SCORES"), b.as_numpy("SCORES"), atol=1e-6)  # same weights
    conn = triton.connection()  # the repository index is an admin protocol
    with conn.grpc_client(triton.grpc_url) as c:
        index = c.get_model_repository_index(headers=conn.admin_headers()).models
    ready = {m.version for m in index if m.name == CLIENT_MODEL and m.state == "READY"}
    assert ready == {"1", "2"}


def test_classifier_rejects_out_of_range_tokens(triton):
    from editguard.model.config import PreprocessConfig

    w = PreprocessConfig().windows  # the prompt's windows and its clauses
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        arrays = {"input_image": np.zeros((1, 64, 64, 3), np.uint8), "output_image": np.zeros((1, 64, 64, 3), np.uint8),
                  "mask": np.zeros((1, 64, 64), np.uint8), "input_ids": np.full((1, w, 24), 10**6, np.int64),
                  "attention_mask": np.ones((1, w, 24), np.int64)}
        ins = []
        for k, v in arrays.items():
            x = grpcclient.InferInput(k, list(v.shape), {np.uint8: "UINT8", np.int64: "INT64"}[v.dtype.type])
            x.set_data_from_numpy(v)
            ins.append(x)
        with pytest.raises(InferenceServerException, match="token id 1000000 is out of range"):
            c.infer(CLASSIFIER, ins)
        arrays["input_ids"][:] = 5
        ins[3].set_data_from_numpy(arrays["input_ids"])
        assert c.infer(CLASSIFIER, ins).as_numpy("probabilities").shape == (1, 7)


def test_fp16_export_parity(tiny_model_dir, tmp_path):
    r = export_version(ExportConfig(model_dir=str(tiny_model_dir), repository=str(tmp_path), fp16=True))
    assert r.parity_fp16["max_abs_prob"] <= 1e-2 and r.parity_fp32["max_abs_prob"] <= 1e-4
    import onnx

    model = onnx.load(str(tmp_path / CLASSIFIER / "1" / "model.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    with pytest.raises(FileExistsError, match="version 1 of editguard already exists"):
        export_version(ExportConfig(model_dir=str(tiny_model_dir), repository=str(tmp_path), version=1))


def test_tensorrt_plan(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorrt", reason="tensorrt does not import (its wheels come from NVIDIA's own "
                        "index); this test runs where it does, e.g. NVIDIA's container")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    r = export_version(ExportConfig(model_dir=str(tiny_model_dir), repository=str(tmp_path), runtime="tensorrt"))
    assert Path(r.plan).stat().st_size > 0


def test_serve_reports_busy_port_and_missing_repository(repository, tmp_path, capsys):
    import socket

    from editguard.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert main(["serve", "--repository", str(repository), "--grpc-port", str(busy)]) == 4  # could not start
        assert f"grpc port {busy} is in use" in capsys.readouterr().err
    assert main(["serve", "--repository", str(tmp_path / "nope")]) == 4
    assert "create one with `editguard export`" in capsys.readouterr().err


def test_the_ensemble_gives_the_inline_scores(triton, repository, synth_sets, model_stats, triple_bytes):
    """The same repository under --model-config-name=ensemble (prepare -> classifier -> verdicts, the
    production graph over the Python stand-ins) answers with the inline graph's scores, and a corrupt
    upload fails alone."""
    from editguard.serving.triton import TritonServer

    triples = triple_bytes(synth_sets["test"], 4)
    inline = np.concatenate([infer(triton.grpc_url, t).as_numpy("SCORES") for t in triples])
    with TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      graph="ensemble") as other:
        served = np.concatenate([infer(other.grpc_url, t).as_numpy("SCORES") for t in triples])
        with pytest.raises(InferenceServerException, match="OUTPUT_IMAGE: corrupt or truncated image"):
            infer(other.grpc_url, triples[0], corrupt=True)
        stats = model_stats(other, CLASSIFIER, "2")[0]
    np.testing.assert_allclose(served, inline, atol=1e-6)
    assert int(stats["inference_count"]) == 4  # the classifier model ran every triple
