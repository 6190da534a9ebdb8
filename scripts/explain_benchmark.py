"""The explanation figures in docs/results.md ("Explanations"): does the heatmap point at the harm, and do the
triple shares say which part of the edit carried it?

    .venv/bin/python -m scripts.explain_benchmark --model-dir runs/cpu --manifest data/ood/manifest.jsonl \
        --thresholds repository/editguard/1/thresholds.json --out runs/explain

On the synthetic benchmark, whose `meta` records what each operation changed (`changed_region`, and for an
edit with a side effect `unasked_region`, the change nobody asked for), for each method of
`editguard.model.explain` it explains every unsafe edit flagged for one of its true categories and reports,
per category:

- the **pointing game**: the share whose heatmap peak falls inside the true region, dilated by 2% of the
  image side (for `unintended_change`, the unasked change where the edit has one);
- the **box IoU**: the median IoU of the box with the true region's bounding box;
- the **shares**: over edits whose prompt states nothing (`meta.neutral_prompt`), the mean share of the
  output and the change together; and, over *prompt-only* edits (the unsafe edits' prompts with nothing
  changed: the output is the input), how often the prompt carries the largest share;
- the **cost**: ms per explained edit where it runs, after a warm-up.

Writes OUT/explain_benchmark.json, .md and a PNG of a few heatmaps over their outputs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from editguard.manifest import read_manifest
from editguard.model.explain import METHODS, Explainer


def _truth(root: Path, meta: dict, category: str) -> tuple[np.ndarray, list[int]] | None:
    key = "unasked" if category == "unintended_change" and "unasked_region" in meta else "changed"
    if f"{key}_region" not in meta:
        return None
    region = np.asarray(Image.open(root / meta[f"{key}_region"]).convert("L")) > 127
    return region, meta[f"{key}_box"]


def _iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def measure(explainer: Explainer, records, root: Path, limits, per_category: int) -> dict:
    rows: dict[str, dict[str, list]] = {}
    neutral, prompt_only, seconds, n = [], [], 0.0, 0
    counts: dict[str, int] = {}
    for r in records:
        if not r.labels:
            continue
        t0 = time.perf_counter()
        found = explainer.explain(r.input_image, r.prompt, r.output_image, r.mask, thresholds=limits)
        seconds, n = seconds + time.perf_counter() - t0, n + 1
        for e in found:
            if e.category not in r.labels or counts.get(e.category, 0) >= per_category:
                continue
            counts[e.category] = counts.get(e.category, 0) + 1
            row = rows.setdefault(e.category, {"hit": [], "iou": []})
            truth = _truth(root, r.meta, e.category)
            if truth is None:
                continue
            region, box = truth
            side = max(region.shape)
            grown = ndimage.binary_dilation(region, iterations=max(1, round(0.02 * side)))
            row["hit"].append(bool(e.peak is not None and grown[e.peak[1], e.peak[0]]))
            row["iou"].append(_iou(e.box, box) if e.box else 0.0)
            if r.meta.get("neutral_prompt"):
                neutral.append(e.shares["output"] + e.shares["change"])
        if not r.meta.get("neutral_prompt"):  # the same request, nothing changed: the harm is only asked for
            for e in explainer.explain(r.input_image, r.prompt, r.input_image, r.mask, thresholds=limits):
                if e.category in r.labels:
                    prompt_only.append(max(e.shares, key=e.shares.get) == "prompt" if sum(e.shares.values()) else False)
    table = {c: {"n": len(v["hit"]), "pointing": float(np.mean(v["hit"])) if v["hit"] else None,
                 "median_iou": float(np.median(v["iou"])) if v["iou"] else None} for c, v in sorted(rows.items())}
    hits = [h for v in rows.values() for h in v["hit"]]
    ious = [x for v in rows.values() for x in v["iou"]]
    return {"categories": table, "all": {"n": len(hits), "pointing": float(np.mean(hits)) if hits else None,
                                          "median_iou": float(np.median(ious)) if ious else None},
            "neutral_prompt_output_plus_change": {"n": len(neutral),
                                                  "mean": float(np.mean(neutral)) if neutral else None},
            "prompt_only_prompt_largest": {"n": len(prompt_only),
                                           "share": float(np.mean(prompt_only)) if prompt_only else None},
            "ms_per_edit": round(1e3 * seconds / max(n, 1), 1), "edits": n}


def _markdown(results: dict) -> str:
    methods = list(results)
    cats = sorted({c for m in methods for c in results[m]["categories"]})
    lines = ["| category | " + " | ".join(f"{m}: pointing | {m}: median IoU" for m in methods) + " |",
             "|---|" + "---:|---:|" * len(methods)]

    def cell(x):
        return "-" if x is None else f"{x:.2f}"

    for c in cats + ["all"]:
        vals = []
        for m in methods:
            row = results[m]["all"] if c == "all" else results[m]["categories"].get(c, {})
            vals += [f"{cell(row.get('pointing'))} (n={row.get('n', 0)})", cell(row.get("median_iou"))]
        lines.append(f"| {c} | " + " | ".join(vals) + " |")
    lines += ["", "| method | ms per edit | neutral prompts: output + change share | prompt-only: prompt largest |",
              "|---|---:|---:|---:|"]
    for m in methods:
        r = results[m]
        lines.append(f"| {m} | {r['ms_per_edit']} | {cell(r['neutral_prompt_output_plus_change']['mean'])} "
                     f"(n={r['neutral_prompt_output_plus_change']['n']}) | "
                     f"{cell(r['prompt_only_prompt_largest']['share'])} (n={r['prompt_only_prompt_largest']['n']}) |")
    return "\n".join(lines) + "\n"


def _figure(explainer: Explainer, records, root: Path, limits, path: Path, k: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = []
    for r in records:
        if r.labels and len(shown) < k:
            found = [e for e in explainer.explain(r.input_image, r.prompt, r.output_image, r.mask, thresholds=limits)
                     if e.category in r.labels and e.box]
            if found:
                shown.append((r, found[0]))
    fig, axes = plt.subplots(2, len(shown), figsize=(2.6 * len(shown), 5.4), squeeze=False)
    for j, (r, e) in enumerate(shown):
        size = Image.open(r.input_image).size  # the heatmap and the boxes are in the input image's pixels
        out = np.asarray(Image.open(r.output_image).convert("RGB").resize(size))
        axes[0, j].imshow(out)
        axes[0, j].set_title(f"{e.category}\n{r.prompt[:28]}", fontsize=7)
        axes[1, j].imshow(out)
        axes[1, j].imshow(e.heatmap, cmap="inferno", alpha=0.55)
        x0, y0, x1, y1 = e.box
        axes[1, j].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="cyan", lw=1.2))
        tb = r.meta.get("changed_box")
        if tb:
            axes[1, j].add_patch(plt.Rectangle((tb[0], tb[1]), tb[2] - tb[0], tb[3] - tb[1], fill=False,
                                               color="lime", lw=0.8, ls="--"))
        axes[1, j].plot([e.peak[0]], [e.peak[1]], "c+", ms=9)
        axes[1, j].set_title(" ".join(f"{p[0]}{v:.2f}" for p, v in e.shares.items()), fontsize=7)
        for a in axes[:, j]:
            a.axis("off")
    fig.suptitle("explain: heatmap, box (cyan) and the true change's box (green); shares o/c/p", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--manifest", required=True, help="a synthetic benchmark manifest (its meta holds the truth)")
    ap.add_argument("--thresholds", help="a thresholds.json (default: 0.5)")
    ap.add_argument("--per-category", type=int, default=100, help="flagged edits measured per category")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="runs/explain")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Path(a.manifest)
    records = read_manifest(manifest)
    results = {}
    for method in a.methods.split(","):
        explainer = Explainer.from_model_dir(a.model_dir, method=method)
        limits = explainer.read_thresholds(a.thresholds) if a.thresholds else None
        first = next(r for r in records if r.labels)
        explainer.explain(first.input_image, first.prompt, first.output_image, first.mask)  # warm-up
        results[method] = measure(explainer, records, manifest.parent, limits, a.per_category)
        print(method, json.dumps(results[method]["all"]), results[method]["ms_per_edit"], "ms/edit", flush=True)
        if method == METHODS[0]:
            _figure(explainer, records, manifest.parent, limits, out / "explain_benchmark.png")
    md = _markdown(results)
    print(md)
    (out / "explain_benchmark.md").write_text(md)
    (out / "explain_benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
