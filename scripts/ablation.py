"""The README's benchmark tables: what each input is worth, on realistic and clean edits.

    .venv/bin/python scripts/ablation.py --out runs/ablation          # about 50 minutes on 2 CPU cores

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
- the check before generation as a separate model or as a second head on the triple's towers
  (`--ablation joint`): ood AUROC by what the prompt shows, and the joint model's triple head
  beside the triple's.

Everything lands in OUT/ablation.json and OUT/ablation.md; trained models and scored sets are
reused on a re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from demo import EPOCHS, SETTINGS, run  # noqa: E402

PAIR_ONLY = ("identity_alteration", "unintended_change")
ROWS = {  # row -> (benchmark, preset, ablation, extra train flags)
    "triple": ("real", "cpu", "triple", ()),
    "output-only (prompt + output)": ("real", "cpu", "output-only", ()),
    "no prompt (input + output + mask)": ("real", "cpu", "no-prompt", ()),
    "per-modality OR (max of prompt-only, image-only)": ("real", "cpu", ("prompt-only", "image-only"), ()),
    "prompt-only (no image)": ("real", "cpu", "prompt-only", ()),
    "triple, no pair tower": ("real", "cpu-nopair", "triple", ()),
    "triple, tiny preset (text tower from scratch, no pair tower)": ("real", "tiny", "triple", ()),
    "triple on the clean benchmark": ("clean", "cpu", "triple", ()),
    "triple head of the joint model (with a pre-check head)": ("real", "cpu", "joint", ()),
}
# the check before generation, as a separate model or as a second head on the triple's towers
# (preset, ablation, head): the separate model with its own preset (cpu-precheck: the prompt noise the
# pre-check measured best at, scripts/precheck_variants.py), the joint one with the triple's
PRECHECK = {"separate precheck model": ("cpu-precheck", "precheck", "triple"),
            "second head (joint)": ("cpu", "joint", "precheck")}


def data(out: Path, bench: str) -> dict[str, Path]:
    """The benchmark's four manifests, written once."""
    sets = {}
    for name, s in SETTINGS.items():
        folder = out / "data" / bench / name
        if not (folder / "manifest.jsonl").exists():
            run("synth", "--out", str(folder), "--n", str(s["n"]), "--seed", str(s["seed"]), "--split", s["split"],
                *(["--clean"] if bench == "clean" else []))
        sets[name] = folder / "manifest.jsonl"
    return sets


def write_table(out: Path, stem: str, md: str, rows: dict) -> None:
    """Print the markdown table and write it as OUT/STEM.md, its rows as OUT/STEM.json."""
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(md + "\n")
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=2))


def preset_arg(out: Path, preset: str) -> str:
    """A preset name, or for ``cpu-nopair`` a config file: the cpu preset without its pair tower."""
    if preset != "cpu-nopair":
        return preset
    from editguard.model import preset_config

    d = preset_config("cpu").to_dict()
    d.update(pair_encoder=None, labels=[])
    d.pop("preset")
    path = out / "cpu-nopair.json"
    path.write_text(json.dumps(d, indent=2))
    return str(path)


def probs(out: Path, bench: str, preset: str, ablation: str, sets: dict[str, Path],
          flags: tuple[str, ...] = (), head: str = "triple") -> dict[str, np.ndarray]:
    """Train one model (once) and its probabilities on val, test and ood (cached as .npy); of the
    joint model's pre-check head with ``head="precheck"``."""
    from editguard.training.evaluate import predict_manifest

    model = out / "models" / "_".join([bench, preset, ablation, *(f.strip("-") for f in flags)])
    if not (model / "metrics.json").exists():
        run("train", "--train", str(sets["train"]), "--val", str(sets["val"]), "--out", str(model), "--preset",
            preset_arg(out, preset), "--ablation", ablation, "--epochs", str(EPOCHS), "--device", "cpu",
            "--no-progress", *flags)
    res = {}
    for split in ("val", "test", "ood"):
        f = model / f"probs_{split}{'' if head == 'triple' else '_' + head}.npy"
        if not f.exists():
            np.save(f, predict_manifest(model, sets[split], progress=False, head=head)[2])
        res[split] = np.load(f)
    return res


def labels_and_meta(manifest: Path, names: list[str]) -> tuple[np.ndarray, list[dict]]:
    from editguard.training.data import label_matrix
    from editguard.training.manifest import read_manifest

    records = read_manifest(manifest, labels=names)
    return label_matrix(records, names), [r.meta for r in records]


def auroc_report(y: np.ndarray, p: np.ndarray, names: list[str]) -> dict:
    """Macro and per-category AUROC from :func:`classification_report` (NaN where one class is absent)."""
    from editguard.training.metrics import classification_report

    r = classification_report(y, p, names)
    return {"macro": r["macro"]["auroc"], "per_category": {n: m["auroc"] for n, m in r["per_category"].items()}}


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
    for row, (bench, preset, ablation, flags) in ROWS.items():
        if isinstance(ablation, tuple):  # per-modality OR: each model alone, then the max
            parts = [probs(out, bench, preset, ab, sets[bench]) for ab in ablation]
            pr = {s: np.maximum(*(q[s] for q in parts)) for s in ("val", "test", "ood")}
        else:
            pr = probs(out, bench, preset, ablation, sets[bench], flags)
        res["rows"][row] = {s: auroc_report(truth[bench][s][0], pr[s], names) for s in ("test", "ood")}
        if row == "triple":
            y = {s: truth[bench][s][0] for s in ("val", "test", "ood")}
            res["slices"] = {s: {f: slices(y[s], pr[s], truth[bench][s][1], names, f) for f in ("mask_kind", "codec")}
                             for s in ("test", "ood")}
            res["operating_points"] = operating_points(y, pr, names)
    from precheck_report import auroc_table, groups

    masks = groups(truth["real"]["ood"][1])
    res["precheck"] = {"groups": ["stated", "neutral", "side effect"], "rows": {
        row: auroc_table(names, truth["real"]["ood"][0], probs(out, "real", preset, ab, sets["real"], head=head)["ood"],
                         masks) for row, (preset, ab, head) in PRECHECK.items()}}
    write_table(out, "ablation", tables(res, names), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
