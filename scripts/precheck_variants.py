"""The pre-check table of docs/results.md: how the pre-check's training settings move what it can know, over
three seeds.

    .venv/bin/python -m scripts.precheck_variants --out runs/precheck_variants   # about 20 minutes on 2 CPU cores
    .venv/bin/python -m scripts.precheck_variants --out runs/precheck_variants --fine-tune  # + about 50 minutes

The cpu preset's pre-check (``--ablation precheck``: input image, mask and prompt), trained on the
ablation's realistic benchmark (`scripts.ablation` writes it; the same sizes as `make demo`)
with these settings:

- `noise 0.12`: the cpu preset as it is (prompt-embedding noise 0.12, the post-check's choice);
- `noise 0.08`: what the `cpu-precheck` preset uses.

(Image dropout, the head seeing the request's image embedding zeroed for some training items,
was measured too and not adopted; its rows are in docs/results.md.)

With ``--fine-tune``, one more row: `noise 0.08 + text tower fine-tuned`, the MiniLM prompt tower
trained too (``text_encoder.freeze: false``, at the train command's pretrained learning-rate scale),
about 16 minutes a seed instead of 3.

Reported on the held-out ood split: AUROC per category over the triples whose prompt states the
edit (`scripts.precheck_report`'s groups; each category's positives there come from two or three
unseen phrasings, so one misread phrasing moves a figure by hundredths), macro AUROC over the neutral
and side-effect groups, and at per-category thresholds for precision >= 0.95 on iid val, the share of
unsafe edits stopped before generation and the false blocks (FPR) among safe requests; that
operating point on iid test too, which is where a choice between settings is made without the
held-out split.

Writes OUT/precheck_variants.json and OUT/precheck_variants.md; trained models are reused on a re-run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from scripts.experiments import (auroc_table, groups, labels_and_meta, operating_point, parser,
                                 realistic_benchmark, thresholds, train_variant, write_table)

VARIANTS = {"noise 0.12": {},
            "noise 0.08": {"text_encoder": {"embedding_noise": 0.08}}}
FINE_TUNE = {"text_encoder": {"embedding_noise": 0.08, "freeze": False}}
SEEDS = (0, 1, 2)
PRECISION = 0.95


def main(argv: list[str] | None = None) -> int:
    a = parser(__doc__, "runs/precheck_variants", "--fine-tune", "also train the row with the prompt tower "
               "fine-tuned (about 50 more minutes)").parse_args(argv)
    out = Path(a.out)
    variants = {**VARIANTS, **({"noise 0.08 + text tower fine-tuned": FINE_TUNE} if a.fine_tune else {})}
    names, sets = realistic_benchmark(a.data)
    y_val, _ = labels_and_meta(sets["val"], names)
    y, meta = labels_and_meta(sets["ood"], names)
    y_test, meta_test = labels_and_meta(sets["test"], names)
    masks, masks_test = groups(meta), groups(meta_test)
    stated = [n for n in names if y[masks["stated"], names.index(n)].any()]
    rows = {}
    for name, patch in variants.items():
        for seed in SEEDS:
            p = train_variant(out, name, patch, seed, sets, ablation="precheck")
            auroc = auroc_table(names, y, p["ood"], masks)
            th = thresholds(y_val, p["val"], PRECISION)
            rows[f"{name}, seed {seed}"] = {
                "variant": name, "seed": seed, "stated": {n: auroc["stated"][n] for n in stated},
                "neutral": auroc["neutral"]["macro"], "side effect": auroc["side effect"]["macro"],
                "operating_point": operating_point(y, p["ood"], th, masks)["all"],
                "operating_point_iid": operating_point(y_test, p["test"], th, masks_test)["all"]}
    lines = ["| pre-check (ood unless named) | " + " | ".join(n.replace("_", " ") for n in stated) + " | worst | neutral "
             f"| side effect | stopped before generation (FPR), precision >= {PRECISION} on val | the same on iid test |",
             "|---|" + "---|" * (len(stated) + 5)]

    def stops(ops: list[dict]) -> str:
        return (f"{100 * np.mean([o['share_stopped'] for o in ops]):.1f}% "
                f"({100 * np.mean([o['fpr'] for o in ops]):.1f}%)")

    for name in variants:
        runs = [r for r in rows.values() if r["variant"] == name]
        for r in runs + [None]:  # each seed, then the mean over seeds
            group = runs if r is None else [r]
            stated_auroc = {n: float(np.mean([g["stated"][n] for g in group])) for n in stated}
            label = f"**{name}, mean**" if r is None else f"{name}, seed {r['seed']}"
            lines.append(f"| {label} | " + " | ".join(f"{stated_auroc[n]:.3f}" for n in stated) +
                         f" | {min(stated_auroc.values()):.3f} | {np.mean([g['neutral'] for g in group]):.3f} | "
                         f"{np.mean([g['side effect'] for g in group]):.3f} | "
                         f"{stops([g['operating_point'] for g in group])} | "
                         f"{stops([g['operating_point_iid'] for g in group])} |")
    write_table(out, "precheck_variants", "\n".join(lines), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
