"""``editguard synth``: the synthetic proxy benchmark.

Each triple is a random abstract scene (input), an edit operation applied to
it (output), the operation's prompt in one of several phrasings, a mask, and
the operation's labels. Everything is drawn from
``numpy.random.default_rng((seed, split, index))``, so a run is deterministic
by seed whatever the number of worker processes.

By default the triple looks like real inpainting (:mod:`.realism`): a rough
user-drawn mask (or none), the masked region regenerated, the diffusion round
trip and a codec on the whole output, photo-like lighting, clutter, small
marks and sometimes a second person. ``clean=True`` keeps the clean renderer:
pixel-exact outputs and the mask of exactly the changed pixels.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from . import realism
from .ops import NEUTRAL, NEUTRAL_RATE, SAFE_OPS, SIDE_EFFECTS, UNSAFE_OPS, Op
from .scene import IID_STYLES, OOD_STYLES, Scene, random_companion, random_scene, render

_logger = logging.getLogger(__name__)

__all__ = ["generate", "list_ops", "load_prompts", "sample_edit", "SPLITS"]

SPLITS = ("iid", "ood")
_SPLIT_KEY = {"iid": 1, "ood": 2}
_OPS = {o.name: o for o in SAFE_OPS + UNSAFE_OPS}


def list_ops(prompts: dict[str, list[str]] | None = None) -> list[dict]:
    """Every operation: name, labels, weight, and its iid and ood phrasings."""
    rows = [{"name": o.name, "labels": list(o.labels), "weight": o.weight, "iid": list(o.iid), "ood": list(o.ood)}
            for o in SAFE_OPS + UNSAFE_OPS]
    for name, labels, weight, _, _ in SIDE_EFFECTS:
        rows.append({"name": name, "labels": list(labels), "weight": weight,
                     "iid": ["(the prompt of a random safe edit)"], "ood": ["(the prompt of a random safe edit)"]})
    rows.append({"name": "(neutral prompts)", "labels": [], "weight": NEUTRAL_RATE,
                 "iid": list(NEUTRAL["iid"]), "ood": list(NEUTRAL["ood"])})
    if prompts:
        for r in rows:
            if r["name"] in prompts:
                r["iid"] = r["ood"] = list(prompts[r["name"]])
    return rows


def load_prompts(path: str | Path) -> dict[str, list[str]]:
    """Read a ``--prompts`` file: JSON ``{operation name: [phrasing, ...]}``; validated."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: can't read prompts JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a JSON object mapping operation names to lists of phrasings")
    for name, phr in data.items():
        if name not in _OPS:
            raise ValueError(f"{path}: unknown operation {name!r}; `editguard synth --list-ops` lists them")
        if not isinstance(phr, list) or not phr or not all(isinstance(p, str) and p.strip() for p in phr):
            raise ValueError(f"{path}: operation {name!r} needs a non-empty list of phrasings")
        for p in phr:
            try:
                p.format(color="red", place="beach", object="ball")
            except (KeyError, IndexError) as e:
                raise ValueError(f"{path}: phrasing {p!r} uses an unknown slot {e}; slots are "
                                 "{color}, {place}, {object}") from None
    return data


def _obfuscate(text: str, rng: np.random.Generator, split: str) -> str:
    """Typos and obfuscations; the ood split uses kinds the iid split never shows."""
    words = text.split(" ")
    i = int(rng.integers(len(words)))
    w = words[i]
    kind = int(rng.integers(2))
    if split == "iid":
        if kind == 0:
            w = w.translate(str.maketrans("eoai", "3041"))
        elif len(w) > 3:
            j = int(rng.integers(len(w) - 1))
            w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    else:
        if kind == 0:
            w = w.translate(str.maketrans("as", "@$"))
        else:
            w = ".".join(w)
    words[i] = w
    return " ".join(words)


def _phrase(op: Op, split: str, rng: np.random.Generator, slots: dict, prompts: dict | None,
            neutral: bool = False) -> tuple[str, bool]:
    if neutral:
        options = NEUTRAL[split]
    else:
        options = prompts[op.name] if prompts and op.name in prompts else (op.iid if split == "iid" else op.ood)
    text = str(rng.choice(list(options))).format(**{"color": "", "place": "", "object": "", **slots})
    text = " ".join(text.split())
    obfuscated = bool(rng.random() < 0.15)
    if obfuscated:
        text = _obfuscate(text, rng, split)
    if rng.random() < 0.2:
        text = text[0].upper() + text[1:]
    return text, obfuscated


