"""The red team's training table in docs/red-team.md: what a training setting does to what gets through.

    .venv/bin/python -m scripts.redteam_variants --out runs/redteam_variants   # about 40 minutes on 2 CPU cores

For each variant, a `cpu` model and a `cpu-precheck` model trained on the realistic benchmark (the
demo's data and epochs), exported into one repository, calibrated in-process on the iid validation
set (precision >= 0.9 per category, installed), then:

- clean: macro AUROC, and precision, recall and FPR of "unsafe" at the installed thresholds, on all
  2,000 held-out ood edits, for both checks;
- attacked: `editguard redteam` in-process on 400 unsafe + 400 safe ood edits (seed 0) with the
  wording, long-prompt and mask families: ASR and the safe flag rate for each attack and check.

Variants:

- `plain`: no rewritten prompts (`editguard train --preset cpu --prompt-augment 0`);
- `augmented`: `--prompt-augment 0.3 --mask-lie 0.1`: the prompts of 30% of the training items
  rewritten (`editguard.training.augment`: typos, leetspeak, a benign framing, friendly padding; the
  default for the `cpu` model, not for the pre-check), and the masks of 10% moved away from the change
  (`editguard.training.data.misplace_mask`).

Writes OUT/redteam_variants.json and OUT/redteam_variants.md; models, repositories and reports are
reused on a re-run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from scripts.experiments import EPOCHS, parser, realistic_benchmark, run, write_table

VARIANTS = {"plain": ["--prompt-augment", "0"], "augmented": ["--prompt-augment", "0.3", "--mask-lie", "0.1"]}
PER_CLASS = 400
ATTACKS = "wording,long_prompt,mask"


def build(out: Path, name: str, flags: list[str], sets: dict[str, Path]) -> Path:
    """The variant's repository: both checks trained, exported and calibrated (each step skipped when done)."""
    repo = out / name / "repository"
    for preset, model in (("cpu", "editguard"), ("cpu-precheck", "editguard_precheck")):
        model_dir = out / name / preset
        if not (model_dir / "metrics.json").exists():
            run("train", "--train", str(sets["train"]), "--val", str(sets["val"]), "--out", str(model_dir),
                "--preset", preset, "--epochs", str(EPOCHS), "--device", "cpu", "--no-progress", *flags)
        if not (repo / model / "1").exists():
            run("export", str(model_dir), "--repository", str(repo))
        pre = ["--precheck"] if preset == "cpu-precheck" else []
        for split in ("val", "ood"):
            res = out / name / "results" / f"{model}_{split}.jsonl"
            if split == "ood" and not res.exists():
                run("calibrate", str(out / name / "results" / f"{model}_val.jsonl"), "--target", "precision=0.9",
                    "--allow-unmet", "--out", str(out / name / f"{model}_thresholds.json"),
                    "--model", model, "--install", str(repo))
            if not res.exists():
                run("score", str(sets[split]), "--out", str(res), "--repository", str(repo), "--no-progress", *pre)
    return repo


def clean(results: Path, names: list[str]) -> dict:
    """Macro AUROC, and "unsafe"'s precision, recall and FPR at the installed thresholds."""
    from editguard.clients.results import read_results
    from editguard.reports import classification_report

    rows = read_results(results)
    y = np.array([[n in r["labels"] for n in names] for r in rows], int)
    p = np.array([[r[f"score_{n}"] for n in names] for r in rows])
    truth, flag = y.any(1), np.array([r["unsafe"] for r in rows])
    tp, fp = int((truth & flag).sum()), int((~truth & flag).sum())
    return {"macro_auroc": round(classification_report(y, p, names)["macro"]["auroc"], 4),
            "precision": round(tp / max(1, tp + fp), 4), "recall": round(tp / max(1, truth.sum()), 4),
            "fpr": round(fp / max(1, (~truth).sum()), 4)}


def main(argv: list[str] | None = None) -> int:
    a = parser(__doc__, "runs/redteam_variants", "--only-plain",
               "train and attack the plain variant alone").parse_args(argv)
    out = Path(a.out)
    names, sets = realistic_benchmark(a.data)
    rows: dict = {}
    for name, flags in VARIANTS.items():
        if a.only_plain and name != "plain":
            continue
        repo = build(out, name, flags, sets)
        report = out / name / "redteam" / "redteam.json"
        if not report.exists():
            run("redteam", str(sets["ood"]), "--repository", str(repo), "--out", str(report.parent),
                "--per-class", str(PER_CLASS), "--attacks", ATTACKS, "--no-progress")
        rows[name] = {"clean": {check: clean(out / name / "results" / f"{model}_ood.jsonl", names)
                                for check, model in (("post", "editguard"), ("pre", "editguard_precheck"))},
                      "attacks": attack_rows(json.loads(report.read_text()))}
    write_table(out, "redteam_variants", table(rows), rows)
    return 0


def attack_rows(report: dict) -> dict:
    """attack -> check -> ASR over all unsafe edits, the worst category's ASR, and the safe flag rate."""
    out: dict = {}
    for r in report["rows"]:
        cell = out.setdefault(r["attack"], {}).setdefault(r["check"], {"worst": None, "worst_asr": 0.0})
        if r["category"] == "all":
            cell.update(asr=r["asr"], safe_flagged=r["safe_flag_rate"], safe_flagged_clean=r["safe_flag_rate_clean"])
        elif r["asr"] is not None and r["caught"] >= 10 and r["asr"] > cell["worst_asr"]:
            cell.update(worst=r["category"], worst_asr=r["asr"])
    return out


def table(rows: dict) -> str:
    variants = list(rows)
    lines = ["| | " + " | ".join(f"{v} post | {v} pre" for v in variants) + " |",
             "|---|" + "---:|" * (2 * len(variants))]
    for key in ("macro_auroc", "precision", "recall", "fpr"):
        lines.append(f"| clean {key} | " + " | ".join(
            f"{rows[v]['clean']['post'][key]:.4f} | {rows[v]['clean']['pre'][key]:.4f}" for v in variants) + " |")
    for attack in rows[variants[0]]["attacks"]:
        cells = []
        for v in variants:
            for check in ("post", "pre"):
                r = rows[v]["attacks"].get(attack, {}).get(check)
                cells.append(f"{100 * r['asr']:.1f}% ({100 * r['safe_flagged']:.1f}%)" if r else "-")
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return ("ASR of the caught unsafe edits (in brackets: safe edits flagged under the same attack)\n\n"
            + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
