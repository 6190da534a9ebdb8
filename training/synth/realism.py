"""What real inpainting does to a triple, applied to the clean renders of :mod:`.scene`.

A clean render pair differs exactly where the edit changed the scene. Real
inpainting does not look like that:

- the user brushes a rough region around the edit's target *before* the edit
  (:func:`user_mask`): larger than the change, with irregular edges, and some
  editors take no mask at all;
- the model regenerates everything inside that region (:func:`regenerate`):
  texture, shading, noise and a little geometry move even where the content
  stays the same;
- the VAE round trip, resampling and the codec touch the whole output
  (:func:`roundtrip`).

Every knob drawn here is returned for the manifest's ``meta``, so evaluation
and calibration can slice by it. The ood split uses mask shapes and codecs the
iid split never shows.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["MASK_KINDS", "CODECS", "photo_finish", "user_mask", "regenerate", "roundtrip", "encode"]

# mask kinds per split; "none" is an instruction-based editor that takes no mask
MASK_KINDS = {"iid": ("box", "brush", "none"), "ood": ("lasso", "blobs", "none")}
_MASK_P = (0.4, 0.4, 0.2)  # the two drawn kinds, then "none" (the same shares in both splits)
# output codecs per split: (codec, quality range, probability)
CODECS = {"iid": (("jpeg", (60, 95), 0.65), ("png", None, 0.35)),
          "ood": (("webp", (50, 90), 0.7), ("jpeg", (35, 60), 0.3))}


def _smooth_field(rng: np.random.Generator, size: int, cells: int, lo: float, hi: float) -> np.ndarray:
    """A smooth random field ``float32 [size, size]`` in ``[lo, hi]`` (bicubic upsampling of a coarse grid)."""
    coarse = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    up = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32) / 255.0
    return lo + (hi - lo) * up


def photo_finish(img: Image.Image, seed: int) -> Image.Image:
    """Make a flat render look more like a photo: uneven lighting, colour cast and sensor noise.

    Deterministic by ``seed``: the input and the ideal output of one triple get the same finish,
    so they differ only where the edit changed the scene.
    """
    rng = np.random.default_rng(seed)
    a = np.asarray(img, np.float32)
    s = a.shape[0]
    light = _smooth_field(rng, s, 3, 0.78, 1.12)[..., None]
    cast = rng.uniform(0.94, 1.06, 3).astype(np.float32)
    noise = rng.normal(0, rng.uniform(2, 6), a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a * light * cast + noise, 0, 255).astype(np.uint8))


def _bbox(changed: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(changed)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _rough_edges(m: Image.Image, rng: np.random.Generator, px: float) -> Image.Image:
    """Irregular edges: blur the mask, then threshold it against a noisy level."""
    s = m.size[0]
    soft = np.asarray(m.filter(ImageFilter.GaussianBlur(px)), np.float32) / 255.0
    level = _smooth_field(rng, s, 8, 0.3, 0.7)
    return Image.fromarray(((soft > level) * 255).astype(np.uint8))


def user_mask(changed: np.ndarray, rng: np.random.Generator, split: str) -> tuple[np.ndarray | None, str]:
    """A mask as a user draws it around the edit's target, or ``None`` (no mask); returns ``(mask, kind)``.

    ``changed``: ``bool [S, S]``, the pixels the edit changes. The mask is ``uint8 [S, S]`` (0/255);
    it covers every changed pixel with a margin and never outlines them.
    """
    kinds = MASK_KINDS[split]
    kind = str(rng.choice(kinds, p=_MASK_P))
    if kind == "none":
        return None, kind
    s = changed.shape[0]
    x0, y0, x1, y1 = _bbox(changed)
    margin = rng.uniform(0.03, 0.14) * s
    x0, y0, x1, y1 = x0 - margin, y0 - margin, x1 + margin, y1 + margin
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    if kind == "box":
        d.rectangle([x0, y0, x1, y1], fill=255)
    elif kind == "brush":  # zig-zag strokes of a round brush across the target
        w = max(3, int(rng.uniform(0.08, 0.2) * s))
        rows = max(2, int((y1 - y0) / (0.7 * w)) + 1)
        pts = []
        for k, y in enumerate(np.linspace(y0 + w / 3, y1 - w / 3, rows)):
            xs = (x0 + rng.uniform(0, w / 2), x1 - rng.uniform(0, w / 2))
            pts += [(xs[k % 2], y + rng.normal(0, w / 6)), (xs[1 - k % 2], y + rng.normal(0, w / 6))]
        d.line(pts, fill=255, width=w, joint="curve")
        for p in pts:
            d.ellipse([p[0] - w / 2, p[1] - w / 2, p[0] + w / 2, p[1] + w / 2], fill=255)
    elif kind == "lasso":  # a hand-drawn loop around the target
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * 1.2, (y1 - y0) / 2 * 1.2
        ang = np.sort(rng.uniform(0, 2 * np.pi, 14))
        r = rng.uniform(0.9, 1.25, len(ang))
        d.polygon([(cx + rx * q * np.cos(a), cy + ry * q * np.sin(a)) for a, q in zip(ang, r)], fill=255)
    else:  # "blobs": a few overlapping dabs
        for _ in range(int(rng.integers(3, 7))):
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            rx, ry = rng.uniform(0.3, 0.7) * (x1 - x0), rng.uniform(0.3, 0.7) * (y1 - y0)
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    m = _rough_edges(m, rng, max(1.0, 0.015 * s))
    # an inpainting model only changes pixels under the mask: the user's region always covers the
    # target (a region that missed part of it would have produced another edit)
    cover = Image.fromarray((changed * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(2 * max(1, s // 64) + 1))
    out = np.maximum(np.asarray(m), np.asarray(cover))
    return out, kind


def _jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A little regenerated geometry: sub-pixel shift, scale and rotation."""
    s = img.size[0]
    ang = rng.uniform(-1.5, 1.5)
    dx, dy = rng.uniform(-0.01, 0.01, 2) * s
    crop = rng.uniform(0, 0.015) * s  # a zoom of up to 3%
    edge = tuple(int(v) for v in np.asarray(img)[0, 0])
    return img.rotate(ang, Image.BILINEAR, translate=(dx, dy), fillcolor=edge).resize(
        (s, s), Image.BILINEAR, box=(crop, crop, s - crop, s - crop))