def _draw_op(rng: np.random.Generator) -> str:
    names = [o.name for o in SAFE_OPS + UNSAFE_OPS] + [n for n, *_ in SIDE_EFFECTS]
    w = np.array([o.weight for o in SAFE_OPS + UNSAFE_OPS] + [x[2] for x in SIDE_EFFECTS])
    return str(rng.choice(names, p=w / w.sum()))


def _add_realism(src: Scene, rng: np.random.Generator) -> None:
    """Clutter, mark size and sometimes a second person (the edit's target stays the first)."""
    src.clutter = int(rng.integers(2**31))
    src.mark_scale = float(rng.uniform(0.6, 1.2))
    if rng.random() < 0.3:
        left = bool(rng.random() < 0.5)
        src.x = float(rng.uniform(0.26, 0.36) if left else rng.uniform(0.64, 0.74))
        src.companion = random_companion(rng, float(1.0 - src.x + rng.uniform(-0.04, 0.04)))
        src.things = src.things[:1]


def sample_edit(rng: np.random.Generator, split: str, prompts: dict | None = None, realistic: bool = False) -> dict:
    """Draw one edit: input/output scenes, prompt, labels and metadata.

    ``unintended_change`` follows one rule for every edit: the output changed a
    person field that the prompt did not ask for (a neutral prompt asks for none).
    """
    styles = IID_STYLES if split == "iid" else OOD_STYLES
    name = _draw_op(rng)
    side = next((s for s in SIDE_EFFECTS if s[0] == name), None)
    for _ in range(100):
        src = random_scene(rng, styles)
        if realistic:
            _add_realism(src, rng)
        if side is not None:
            _, labels, _, effect, beautify_w = side
            op = _OPS["beautify"] if rng.random() < beautify_w else _draw_base(rng, src)
            if op is None or not op.applies(src):
                continue
            out = src.copy()
            slots = op.apply(out, rng)
            asked = out.copy()  # what the prompt asked for: the side effect is the change beyond it
            effect(out, rng, op)
        else:
            op = _OPS[name]
            if not op.applies(src):
                continue
            out, labels = src.copy(), op.labels
            slots = op.apply(out, rng)
            asked = None
        neutral = bool((op.labels or not op.targets) and rng.random() < NEUTRAL_RATE)
        labels = set(labels)
        if src.person_changes(out) - (set() if neutral else op.targets):
            labels.add("unintended_change")
        if "sexual" in labels and out.child:
            labels.add("minors")
        prompt, obfuscated = _phrase(op, split, rng, slots, prompts, neutral)
        meta = {"op": name, "split": split, "style": src.style, "skin_tone": src.skin,
                "age": "child" if src.child else "adult", "obfuscated": obfuscated, "neutral_prompt": neutral}
        if realistic:
            meta["people"] = 2 if src.companion else 1
        return {"input": src, "output": out, "prompt": prompt, "labels": sorted(labels), "meta": meta,
                "asked": asked}
    raise RuntimeError(f"could not find a scene for operation {name!r}")


def _draw_base(rng: np.random.Generator, src) -> Op | None:
    ok = [o for o in SAFE_OPS if o.applies(src)]
    w = np.array([o.weight for o in ok])
    return ok[int(rng.choice(len(ok), p=w / w.sum()))] if ok else None


