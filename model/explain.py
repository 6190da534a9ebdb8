"""Why it flagged: where in the image, and which part of the triple moved the score.

For one edit and one category, an :class:`Explanation` holds:

- ``heatmap``: ``uint8 [H, W]`` at the input image's size, 255 = most responsible. It attributes the
  category's logit to the pixels of the *change*: integrated gradients on the output image along the
  straight path from the input image (no edit) to the output (the edit), so the map sums to the
  logit's rise from "nothing changed" and is zero where nothing changed. ``method="occlusion"``
  instead undoes the change one patch at a time and spreads the fall of the logit over the patch's
  pixels by how much each changed (measured beside it; see docs/results.md, "Explanations", for why
  the default is the default).
- ``peak`` ``[x, y]`` and ``box`` ``[x0, y0, x1, y1]`` (end exclusive), in input-image pixels: the
  heatmap's highest point after a light blur, and the bounding box of everything above a tenth of
  it (``BOX_LEVEL``); both None when the score does not rest on any changed pixel (a harm stated only in the
  prompt, say).
- ``shares``: the part of the score each part of the triple carries: ``output`` (what the output
  shows: the image tower's view of it), ``change`` (input against output: the pair tower's view) and
  ``prompt`` (what was asked). Each part is ablated to a neutral baseline (the output replaced by the
  input, for the image tower and the pair tower apart; the prompt by the empty prompt) and the
  category's logit is split over the three by their Shapley values (exact: the towers run once on each
  image and each change, and the head scores the 8 combinations). A share is a part's positive
  contribution over the sum of the positive ones; ``contributions`` keeps the signed values in logits. A
  model without a pair tower (the ``tiny`` preset) has no separate view of the change: its ``change`` is
  0, and its image tower's view of both images counts as ``output``.

It runs the torch network of a model dir (:func:`~editguard.model.model_dir.load_model_dir`), with the
one preprocessing definition, so the explained score is the one ``evaluate`` and the server give.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .preprocess import ImageSource, Preprocessor, collate
from .repository import DEFAULT_THRESHOLD, threshold_array

__all__ = ["Explainer", "Explanation", "ExplainResult", "explain_manifest", "PARTS", "METHODS"]

PARTS = ("output", "change", "prompt")
# the box holds every pixel of the (lightly blurred) heatmap above this share of its peak: chosen on the
# iid validation set, where the component around the peak above half of it gave a median IoU of 0.05
# with the true change and this 0.72 (docs/results.md, "Explanations")
BOX_LEVEL = 0.1
METHODS = ("integrated_gradients", "occlusion")


@dataclass
class Explanation:
    """Why one category scored as it did on one edit (see the module docstring)."""

    category: str
    score: float  # the category's probability
    peak: list[int] | None  # [x, y], input-image pixels
    box: list[int] | None  # [x0, y0, x1, y1], end exclusive
    shares: dict[str, float]  # part -> share of the score, summing to 1 (all 0 when no part raises it)
    contributions: dict[str, float]  # part -> Shapley value, in logits
    heatmap: np.ndarray = field(repr=False)  # uint8 [H, W] at the input image's size

    def record(self) -> dict:
        """The JSON-ready fields (the heatmap aside)."""
        return {"category": self.category, "score": round(self.score, 6), "peak": self.peak, "box": self.box,
                "shares": {k: round(v, 4) for k, v in self.shares.items()},
                "contributions": {k: round(v, 4) for k, v in self.contributions.items()}}


class Explainer:
    """Explains a model dir's verdicts. ``method``: one of :data:`METHODS`; ``steps``: integrated gradients'
    path steps (4, 8 and 16 localise alike on the iid validation set; 4 costs the least); ``grid``:
    occlusion patches per side."""

    def __init__(self, net, pre: Preprocessor, method: str = "integrated_gradients", steps: int = 4,
                 grid: int = 8, device: str = "cpu"):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not (net.cfg.use_output_image and net.cfg.use_input_image and net.cfg.use_prompt):
            raise ValueError("explanations need a model that sees both images and the prompt (the triple model); "
                             f"this one is the {net.cfg.ablation!r} ablation")
        self.net, self.pre, self.device = net.eval(), pre, device
        self.method, self.steps, self.grid = method, steps, grid
        self.labels = list(net.cfg.labels)
        self._neutral = None  # the empty prompt's embedding

    @classmethod
    def from_model_dir(cls, path: str | Path, device: str = "cpu", **kw) -> "Explainer":
        from .model_dir import load_model_dir

        net, pre = load_model_dir(path, device)
        return cls(net, pre, device=device, **kw)

    # -- the public call -------------------------------------------------------------------------------
    def explain(self, input_image: ImageSource, prompt: str | bytes, output_image: ImageSource,
                mask: ImageSource | None = None, categories: list[str] | None = None,
                thresholds: Sequence[float] | None = None) -> list[Explanation]:
        """Explanations for ``categories`` (names), or, when None, for each category whose probability is at
        least its threshold (``thresholds``, in label order, as :meth:`read_thresholds` or a served version's
        ``ThresholdsFile`` give them; default ``DEFAULT_THRESHOLD``): the flagged ones. Raises
        :class:`~editguard.model.preprocess.PreprocessError` on a bad input, naming it."""
        import torch

        unknown = sorted(set(categories or []) - set(self.labels))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; this model has {self.labels}")
        src = self.pre.decode(input_image, "input_image")
        width, height = src.info.get("source_size", src.size)
        item = self.pre.triple(src, prompt, output_image, mask)
        batch = {k: torch.from_numpy(v).to(self.device) for k, v in collate([item]).items()}
        with torch.no_grad():
            text = self._embeddings(batch)
            logits, combos = self._shapley_logits(batch, text)
        probs = torch.sigmoid(logits).cpu().numpy()
        if categories is None:
            limits = np.full(len(self.labels), DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds)
            categories = [c for i, c in enumerate(self.labels) if probs[i] >= limits[i]]
        if not categories:
            return []
        columns = [self.labels.index(c) for c in categories]
        maps = (self._integrated_gradients if self.method == "integrated_gradients" else self._occlusion)(
            batch, text[0:1], columns)
        placement = self.pre.placement(width, height)
        out = []
        for c, col, m in zip(categories, columns, maps):
            contributions = _shapley(combos[:, col])
            heat, peak, box = _locate(m, placement, (width, height))
            positive = {k: max(v, 0.0) for k, v in contributions.items()}
            total = sum(positive.values())
            shares = {k: (v / total if total > 0 else 0.0) for k, v in positive.items()}
            out.append(Explanation(c, float(probs[col]), peak, box, shares, contributions, heat))
        return out

    def read_thresholds(self, path: str | Path) -> np.ndarray:
        """A thresholds.json (a repository's ``editguard/N/thresholds.json``) in this model's label order."""
        return threshold_array(json.loads(Path(path).read_text()), self.labels)

    # -- the parts --------------------------------------------------------------------------------------
    def _embeddings(self, batch: dict):
        """``[2, W, H]``: the prompt's embedding and the empty prompt's (the neutral baseline, computed once)."""
        import torch

        if self._neutral is None:
            ids, att = (torch.from_numpy(a).to(self.device) for a in self.pre.tokens([""]))
            self._neutral = self.net.text.encode(ids, att)
        return torch.cat([self.net.text.encode(batch["input_ids"], batch["attention_mask"]), self._neutral])

    def _shapley_logits(self, batch: dict, text):
        """The logits of the whole triple (``[C]``) and of the 8 part subsets (``[8, C]``, subset ``k`` holds
        part ``i`` when bit ``i`` of ``k`` is set, parts in :data:`PARTS` order). The towers run once on each
        of the two images and the two changes (none, the edit); the 8 subsets only combine their embeddings."""
        import torch

        src, out = batch["input_image"], batch["output_image"]
        subsets = range(8)
        image = torch.tensor([k & 1 for k in subsets], device=self.device)  # 1: the output, 0: the input
        change = torch.tensor([(k >> 1) & 1 for k in subsets], device=self.device)  # 1: the edit, 0: none
        towers = [(e_in.expand(8, -1), e_outs[image], None if pairs is None else pairs[change])
                  for e_in, e_outs, pairs in self._towers(src, torch.cat([src, out]), batch["mask"])]
        prompts = torch.stack([text[0] if k & 4 else text[1] for k in subsets])
        logits = self.net.logits_from_towers(towers, prompts).float()
        return logits[7], logits.cpu().numpy()

    def _towers(self, src, outs, mask) -> list[tuple]:
        """Per entry of the network's ``tower_parts``: the input image's embedding (``[1, width]``: it never
        varies here, so it is computed once, in the same pass as the others), each of ``outs``' (``[n,
        width]``) and the pair tower's of the change from ``src`` to each of ``outs`` (None without a pair
        tower)."""
        import torch

        n = outs.shape[0]
        masks = mask.expand(n + 1, -1, -1)
        images = torch.cat([src.to(outs.dtype), outs])
        found = []
        for parts in self.net.tower_parts:
            e = self.net.image_embedding(parts, images, masks)
            pairs = (self.net.pair_embedding(parts, src.expand(n, -1, -1, -1), outs, masks[1:])
                     if self.net.use_pair else None)
            found.append((e[:1], e[1:], pairs))
        return found

    def _forward(self, src, outs, mask, text):
        """The logits ``[n, C]`` of the input image ``src`` edited into each of ``outs``, asked by ``text``."""
        n = outs.shape[0]
        towers = [(e_in.expand(n, -1), e_outs, pairs) for e_in, e_outs, pairs in self._towers(src, outs, mask)]
        return self.net.logits_from_towers(towers, text.expand(n, *text.shape[1:])).float()

    def _integrated_gradients(self, batch: dict, text, columns: list[int]) -> list[np.ndarray]:
        """Per column, ``float [S, S]``: the change's pixels' attribution, positive part."""
        import torch

        src, out = batch["input_image"].float(), batch["output_image"].float()
        alphas = (torch.arange(self.steps, device=self.device, dtype=torch.float32) + 0.5) / self.steps
        path = (src + alphas.view(-1, 1, 1, 1) * (out - src)).requires_grad_(True)
        logits = self._forward(src, path, batch["mask"], text)
        maps = []
        for j, col in enumerate(columns):
            (grad,) = torch.autograd.grad(logits[:, col].sum(), path, retain_graph=j < len(columns) - 1)
            attribution = ((out - src) * grad.mean(0, keepdim=True)).sum(-1)[0]
            maps.append(attribution.clamp_min(0).detach().cpu().numpy())
        return maps

    def _occlusion(self, batch: dict, text, columns: list[int]) -> list[np.ndarray]:
        """Per column, ``float [S, S]``: the fall of the logit when the change is undone in each patch (only
        patches where something changed are run), over the patch's pixels by how much each changed."""
        import torch

        src, out = batch["input_image"], batch["output_image"]
        s = src.shape[1]
        step = math.ceil(s / self.grid)
        changed = (out.int() - src.int()).abs().amax(-1)[0] > 0
        patches = [(y, x) for y, x in itertools.product(range(0, s, step), range(0, s, step))
                   if changed[y:y + step, x:x + step].any()]
        maps = [np.zeros((s, s), np.float32) for _ in columns]
        if not patches:
            return maps
        undone = out.repeat(len(patches), 1, 1, 1)
        for k, (y, x) in enumerate(patches):
            undone[k, y:y + step, x:x + step] = src[0, y:y + step, x:x + step]
        with torch.no_grad():
            full = self._forward(src, out, batch["mask"], text)[0]
            fall = (full - torch.cat([self._forward(src, undone[i:i + 64], batch["mask"], text)
                                      for i in range(0, len(patches), 64)])).clamp_min(0).cpu().numpy()
        amount = ((out.float() - src.float()).abs().amax(-1)[0] / 255).cpu().numpy()  # where, and how much, it changed
        for m, col in zip(maps, columns):
            for k, (y, x) in enumerate(patches):
                m[y:y + step, x:x + step] = fall[k, col] * amount[y:y + step, x:x + step]
        return maps


