"""The benchmark tables of docs/results.md: what each input is worth, on realistic and clean edits.

    .venv/bin/python -m scripts.ablation --out runs/ablation          # about 70 minutes on 2 CPU cores

Writes the realistic benchmark (`editguard synth`, the default renderer) and the clean one
(`--clean`) with the demo's sizes and seeds, trains every model the same way, and reports:

- AUROC per model on iid test and the held-out ood split: the triple, the output-only (prompt +
  output), no-prompt, and the per-modality OR that production editors run today (the max of a
  prompt-only and an image-only model's scores), and the prompt-only model alone (what the
  wording gives away, and so the least any model that reads the prompt should reach); the
  triple without its pair tower, the `tiny` preset's triple; the triple on the clean benchmark;
- the triple's slices by mask kind and codec;
- operating points: thresholds calibrated on iid val at precision 0.9, then precision, recall
  and FPR on iid test and on ood, per category and for "unsafe (any)";
- the check before generation (the `cpu-precheck` preset, ``--ablation precheck``): ood AUROC by
  what the prompt shows.

Everything lands in OUT/ablation.json and OUT/ablation.md; trained models and scored sets are
reused on a re-run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from scripts.experiments import (auroc_report, auroc_table, data, groups, labels_and_meta, train_variant,
                                 write_table)

PAIR_ONLY = ("identity_alteration", "unintended_change")
ROWS = {  # row -> (benchmark, preset, ablation)
    "triple": ("real", "cpu", "triple"),
    "output-only (prompt + output)": ("real", "cpu", "output-only"),
    "no prompt (input + output + mask)": ("real", "cpu", "no-prompt"),
    "per-modality OR (max of prompt-only, image-only)": ("real", "cpu", ("prompt-only", "image-only")),
    "prompt-only (no image)": ("real", "cpu", "prompt-only"),
    "triple, no pair tower": ("real", "cpu-nopair", "triple"),
    "triple, tiny preset (text tower from scratch, no pair tower)": ("real", "tiny", "triple"),
    "triple on the clean benchmark": ("clean", "cpu", "triple"),
}
# the check before generation, with its own preset (cpu-precheck: the embedding noise the pre-check measured
# best at, scripts/precheck_variants.py)
PRECHECK = {"pre-check (cpu-precheck preset)": ("cpu-precheck", "precheck")}


def probs(out: Path, bench: str, preset: str, ablation: str, sets: dict[str, Path]) -> dict[str, np.ndarray]:
    """One row's model, trained once (``cpu-nopair``: the cpu preset without its pair tower), and its
    probabilities on val, test and ood."""
    base, patch = ("cpu", {"pair_encoder": None}) if preset == "cpu-nopair" else (preset, {})
    return train_variant(out / bench, f"{preset}_{ablation}", patch, 0, sets, ablation=ablation, base=base)


def slices(y: np.ndarray, p: np.ndarray, meta: list[dict], names: list[str], field: str) -> dict:
    out = {}
    for v in sorted({str(m.get(field)) for m in meta}):
        idx = np.array([str(m.get(field)) == v for m in meta])
        out[v] = {"n": int(idx.sum()), **auroc_report(y[idx], p[idx], names)}
    return out


def operating_points(y: dict, p: dict, names: list[str]) -> dict:
    """Thresholds at precision >= 0.9 on iid val; their figures on iid test and on ood."""
    from editguard.clients.calibrate import Target, calibrate, check_thresholds, threshold_report

    cal = calibrate(names, y["val"], p["val"], targets={n: Target("precision", 0.9) for n in names},
                    allow_unmet=True, n_boot=100)
    th = np.array([cal.choices[n].threshold for n in names])
    ref = threshold_report(names, th, y["val"], p["val"], n_boot=100)
    return {"thresholds": th.tolist(), "val": ref,
            **{s: check_thresholds(names, th, y[s], p[s], reference=ref, n_boot=100) for s in ("test", "ood")}}


def tables(res: dict, names: list[str]) -> str:
    lines = ["| model | iid macro AUROC | ood macro AUROC | identity alteration (iid / ood) | "
             "unintended change (iid / ood) | hate symbols (iid / ood) |", "|---|---|---|---|---|---|"]
    for row, r in res["rows"].items():
        cats = " | ".join(f"{r['test']['per_category'][c]:.3f} / {r['ood']['per_category'][c]:.3f}"
                          for c in (*PAIR_ONLY, "hate_symbols"))
        lines.append(f"| {row} | {r['test']['macro']:.3f} | {r['ood']['macro']:.3f} | {cats} |")
    for field in ("mask_kind", "codec"):
        lines += ["", f"Triple, macro AUROC by `{field}` (n):", "", "| split | " + field + " | n | macro AUROC | "
                  "unintended change |", "|---|---|---|---|---|"]
        for split in ("test", "ood"):
            for v, s in res["slices"][split][field].items():
                uc = s["per_category"].get("unintended_change", float("nan"))
                lines.append(f"| {split} | {v} | {s['n']} | {s['macro']:.3f} | {uc:.3f} |")
    lines += ["", "The check before generation on ood, macro AUROC by what the prompt shows (and per category "
              "where it states the edit):", "", "| pre-check | " + " | ".join(res["precheck"]["groups"]) + " | "
              + " | ".join(c for c in names if c != "unintended_change") + " |",
              "|---|" + "---|" * (len(res["precheck"]["groups"]) + len(names) - 1)]
    for row, r in res["precheck"]["rows"].items():
        cells = [r[g]["macro"] for g in res["precheck"]["groups"]]
        cells += [r["stated"][c] for c in names if c != "unintended_change"]
        cells = ["-" if v is None else f"{v:.3f}" for v in cells]
        lines.append(f"| {row} | {' | '.join(cells)} |")
    op = res["operating_points"]
    lines += ["", "Triple, thresholds from iid val at precision >= 0.9 (precision / recall / FPR):", "",
              "| category | iid test | ood |", "|---|---|---|"]
    for n in [*names, "unsafe (any)"]:
        cells = []
        for split in ("test", "ood"):
            c = op[split]["unsafe_any"] if n == "unsafe (any)" else op[split]["categories"][n]
            cells.append(f"{c['precision']:.3f} / {c['recall']:.3f} / {c['fpr']:.4f}")
        lines.append(f"| {n} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/ablation")
    a = p.parse_args(argv)
    out = Path(a.out)
    from editguard.model import default_taxonomy

    names = default_taxonomy().names
    sets = {bench: data(out, bench) for bench in ("real", "clean")}
    truth = {b: {s: labels_and_meta(sets[b][s], names) for s in ("val", "test", "ood")} for b in sets}
    res: dict = {"rows": {}}
    for row, (bench, preset, ablation) in ROWS.items():
        if isinstance(ablation, tuple):  # per-modality OR: each model alone, then the max
            parts = [probs(out, bench, preset, ab, sets[bench]) for ab in ablation]
            pr = {s: np.maximum(*(q[s] for q in parts)) for s in ("val", "test", "ood")}
        else:
            pr = probs(out, bench, preset, ablation, sets[bench])
        res["rows"][row] = {s: auroc_report(truth[bench][s][0], pr[s], names) for s in ("test", "ood")}
        if row == "triple":
            y = {s: truth[bench][s][0] for s in ("val", "test", "ood")}
            res["slices"] = {s: {f: slices(y[s], pr[s], truth[bench][s][1], names, f) for f in ("mask_kind", "codec")}
                             for s in ("test", "ood")}
            res["operating_points"] = operating_points(y, pr, names)
    masks = groups(truth["real"]["ood"][1])
    res["precheck"] = {"groups": ["stated", "neutral", "side effect"], "rows": {
        row: auroc_table(names, truth["real"]["ood"][0], probs(out, "real", preset, ab, sets["real"])["ood"], masks)
        for row, (preset, ab) in PRECHECK.items()}}
    write_table(out, "ablation", tables(res, names), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
