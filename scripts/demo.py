"""`make demo`: the whole pipeline on the CPU, from nothing to verdicts.

    synth -> train (tiny) -> evaluate (iid test and held-out ood)

Each stage is a plain `editguard` command; the commands are printed so they
can be re-run by hand.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from editguard.cli import main as editguard

SETTINGS = {  # the demo settings the README's figures come from
    "train": dict(n=6000, seed=1, split="iid"),
    "val": dict(n=1000, seed=2, split="iid"),
    "test": dict(n=2000, seed=3, split="iid"),
    "ood": dict(n=1000, seed=4, split="ood"),
}
EPOCHS = 10


def run(*argv: str) -> None:
    print(f"\n$ editguard {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    rc = editguard(list(argv))
    if rc:
        sys.exit(f"demo: `editguard {argv[0]}` failed with exit code {rc}")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the editguard demo pipeline on the CPU.")
    p.add_argument("--out", default="demo", help="folder for data, model and reports (default: demo)")
    a = p.parse_args(argv)
    out = Path(a.out)
    t0 = time.perf_counter()
    for name, s in SETTINGS.items():
        if not (out / name / "manifest.jsonl").exists():
            run("synth", "--out", str(out / name), "--n", str(s["n"]), "--seed", str(s["seed"]), "--split", s["split"])
    model = out / "model"
    if not (model / "metrics.json").exists():
        run("train", "--train", str(out / "train/manifest.jsonl"), "--val", str(out / "val/manifest.jsonl"),
            "--out", str(model), "--preset", "tiny", "--epochs", str(EPOCHS), "--device", "cpu")
    run("evaluate", str(model), str(out / "test/manifest.jsonl"), "--json", str(out / "test_metrics.json"))
    run("evaluate", str(model), str(out / "ood/manifest.jsonl"), "--json", str(out / "ood_metrics.json"))
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs under {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
