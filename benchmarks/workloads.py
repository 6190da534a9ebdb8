"""What the benchmarks send: encoded triples, Zipf-repeated prompts, photo-like uploads at several sizes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np


def encoded_triples(n: int, size: int, workdir: Path) -> list[dict]:
    """Client-side triples: PNG bytes of synthetic scenes at ``size`` px, with prompts."""
    from ..training.synth import generate

    manifest = generate(workdir / f"synth{size}", n, seed=99, image_size=size, progress=False)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [{"input": (manifest.parent / r["input_image"]).read_bytes(), "prompt": r["prompt"],
             "output": (manifest.parent / r["output_image"]).read_bytes()} for r in rows]


# a few thousand distinct prompts, as a busy service sees them: ZIPF_S over PROMPT_POOL ranks
PROMPT_POOL, ZIPF_S = 5000, 1.0


_VERBS = ["make", "turn", "change", "give", "replace", "add", "remove", "paint", "put", "swap"]


_THINGS = ["the sky", "their hair", "the car", "the dress", "the wall", "her shirt", "his jacket", "the dog", "the sign",
           "the background", "the table", "their face", "the window", "the hat", "the flowers", "the street",
           "the shoes", "the sofa", "the lake", "the cake", "the door", "the tree", "the bike", "the lamp", "the roof"]


_INTO = ["pink", "into a beach", "at night", "in watercolor", "more vivid", "with snow", "older", "into a cartoon",
         "with neon lights", "into gold", "blue", "with sunglasses", "into marble", "in autumn", "with a smile",
         "into a sketch", "with fog", "into a painting", "red", "with stars"]


def prompt_pool(n: int = PROMPT_POOL) -> list[str]:
    """``n`` distinct edit prompts (verb, thing, result), in a fixed order: rank 1 is the most frequent."""
    pool = [f"{v} {t} {i}" for i in _INTO for t in _THINGS for v in _VERBS]
    return pool[:n]


def prompt_stream(k: int, repeated: bool, seed: int = 0) -> list[str]:
    """``k`` prompts as requests bring them: ``repeated`` draws ranks from Zipf(ZIPF_S) over the pool;
    otherwise every prompt is new (a request number in front; streams of other seeds share none)."""
    pool = prompt_pool()
    if not repeated:
        return [f"{seed * k + j} {pool[j % len(pool)]}" for j in range(k)]
    w = 1.0 / np.arange(1, len(pool) + 1) ** ZIPF_S
    ranks = np.random.default_rng(seed).choice(len(pool), size=k, p=w / w.sum())
    return [pool[r] for r in ranks]


def upload_images(size: int, n: int = 4, seed: int = 0) -> list:
    """``n`` photo-like PIL images of ``size`` px: scenes with uneven light, colour cast and sensor noise,
    which compress like photos (a 1024 px PNG is about 1.7 MB), not like flat renders."""
    from ..training.synth.realism import photo_finish
    from ..training.synth.scene import IID_STYLES, random_scene, render

    rng = np.random.default_rng(seed)
    return [photo_finish(render(random_scene(rng, IID_STYLES), size), seed + i) for i in range(n)]


def encode_upload(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


UPLOAD_FORMS = ("PIL images", "PNG bytes", "JPEG bytes")


def upload_calls(size: int, form: str) -> list[tuple]:
    """classify() arguments at ``size`` px in one of UPLOAD_FORMS (input, prompt, output, mask)."""
    imgs = upload_images(size)
    masks = [box_mask(size, k) for k in range(len(imgs))]
    conv = {"PIL images": lambda im: im, "PNG bytes": lambda im: encode_upload(im, "PNG"),
            "JPEG bytes": lambda im: encode_upload(im, "JPEG")}[form]
    mconv = (lambda m: m) if form == "PIL images" else (lambda m: encode_upload(m, "PNG"))
    return [(conv(imgs[i]), "make the sky look like sunset", conv(imgs[(i + 1) % len(imgs)]), mconv(masks[i]))
            for i in range(len(imgs))]


def upload_triples(size: int, triples: list[dict], n: int = 8) -> list[dict]:
    """Triples of photo-like PNG uploads of ``size`` px (:func:`upload_images`; each output another photo),
    with the prompts of ``triples``."""
    pngs = [encode_upload(im, "PNG") for im in upload_images(size, n)]
    return [{"input": pngs[i], "prompt": triples[i % len(triples)]["prompt"], "output": pngs[(i + 1) % n]}
            for i in range(n)]


def box_mask(size: int, k: int):
    """A user-drawn box mask (mode L) over a quarter of the image."""
    from PIL import Image, ImageDraw

    m = Image.new("L", (size, size), 0)
    o = size // 8 * (1 + k % 3)
    ImageDraw.Draw(m).rectangle([o, o, o + size // 2, o + size // 2], fill=255)
    return m


def collate_bytes(pre, triples: list[dict]) -> dict:
    """A model batch from encoded triples, through the model's own preprocessing."""
    from ..model.preprocess import collate

    return collate([pre.triple(t["input"], t["prompt"], t["output"]) for t in triples])