def _make_item(args: tuple) -> dict:
    out_dir, seed, split, i, size, prompts, clean = args
    rng = np.random.default_rng((seed, _SPLIT_KEY[split], i))
    for _ in range(10):
        e = sample_edit(rng, split, prompts, realistic=not clean)
        a, b = render(e["input"], size), render(e["output"], size)
        changed = np.any(np.asarray(a) != np.asarray(b), axis=2)
        if changed.any():
            break
    else:
        raise RuntimeError(f"item {i}: the edit changed no pixels")
    ident = f"{split}{seed}-{i:06d}"
    # the side effect: where the output differs from what was asked for, and from the input
    unasked = None if e["asked"] is None else changed & np.any(np.asarray(render(e["asked"], size)) != np.asarray(b),
                                                                axis=2)
    rec = {"id": ident, "prompt": e["prompt"], "labels": e["labels"],
           "meta": {**e["meta"], **_truth(changed, unasked, ident, out_dir)}}
    if clean:
        mask = Image.fromarray((changed * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(3))
        files = {"in": _png(a), "out": _png(b), "mask": _png(mask)}
        ext = {"in": "png", "out": "png", "mask": "png"}
    else:
        files, ext, knobs = _realistic(a, b, changed, rng, split)
        rec["meta"].update(knobs)
    for k, data in files.items():
        path = f"images/{ident}_{k}.{ext[k]}"
        (Path(out_dir) / path).write_bytes(data)
        rec[{"in": "input_image", "out": "output_image", "mask": "mask"}[k]] = path
    return rec


def _box(region: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(region)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _truth(changed: np.ndarray, unasked: np.ndarray | None, ident: str, out_dir: str) -> dict:
    """What the operation changed, in the input image's pixels (before any rendering realism, and apart
    from the user's mask): ``changed_box`` ``[x0, y0, x1, y1]`` (end exclusive) and ``changed_region``, a
    PNG of the changed pixels (255); for an edit with a side effect, ``unasked_box`` and ``unasked_region``,
    the change the prompt did not ask for. They measure localisation (``editguard explain``)."""
    truth = {}
    for name, region in (("changed", changed), ("unasked", unasked)):
        if region is None or not region.any():
            continue
        path = f"images/{ident}_{name}.png"
        (Path(out_dir) / path).write_bytes(_png(Image.fromarray((region * 255).astype(np.uint8))))
        truth.update({f"{name}_box": _box(region), f"{name}_region": path})
    return truth


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _realistic(a: Image.Image, b: Image.Image, changed: np.ndarray, rng: np.random.Generator,
               split: str) -> tuple[dict[str, bytes], dict[str, str], dict]:
    """Files of one realistic triple (see :mod:`.realism`) and the knobs drawn for it."""
    finish = int(rng.integers(2**31))
    src, ideal = realism.photo_finish(a, finish), realism.photo_finish(b, finish)
    mask, kind = realism.user_mask(changed, rng, split)
    out, knobs = realism.roundtrip(realism.regenerate(src, ideal, mask, rng), rng)
    out_bytes, codec, quality = realism.encode(out, rng, split)
    files, ext = {"out": out_bytes}, {"out": {"jpeg": "jpg"}.get(codec, codec)}
    if rng.random() < 0.5:  # the upload itself: a camera JPEG or a lossless file
        buf = io.BytesIO()
        src.save(buf, "JPEG", quality=int(rng.integers(85, 98)))
        files["in"], ext["in"] = buf.getvalue(), "jpg"
    else:
        files["in"], ext["in"] = _png(src), "png"
    if mask is not None:
        files["mask"], ext["mask"] = _png(Image.fromarray(mask)), "png"
    knobs.update(mask_kind=kind, codec=codec, quality=quality, input_codec=ext["in"],
                 edit_area=round(float(changed.mean()), 4),
                 mask_area=round(float((mask > 0).mean()), 4) if mask is not None else 1.0)
    return files, ext, knobs


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    split: str = "iid",
    image_size: int = 128,
    prompts: dict[str, list[str]] | None = None,
    workers: int | None = None,
    progress: bool = True,
    clean: bool = False,
) -> Path:
    """Write ``n`` triples (images, masks) and ``manifest.jsonl`` under ``out_dir``; returns the manifest.

    ``clean=True``: the clean renderer (pixel-exact PNG outputs, masks of exactly the changed pixels).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 32 <= image_size <= 1024:
        raise ValueError(f"image_size must be 32..1024, got {image_size}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out_dir), seed, split, i, image_size, prompts, clean) for i in range(n)]
    from ...progress import parallel_map

    manifest = out_dir / "manifest.jsonl"
    tmp = out_dir / ".manifest.jsonl.tmp"
    with open(tmp, "w") as f:
        for rec in parallel_map(_make_item, jobs, workers=workers, desc=f"synth {split}", unit="triple",
                                show=progress, chunksize=32):
            f.write(json.dumps(rec) + "\n")
    tmp.replace(manifest)
    return manifest
