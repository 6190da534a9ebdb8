"""JPEG decoding on a torch device (serving/torch_decode.py): the same contract as Pillow's path.

The decoder runs here on "cpu" (torchvision's libjpeg-turbo) and, where torch sees a GPU, on
"cuda" (nvJPEG): the same code, so the parity bounds below hold for both. The served test runs
a real Triton whose front decodes through it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from editguard.benchmarks.workloads import upload_images
from editguard.clients import EditGuardClient
from editguard.export.writer import ExportConfig, export_version
from editguard.model.config import PreprocessConfig
from editguard.model.pbtxt import read_config
from editguard.model.preprocess import PreprocessError, Preprocessor
from editguard.model.repository import CLIENT_MODEL
from editguard.serving.served import ServedVersion
from editguard.serving.triton import TritonServer, free_port

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from editguard.serving.torch_decode import TorchDecoder  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device: nvJPEG not run"))]


def jpeg(encode, img: Image.Image, orientation: int = 1, **kw) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif, **{"quality": 90, **kw})


def pair(device: str, **cfg) -> tuple[Preprocessor, TorchDecoder]:
    c = PreprocessConfig(**{"image_size": 64, "reducing_gap": 2.0, **cfg})
    return Preprocessor(c, None), TorchDecoder(c, None, device)


@pytest.mark.parametrize("device", DEVICES)
def test_device_pixels_match_pillow_for_every_orientation_size_and_layout(device, encode):
    for size_cfg in ({"image_size": 64}, {"image_size": 96, "resize": "stretch"}, {"image_size": 64, "pad_value": 114}):
        exact, dev = pair(device, jpeg_draft=False, **size_cfg)
        drafted, _ = pair(device, **size_cfg)
        for size in (256, 700, 1024):
            photo = upload_images(size, 1, seed=size)[0].crop((0, 0, size, size * 3 // 4))  # not square
            for orientation in range(1, 9):
                data = jpeg(encode, photo, orientation)
                got, want = dev.image(data), exact.image(data)
                assert got.shape == want.shape
                d = np.abs(got.astype(int) - want.astype(int))
                # a wrong orientation or placement would differ by tens of grey levels almost everywhere
                assert d.mean() <= 0.5 and np.percentile(d, 99) <= 4, (size_cfg, size, orientation, d.mean())
                # against the served default (Pillow's DCT-domain draft), which itself moves by up to ~1 level
                assert np.abs(got.astype(int) - drafted.image(data).astype(int)).mean() <= 1.5
                w, h = (photo.height, photo.width) if orientation >= 5 else photo.size
                _, _, left, top = dev.placement(w, h)
                pad = dev.cfg.pad_value
                assert (got[:top] == pad).all() and (got[:, :left] == pad).all() and (top or left or
                                                                                        size_cfg.get("resize"))
    exact, dev = pair(device, jpeg_draft=False)
    for grey in (jpeg(encode, photo.convert("L")), jpeg(encode, photo, quality=70, progressive=True)):
        assert np.abs(dev.image(grey).astype(int) - exact.image(grey).astype(int)).mean() <= 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_a_triple_keeps_the_mask_rules_and_other_formats_take_pillows_path(device, encode, png):
    pre, dev = pair(device)
    photo = upload_images(320, 2, seed=3)
    src, out = photo[0].crop((0, 0, 320, 200)), photo[1].crop((0, 0, 320, 200))
    mask = Image.new("L", (200, 320), 0)  # the size of the input *after* its EXIF rotation
    mask.paste(255, (20, 40, 120, 200))
    got = dev.pixels(jpeg(encode, src, 6), jpeg(encode, out, 6), png(mask))
    want = pre.pixels(jpeg(encode, src, 6), jpeg(encode, out, 6), png(mask))
    assert np.abs(got["output_image"].astype(int) - want["output_image"].astype(int)).mean() <= 1.5
    # the same mask rules: the masks differ only where the two decoders' pixels put a change on either side of
    # the "changed" level (mask_union adds the pixels that changed; the decoders round differently)
    level = Preprocessor.CHANGED

    def change(p):
        return np.abs(p["output_image"].astype(int) - p["input_image"].astype(int)).max(-1)

    differ = got["mask"] != want["mask"]
    straddle = (np.minimum(change(got), change(want)) <= level) & (np.maximum(change(got), change(want)) > level)
    assert (straddle | ~differ).all() and differ.mean() < 0.01
    with pytest.raises(PreprocessError, match="mask is 320x200 but the input image is 200x320"):
        dev.pixels(jpeg(encode, src, 6), jpeg(encode, out), png(mask.rotate(90, expand=True)))
    # PNG, WebP, CMYK JPEG, PIL images and arrays: Pillow's own pixels, bit for bit
    for other in (png(src), encode(src, "WEBP", quality=80), jpeg(encode, src.convert("CMYK")), src, np.asarray(src)):
        np.testing.assert_array_equal(dev.image(other), pre.image(other))
    np.testing.assert_array_equal(dev.pixels(src, None)["input_image"], pre.pixels(src, None)["input_image"])


@pytest.mark.parametrize("device", DEVICES)
def test_bad_uploads_get_the_same_errors_as_on_pillows_path(device, encode):
    pre, dev = pair(device, max_pixels=2_000_000, max_image_bytes=400_000)
    data = jpeg(encode, upload_images(256, 1)[0])
    bomb = jpeg(encode, Image.new("RGB", (2000, 1500)))
    cases = {
        "truncated": (data[: len(data) // 2], "corrupt or truncated image"),
        "corrupt scan": (data[:300] + b"\x00" * 600, "corrupt or truncated image"),
        # ends like a whole JPEG: the device decoder refuses it, then Pillow's path names the problem
        "corrupt, with an end marker": (data[:300] + b"\x00" * 600 + b"\xff\xd9", "corrupt or truncated image"),
        "not an image": (b"hello", "not a decodable image"),
        "empty": (b"", "empty image"),
        "too many pixels": (bomb, "over the limit of 2000000"),
        "too many bytes": (jpeg(encode, upload_images(1024, 1)[0], quality=100), "bytes, over the limit of 400000"),
    }
    for name, (blob, words) in cases.items():
        errors = []
        for p in (pre, dev):
            with pytest.raises(PreprocessError, match=words) as e:
                p.pixels(blob, data)
            errors.append((e.value.field, e.value.kind))
        assert errors[0] == errors[1] == ("input_image", errors[0][1]), name


def test_served_front_decodes_on_the_torch_device(tiny_model_dir, synth_sets, triton, tmp_path, png, triple_bytes,
                                                  encode):
    """A repository exported with --decode-device cpu: its front decodes JPEGs through TorchDecoder in
    Triton's Python backend. Scores stay within the decoders' pixel difference of the Pillow front's,
    a corrupt upload is refused by name, and the next request is answered."""
    repo = tmp_path / "repo"
    export_version(ExportConfig(model_dir=str(tiny_model_dir), repository=str(repo), decode_device="cpu"))
    assert read_config(repo / CLIENT_MODEL / "config.pbtxt").parameters["decode_device"].string_value == "cpu"
    with pytest.raises(ValueError, match="decode_device must be"):
        ExportConfig(model_dir=str(tiny_model_dir), decode_device="gpu")
    triples = triple_bytes(synth_sets["test"], 6)
    calls = [(jpeg(encode, Image.open(io.BytesIO(t["input"])).resize((300, 300))), t["prompt"],
              jpeg(encode, Image.open(io.BytesIO(t["output"])).resize((300, 300))),
              png(Image.open(io.BytesIO(t["mask"])).resize((300, 300), Image.NEAREST))) for t in triples]
    with EditGuardClient(triton.grpc_url) as guard:
        by_pillow = [guard.classify(*c).scores for c in calls]
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server, \
            EditGuardClient(server.grpc_url) as guard:
        by_device = [guard.classify(*c).scores for c in calls]
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            bad = [grpcclient.InferInput(n, [1, 1], "BYTES") for n in ("INPUT_IMAGE", "OUTPUT_IMAGE", "PROMPT")]
            for x, v in zip(bad, (calls[0][0][:400], calls[0][2], b"make it night")):
                x.set_data_from_numpy(np.array([[v]], dtype=np.object_))
            with pytest.raises(InferenceServerException) as e:
                c.infer(CLIENT_MODEL, bad)
            assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "INPUT_IMAGE: corrupt" in str(e.value)
        assert guard.classify(*calls[1]).scores == pytest.approx(by_device[1], abs=1e-6)
        assert "decoding JPEGs on cpu" in server.log_tail(400)
    for d, p in zip(by_device, by_pillow):
        assert d == pytest.approx(p, abs=0.03)
    # the front that decodes on the device reads prompts as the Pillow front does: typos undone by the speller
    plain = ServedVersion(repo / CLIENT_MODEL / "1")
    device = ServedVersion(repo / CLIENT_MODEL / "1", decode_device="cpu")
    assert isinstance(device.pre, TorchDecoder) and device.pre.speller is not None
    rank = device.pre.speller.rank
    word = max((w for w in rank if len(w) >= 6), key=lambda w: (-rank[w][0], w))  # a training word of 6+ letters
    typo = f"make the {word[0] + word[2] + word[1] + word[3:]} brighter"  # its second and third letters swapped
    assert device.pre.prompt_text(typo) == plain.pre.prompt_text(typo) == f"make the {word} brighter"
