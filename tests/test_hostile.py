"""Hostile input against the real server: every item gets a clear error or a documented handling,
the next valid request still gets the same scores, and the server stays healthy.

The corpus is generated here, not committed as binaries.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.utils import InferenceServerException

from editguard.clients.protocol import build_inputs, encode_image
from editguard.model.config import PreprocessConfig
from editguard.model.preprocess import PreprocessError, Preprocessor
from editguard.model.repository import CLASSIFIER, CLIENT_MODEL


def scene(w: int = 96, h: int = 96, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def animated(encode, fmt: str) -> bytes:
    frames = [Image.new("RGB", (48, 48), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated(encode) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encode(scene(120, 60, 3), "JPEG", exif=exif.tobytes(), quality=95)


def palette_alpha(encode) -> bytes:
    p = Image.new("P", (40, 40))
    p.putpalette([0, 0, 0, 255, 0, 0] * 128)
    p.info["transparency"] = 0
    return encode(p)


# (name, input image, output image, prompt, mask, expected: "error:<words>" or "ok")
def corpus(good: dict, encode, png_bomb) -> list[tuple]:
    src, out, prompt = good["input"], good["output"], good["prompt"]
    sixteen = Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16))
    return [
        ("zero-byte image", b"", out, prompt, None, "error:INPUT_IMAGE: empty image"),
        ("random bytes", np.random.default_rng(1).bytes(5000), out, prompt, None, "error:not a decodable image"),
        ("truncated PNG", src, out[: len(out) // 2], prompt, None, "error:OUTPUT_IMAGE"),
        ("truncated JPEG", encode(scene(), "JPEG")[:400], out, prompt, None, "error:INPUT_IMAGE"),
        ("decompression bomb", png_bomb(), out, prompt, None, "error:over the limit of"),
        ("1x1", encode(Image.new("RGB", (1, 1))), out, prompt, None, "ok"),
        ("extreme aspect 1x4000", encode(scene(4000, 1)), out, prompt, None, "ok"),
        ("16-bit grayscale PNG", encode(sixteen), out, prompt, None, "ok"),
        ("CMYK JPEG", encode(Image.new("CMYK", (64, 64), (0, 255, 0, 0)), "JPEG"), out, prompt, None, "ok"),
        ("palette with alpha", palette_alpha(encode), out, prompt, None, "ok"),
        ("grayscale", encode(scene().convert("L")), out, prompt, None, "ok"),
        ("animated GIF (first frame)", animated(encode, "GIF"), out, prompt, None, "ok"),
        ("animated WebP (first frame)", animated(encode, "WEBP"), out, prompt, None, "ok"),
        ("EXIF-rotated JPEG (honoured)", exif_rotated(encode), out, prompt, None, "ok"),
        ("mask of another size", src, out, prompt, encode(Image.new("L", (7, 9))), "error:mask is 7x9 but the input"),
        ("empty prompt", src, out, "", None, "ok"),
        ("100k-character prompt", src, out, "remove the hat " * 7000, None, "error:over the limit of"),
        ("a prompt past the windows", src, out, "remove the hat " * 300, None, "error:tokens this model reads"),
        ("invalid UTF-8 prompt", src, out, b"\xff\xfe remove \xc3", None, "error:prompt is not valid UTF-8"),
        ("NUL bytes in prompt", src, out, "make\x00 it\x00 blue", None, "ok"),
        ("right-to-left and emoji", src, out, "\u05d4\u05e1\u05e8 \u202e the hat 🙂🔥", None, "ok"),
    ]


def send(url: str, src, out, prompt, mask):
    if isinstance(prompt, str):
        prompt_bytes = prompt.encode("utf-8")
    else:
        prompt_bytes = prompt
    with grpcclient.InferenceServerClient(url) as c:
        ins = build_inputs(grpcclient, src, "", out, mask)
        ins[2].set_data_from_numpy(np.array([[prompt_bytes]], dtype=np.object_))  # raw bytes, even invalid UTF-8
        return c.infer(CLIENT_MODEL, ins)


def test_hostile_inputs_get_clear_errors_and_the_server_stays_healthy(triton, synth_sets, triple_bytes, encode,
                                                                      png_bomb):
    good = triple_bytes(synth_sets["test"], 1)[0]
    reference = send(triton.grpc_url, good["input"], good["output"], good["prompt"], None).as_numpy("SCORES")
    tried = errors = 0
    for name, src, out, prompt, mask, expect in corpus(good, encode, png_bomb):
        tried += 1
        if expect.startswith("error:"):
            with pytest.raises(InferenceServerException) as e:
                send(triton.grpc_url, src, out, prompt, mask)
            assert e.value.status() == "StatusCode.INVALID_ARGUMENT", name
            assert expect[6:] in str(e.value), f"{name}: {e.value}"
            errors += 1
        else:
            scores = send(triton.grpc_url, src, out, prompt, mask).as_numpy("SCORES")
            assert scores.shape == (1, 7) and np.isfinite(scores).all(), name
        again = send(triton.grpc_url, good["input"], good["output"], good["prompt"], None).as_numpy("SCORES")
        np.testing.assert_allclose(again, reference, atol=1e-6, err_msg=f"after {name}")
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(CLIENT_MODEL) and c.is_model_ready(CLASSIFIER)
    print(f"hostile inputs: {tried} tried, {errors} clear errors, {tried - errors} handled, 0 server failures")


def raw(name: str, arr: np.ndarray, dtype: str) -> grpcclient.InferInput:
    x = grpcclient.InferInput(name, list(arr.shape), dtype)
    x.set_data_from_numpy(arr)
    return x


@pytest.mark.parametrize("model, build, words", [
    (CLIENT_MODEL, lambda: [raw("INPUT_IMAGE", np.zeros((1, 1), np.float32), "FP32")], "INPUT_IMAGE"),
    (CLIENT_MODEL, lambda: [raw("PROMPT", np.array([[b"x"]], dtype=np.object_), "BYTES")], "needs INPUT_IMAGE and OUTPUT_IMAGE (encoded images), or INPUT_PIXELS"),
    (CLASSIFIER, lambda: [raw("input_image", np.zeros((1, 64, 64, 3), np.float32), "FP32")], "input_image"),
    (CLASSIFIER, lambda: [raw(n, np.zeros((1, 32, 32, 3) if "image" in n else (1, 32, 32) if n == "mask" else (1, 16, 24),
                                            np.uint8 if n in ("input_image", "output_image", "mask") else np.int64),
                              "UINT8" if n in ("input_image", "output_image", "mask") else "INT64")
                          for n in ("input_image", "output_image", "mask", "input_ids", "attention_mask")],
     "item shape [32, 32, 3], this model version takes [64, 64, 3]"),
    (CLASSIFIER, lambda: [raw(n, np.zeros((1, 64, 64, 3) if "image" in n else (1, 64, 64) if n == "mask" else (1, 16, 24),
                                            np.uint8 if n in ("input_image", "output_image", "mask") else np.int64),
                              "UINT8" if n in ("input_image", "output_image", "mask") else "INT64")
                          for n in ("input_image", "output_image", "mask", "input_ids")], "attention_mask"),
])
def test_wrong_tensors_to_each_model(triton, synth_sets, model, build, words, triple_bytes):
    good = triple_bytes(synth_sets["test"], 1)[0]
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        with pytest.raises(InferenceServerException) as e:
            c.infer(model, build())
        assert words in str(e.value), str(e.value)
    assert send(triton.grpc_url, good["input"], good["output"], good["prompt"], None).as_numpy("SCORES").shape == (1, 7)


def test_exif_orientation_is_honoured(encode):
    pre = Preprocessor(PreprocessConfig(image_size=64, jpeg_draft=False), tokenizer=None)
    decoded = pre.decode(exif_rotated(encode))
    assert decoded.size == (60, 120)  # 120x60 stored, shown rotated
    plain = Image.open(io.BytesIO(exif_rotated(encode)))
    plain.load()
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(plain.transpose(Image.Transpose.ROTATE_270)))


_PRE = Preprocessor(PreprocessConfig(image_size=32, max_pixels=4_000_000), tokenizer=None)
_SEED_PNG = encode_image(scene(40, 30))  # PNG, as the client encodes images


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda cut, flips: _mutate(_SEED_PNG, cut, flips),
              st.integers(0, len(_SEED_PNG)), st.lists(st.tuples(st.integers(0, len(_SEED_PNG) - 1),
                                                                 st.integers(0, 255)), max_size=8)),
))
def test_fuzz_decode_and_preprocess(data):
    """Any bytes: either a PreprocessError, or a well-formed uint8 [S, S, 3] array. Nothing else escapes."""
    try:
        arr = _PRE.image(data, "input_image")
    except PreprocessError as e:
        assert e.field == "input_image" and str(e)
    else:
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8


def _mutate(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    b = bytearray(data[:max(cut, 8)])
    for i, v in flips:
        if i < len(b):
            b[i] = v
    return bytes(b)
