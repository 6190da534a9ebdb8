"""The pixels path: decoded images letterboxed in the client with the server's own preprocessing,
sent as uint8 tensors; a roll-out that changes the preprocessing is recovered from once."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from editguard.clients import AsyncEditGuardClient, EditGuardClient
from editguard.export.writer import ExportConfig, export_version
from editguard.model.config import PreprocessConfig
from editguard.model.pbtxt import read_config
from editguard.model.preprocess import Preprocessor
from editguard.model.repository import CLASSIFIER, CLIENT_MODEL
from editguard.serving.control import load_models
from editguard.serving.triton import TritonServer, free_port


def decoded(t: dict) -> tuple:
    return tuple(Image.open(io.BytesIO(t[k])) for k in ("input", "output", "mask"))


def test_pixels_path_scores_equal_the_bytes_path(triton, synth_sets, png, triple_bytes):
    triples = triple_bytes(synth_sets["test"], 4)
    with EditGuardClient(triton.grpc_url) as guard:
        guard.wait_ready()
        for t in triples:
            src, out, mask = decoded(t)
            by_bytes = guard.classify(t["input"], t["prompt"], t["output"], t["mask"])
            by_pixels = guard.classify(src, t["prompt"], np.asarray(out), mask)
            assert by_pixels.scores == pytest.approx(by_bytes.scores, abs=1e-6)
            assert by_pixels.model_version == by_bytes.model_version == "2"
        assert guard.pixels_prep().spec == {"image_size": 64, "resize": "letterbox", "pad_value": 0,
                                            "reducing_gap": 2.0}
        # upload-sized and not square: the letterbox and the box-filter reduction run in the client
        t = triples[0]
        src, out, mask = (im.resize((1000, 700), Image.NEAREST if im.mode == "L" else Image.BICUBIC)
                          for im in decoded(t))
        big_pixels = guard.classify(src, t["prompt"], out, mask)
        big_bytes = guard.classify(png(src), t["prompt"], png(out), png(mask))
        assert big_pixels.scores == pytest.approx(big_bytes.scores, abs=1e-6)

    async def run():
        async with AsyncEditGuardClient(triton.grpc_url) as aguard:
            return await aguard.classify(src, t["prompt"], out, mask)

    assert asyncio.run(run()).scores == pytest.approx(big_bytes.scores, abs=1e-6)


def test_bad_pixels_are_refused_client_side(triton, synth_sets, triple_bytes):
    from editguard.clients import InvalidInputError

    t = triple_bytes(synth_sets["test"], 1)[0]
    src, out, mask = decoded(t)
    with EditGuardClient(triton.grpc_url) as guard:
        with pytest.raises(InvalidInputError, match="mask is 48x48 but the input image is 96x96"):
            guard.classify(src, t["prompt"], out, mask.resize((48, 48)), id="x1")
        with pytest.raises(InvalidInputError, match="x2: input_image: array images must be uint8"):
            guard.classify(np.asarray(src, np.float32), t["prompt"], out, id="x2")


def raw(name: str, arr: np.ndarray) -> grpcclient.InferInput:
    x = grpcclient.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == np.object_ else
                              {np.uint8: "UINT8", np.float32: "FP32"}[arr.dtype.type])
    x.set_data_from_numpy(arr)
    return x


SPEC = json.dumps({"image_size": 64, "resize": "letterbox", "pad_value": 0, "reducing_gap": 2.0}).encode()
IMG, MASK = np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 64, 64), np.uint8)
PROMPT = np.array([[b"make it night"]], dtype=np.object_)


def pixels_request(**over):
    fields = {"INPUT_PIXELS": IMG, "OUTPUT_PIXELS": IMG, "MASK_PIXELS": MASK, "PROMPT": PROMPT,
              "PIXELS_SPEC": np.array([[SPEC]], dtype=np.object_), **over}
    return [raw(k, v) for k, v in fields.items() if v is not None]


@pytest.mark.parametrize("over, words", [
    ({"PIXELS_SPEC": None}, "PIXELS_SPEC: PIXELS_SPEC is required on the pixels path"),
    ({"OUTPUT_PIXELS": None}, "OUTPUT_PIXELS: OUTPUT_PIXELS is required"),
    ({"PIXELS_SPEC": np.array([[b"{not json"]], dtype=np.object_)}, "PIXELS_SPEC: not a JSON object"),
    ({"PIXELS_SPEC": np.array([[SPEC.replace(b'"pad_value": 0', b'"pad_value": 9')]], dtype=np.object_)},
     "PIXELS_SPEC: pixels were prepared for"),
    ({"INPUT_PIXELS": np.zeros((1, 32, 32, 3), np.uint8), "OUTPUT_PIXELS": np.zeros((1, 32, 32, 3), np.uint8)},
     "INPUT_PIXELS: item shape is [32, 32, 3]; version 2 takes [64, 64, 3]"),
    ({"MASK_PIXELS": np.zeros((1, 64, 63), np.uint8)}, "MASK_PIXELS: item shape is [64, 63]"),
    ({"INPUT_PIXELS": np.zeros((1, 64, 64, 3), np.float32)}, "INPUT_PIXELS"),
    ({"INPUT_IMAGE": np.array([[b"\x89PNG"]], dtype=np.object_)}, "INPUT_IMAGE: send encoded images"),
])
def test_bad_pixel_tensors_get_clear_errors_and_others_still_work(triton, over, words):
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        with pytest.raises(InferenceServerException) as e:
            c.infer(CLIENT_MODEL, pixels_request(**over))
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and words in str(e.value), str(e.value)
        scores = c.infer(CLIENT_MODEL, pixels_request()).as_numpy("SCORES")  # a good one right after
        assert scores.shape == (1, 7) and np.isfinite(scores).all()
        assert c.is_model_ready(CLIENT_MODEL) and c.is_model_ready(CLASSIFIER)


def _front_requests(model_stats, server, at_least: int = 0) -> int:
    """Requests the front model answered (Triton counts a per-request error from a Python model as one).
    Triton records a request's statistics after its response is on the wire, so a busy machine can
    read them a moment early: wait up to 10 s for ``at_least``, then read once more."""
    deadline = time.monotonic() + 10
    while True:
        stats = model_stats(server, CLIENT_MODEL)
        n = sum(int(m["inference_stats"].get("success", {}).get("count", 0)) for m in stats)
        if n >= at_least or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def test_a_roll_out_that_changes_the_preprocessing_is_recovered_once(tiny_model_dir, synth_sets, tmp_path, png,
                                                                     triple_bytes, model_stats):
    repo = tmp_path / "repo"
    export_version(ExportConfig(model_dir=str(tiny_model_dir), repository=str(repo)))
    changed = tmp_path / "padded"  # the same network with another letterbox pad: only the pixels differ
    shutil.copytree(tiny_model_dir, changed)
    cfg = json.loads((changed / "config.json").read_text())
    cfg["preprocess"]["pad_value"] = 114
    (changed / "config.json").write_text(json.dumps(cfg))
    t = triple_bytes(synth_sets["test"], 1)[0]
    src, out, mask = decoded(t)
    src = src.resize((96, 60))  # not square: the pad shows
    mask = mask.resize((96, 60))
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server, \
            EditGuardClient(server.grpc_url) as guard:
        first = guard.classify(src, t["prompt"], out, mask)
        assert first.model_version == "1" and guard.pixels_prep().version == "1"
        export_version(ExportConfig(model_dir=str(changed), repository=str(repo)))
        load_models(server.grpc_url, connection=server.connection())
        published = json.loads(read_config(repo / CLIENT_MODEL / "config.pbtxt").parameters["preprocess"].string_value)
        assert published["1"]["pad_value"] == 0 and published["2"]["pad_value"] == 114
        sent = _front_requests(model_stats, server)
        second = guard.classify(src, t["prompt"], out, mask)  # prepared for v1, answered by v2: refused, redone
        assert second.model_version == "2" and guard.pixels_prep().version == "2"
        # exactly one refusal, then the answer
        assert _front_requests(model_stats, server, at_least=sent + 2) == sent + 2
        expected = guard.classify(png(src), t["prompt"], png(out), png(mask))
        assert second.scores == pytest.approx(expected.scores, abs=1e-6)
        assert second.scores != pytest.approx(first.scores, abs=1e-6)  # the pad reached the network


def test_shared_preprocessing_builds_from_a_published_spec():
    cfg = PreprocessConfig(image_size=96, resize="stretch", pad_value=3, reducing_gap=3.0)
    assert PreprocessConfig.from_pixels_spec(cfg.pixels_spec()).pixels_spec() == cfg.pixels_spec()
    with pytest.raises(ValueError, match="upgrade the client"):
        PreprocessConfig.from_pixels_spec({**cfg.pixels_spec(), "colour_space": "lab"})
    pre = Preprocessor(cfg, tokenizer=None)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 200, 3), np.uint8))
    mask = Image.fromarray((rng.random((300, 200)) > 0.5).astype(np.uint8) * 255)
    got = pre.pixels(img, img, mask)
    assert got["input_image"].shape == (96, 96, 3) and got["mask"].shape == (96, 96)
    # a grayscale mask skips the RGB round trip and gives the same pixels as an RGB one
    np.testing.assert_array_equal(got["mask"], pre.pixels(img, img, mask.convert("RGB"))["mask"])