def _shapley(values: np.ndarray) -> dict[str, float]:
    """Exact Shapley values of the three parts from the 8 subset values (``values[k]``, bit ``i`` = part ``i``)."""
    phi = {}
    for i, part in enumerate(PARTS):
        total = 0.0
        for k in range(8):
            if k & (1 << i):
                continue
            size = bin(k).count("1")
            weight = math.factorial(size) * math.factorial(2 - size) / 6
            total += weight * (float(values[k | (1 << i)]) - float(values[k]))
        phi[part] = total
    return phi


def _locate(attribution: np.ndarray, placement: tuple[int, int, int, int],
            size: tuple[int, int]) -> tuple[np.ndarray, list[int] | None, list[int] | None]:
    """The heatmap at the input image's size (``uint8``), its peak and the box of the region around it."""
    from PIL import Image
    from scipy import ndimage

    w, h, left, top = placement
    s = attribution.shape[0]
    smooth = ndimage.gaussian_filter(attribution.astype(np.float32), sigma=max(0.5, s / 64))
    crop = smooth[top:top + h, left:left + w]
    width, height = size
    top_value = float(crop.max()) if crop.size else 0.0
    if top_value <= 0:
        return np.zeros((height, width), np.uint8), None, None
    scaled = np.asarray(Image.fromarray(crop).resize((width, height), Image.BILINEAR))
    heat = np.clip(np.round(scaled * (255 / max(float(scaled.max()), 1e-30))), 0, 255).astype(np.uint8)
    y, x = np.unravel_index(int(np.argmax(scaled)), scaled.shape)
    sx, sy = width / w, height / h
    ys, xs = np.nonzero(crop >= BOX_LEVEL * top_value)
    box = [int(xs.min() * sx), int(ys.min() * sy), min(width, math.ceil((xs.max() + 1) * sx)),
           min(height, math.ceil((ys.max() + 1) * sy))]
    return heat, [int(x), int(y)], box


