"""The README's ablation table: triple vs output-only vs no-prompt, trained the same way.

    .venv/bin/python scripts/ablation.py --out runs/ablation      # about 15 minutes on 2 CPU cores

Uses the demo's data settings (scripts/demo.py); prints a markdown table and writes
ablation.json beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from demo import EPOCHS, SETTINGS, run  # noqa: E402

ABLATIONS = {"triple": "triple (input + prompt + output)", "output-only": "output-only (prompt + output)",
             "no-prompt": "no prompt (input + output + mask)"}
PAIR_ONLY = ("identity_alteration", "unintended_change")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/ablation")
    a = p.parse_args(argv)
    out = Path(a.out)
    for name, s in SETTINGS.items():
        if not (out / name / "manifest.jsonl").exists():
            run("synth", "--out", str(out / name), "--n", str(s["n"]), "--seed", str(s["seed"]), "--split", s["split"])
    table = {}
    for ab in ABLATIONS:
        model = out / f"model_{ab}"
        if not (model / "metrics.json").exists():
            run("train", "--train", str(out / "train/manifest.jsonl"), "--val", str(out / "val/manifest.jsonl"),
                "--out", str(model), "--ablation", ab, "--epochs", str(EPOCHS), "--device", "cpu", "--no-progress")
        for split in ("test", "ood"):
            run("evaluate", str(model), str(out / f"{split}/manifest.jsonl"), "--json", str(out / f"{ab}_{split}.json"))
        table[ab] = {split: json.loads((out / f"{ab}_{split}.json").read_text()) for split in ("test", "ood")}
    lines = ["| model | iid macro AUROC | ood macro AUROC | identity alteration (iid / ood) | "
             "unintended change (iid / ood) |", "|---|---|---|---|---|"]
    for ab, label in ABLATIONS.items():
        t, o = table[ab]["test"], table[ab]["ood"]
        cats = " | ".join(f"{t['per_category'][c]['auroc']:.3f} / {o['per_category'][c]['auroc']:.3f}" for c in PAIR_ONLY)
        lines.append(f"| {label} | {t['macro']['auroc']:.3f} | {o['macro']['auroc']:.3f} | {cats} |")
    print("\n".join(lines))
    (out / "ablation.json").write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