def regenerate(src: Image.Image, ideal: Image.Image, mask: np.ndarray | None,
               rng: np.random.Generator) -> Image.Image:
    """The inpainting model's output: ``ideal`` (the edited scene) redrawn inside ``mask``.

    Inside the mask every pixel is regenerated: new texture noise, a shading shift, a slight blur
    and a little geometric jitter, so it differs from ``src`` everywhere there, also where the
    content is unchanged. Outside, ``src`` is kept, blended over a feathered edge. ``mask=None``
    regenerates the whole image (instruction-based editors).
    """
    a = np.asarray(src, np.int16)
    regen = _jitter(ideal, rng).filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.8)))
    r = np.asarray(regen, np.float32)
    s = r.shape[0]
    r = r * _smooth_field(rng, s, 4, 0.9, 1.1)[..., None] + rng.normal(0, rng.uniform(3, 8), r.shape)
    r = np.clip(r, 0, 255).astype(np.int16)
    same = np.all(r == a, axis=2)  # regenerated means new pixels: nudge any that came out identical
    r[same] = np.where(a[same] < 128, a[same] + 3, a[same] - 3)
    if mask is None:
        return Image.fromarray(r.astype(np.uint8))
    inside = mask > 0
    alpha = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(max(1.0, s / 128))), np.float32) / 255
    alpha = np.where(inside, 1.0, alpha)[..., None]  # feather outwards only: inside stays fully regenerated
    return Image.fromarray(np.clip(alpha * r + (1 - alpha) * a + 0.5, 0, 255).astype(np.uint8))


def roundtrip(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """The latent-diffusion round trip on the whole output: blur or sharpen, noise, colour and
    gamma, sometimes another resolution or a few pixels of misregistration. Returns the image and
    its knobs."""
    meta = {}
    k = rng.random()
    if k < 0.35:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
        meta["filter"] = "blur"
    elif k < 0.6:
        img = img.filter(ImageFilter.UnsharpMask(radius=rng.uniform(1, 2), percent=int(rng.integers(50, 150))))
        meta["filter"] = "sharpen"
    else:
        meta["filter"] = "none"
    a = np.asarray(img, np.float32) / 255.0
    gamma = rng.uniform(0.88, 1.12)
    gain = rng.uniform(0.96, 1.04, 3)
    a = np.clip(a, 0, 1) ** gamma * gain * 255 + rng.normal(0, rng.uniform(0.5, 3.0), a.shape)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    shift = (0, 0)
    if rng.random() < 0.2:
        shift = tuple(int(v) for v in rng.integers(-3, 4, 2))
        img = img.rotate(0, translate=shift, fillcolor=tuple(int(v) for v in np.asarray(img)[0, 0]))
    meta["misregistration_px"] = int(max(abs(shift[0]), abs(shift[1])))
    rescale = 1.0
    if rng.random() < 0.3:
        rescale = float(rng.choice([0.75, 1.5, 2.0]))
        s = img.size[0]
        img = img.resize((round(s * rescale), round(s * rescale)), Image.BICUBIC)
    meta["output_rescale"] = rescale
    return img, meta


def encode(img: Image.Image, rng: np.random.Generator, split: str) -> tuple[bytes, str, int | None]:
    """Encode with the split's codecs at a random quality: ``(bytes, codec, quality)``."""
    options = CODECS[split]
    i = int(rng.choice(len(options), p=[o[2] for o in options]))
    codec, q, _ = options[i]
    quality = None if q is None else int(rng.integers(q[0], q[1] + 1))
    buf = io.BytesIO()
    if codec == "png":
        img.save(buf, "PNG", compress_level=1)
    elif codec == "jpeg":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "WEBP", quality=quality, method=2)
    return buf.getvalue(), codec, quality