@dataclass
class ExplainResult:
    """What :func:`explain_manifest` wrote."""

    path: str  # explanations.jsonl
    edits: int
    explanations: int
    errors: int


def explain_manifest(manifest: str | Path, model_dir: str | Path, out: str | Path, *,
                     categories: list[str] | None = None, thresholds: str | Path | None = None,
                     method: str = "integrated_gradients", steps: int = 4, device: str = "cpu",
                     allow_outside_root: bool = False, progress: bool = True) -> ExplainResult:
    """Explain every edit of ``manifest`` (labels optional) with ``model_dir``: for each edit and each of
    ``categories`` (default: the flagged ones, at ``thresholds``, a thresholds.json, else 0.5), a line of
    ``OUT/explanations.jsonl`` (``id``, :meth:`Explanation.record`, ``heatmap``: the PNG's path relative to
    OUT) and ``OUT/heatmaps/ID__CATEGORY.png``. An edit that cannot be read gets an ``error`` line naming
    the problem, and the others go on."""
    from ..files import atomic_path
    from ..manifest import read_manifest
    from ..progress import progress as bar
    from .preprocess import PreprocessError

    explainer = Explainer.from_model_dir(model_dir, device=device, method=method, steps=steps)
    limits = None if thresholds is None else explainer.read_thresholds(thresholds)
    records = read_manifest(manifest, require_labels=False, allow_outside_root=allow_outside_root)
    out = Path(out)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    path = out / "explanations.jsonl"
    lines = errors = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for r in bar(records, desc="explain", unit="edit", disable=not progress):
            try:
                found = explainer.explain(r.input_image, r.prompt, r.output_image, r.mask, categories, limits)
            except (PreprocessError, OSError) as e:
                f.write(json.dumps({"id": r.id, "error": str(e)}) + "\n")
                errors += 1
                continue
            for e in found:
                png = Path("heatmaps") / f"{_safe(r.id)}__{e.category}.png"
                _write_png(out / png, e.heatmap)
                f.write(json.dumps({"id": r.id, **e.record(), "heatmap": str(png)}) + "\n")
                lines += 1
    return ExplainResult(str(path), len(records), lines, errors)


def _safe(ident: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ident)


def _write_png(path: Path, heat: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(heat, "L").save(path, "PNG")
