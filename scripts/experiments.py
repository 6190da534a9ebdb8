"""What the research scripts share: the benchmark, training a variant, and the figures they report.

The scripts (``python -m scripts.ablation``, ``scripts.prompt_variants``, ``scripts.precheck_variants``,
``scripts.precheck_report``) reproduce the tables in docs/results.md; ``scripts.demo`` is ``make demo``.
Run them from the repository root with the project's environment (``make install`` makes it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from editguard.cli import main as editguard

SETTINGS = {  # the benchmark: the demo's data sets, and the ones docs/results.md was measured on
    "train": dict(n=6000, seed=1, split="iid"),
    "val": dict(n=1000, seed=2, split="iid"),
    "test": dict(n=2000, seed=3, split="iid"),
    "ood": dict(n=2000, seed=4, split="ood"),
}
EPOCHS = 10  # training epochs of every model in docs/results.md


def parser(doc: str, out: str, extra_row: str, extra_help: str) -> argparse.ArgumentParser:
    """A variants script's command line: its docstring as help, ``--out``, ``--data``, and the flag
    ``extra_row`` that adds its most expensive row."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=out, help="folder for the models and the table (default: %(default)s)")
    ap.add_argument("--data", default="runs/ablation", help="where scripts.ablation keeps (or will write) the "
                    "benchmark (default: %(default)s)")
    ap.add_argument(extra_row, action="store_true", help=extra_help)
    return ap


def run(*argv: str) -> None:
    """One ``editguard`` command, printed before it runs and timed after; exits on failure."""
    print(f"\n$ editguard {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    rc = editguard(list(argv))
    if rc:
        sys.exit(f"`editguard {argv[0]}` failed with exit code {rc}")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


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


def realistic_benchmark(folder: Path) -> tuple[list[str], dict[str, Path]]:
    """The default taxonomy's category names, and the realistic benchmark's manifests under ``folder``."""
    from editguard.model import default_taxonomy

    return default_taxonomy().names, data(Path(folder), "real")


def write_table(out: Path, stem: str, md: str, rows: dict) -> None:
    """Print the markdown table and write it as OUT/STEM.md, its rows as OUT/STEM.json."""
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(md + "\n")
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=2))


def labels_and_meta(manifest: Path, names: list[str]) -> tuple[np.ndarray, list[dict]]:
    from editguard.manifest import read_manifest
    from editguard.training.data import label_matrix

    records = read_manifest(manifest, labels=names)
    return label_matrix(records, names), [r.meta for r in records]


def auroc_report(y: np.ndarray, p: np.ndarray, names: list[str]) -> dict:
    """Macro and per-category AUROC from :func:`classification_report` (NaN where one class is absent)."""
    from editguard.reports import classification_report

    r = classification_report(y, p, names)
    return {"macro": r["macro"]["auroc"], "per_category": {n: m["auroc"] for n, m in r["per_category"].items()}}


def train_variant(out: Path, name: str, patch: dict, seed: int, sets: dict[str, Path], ablation: str = "triple",
                  base: str = "cpu") -> dict[str, np.ndarray]:
    """The ``base`` preset with ``patch`` over it (a section's fields, or a top-level field's value), trained
    once with this seed for ``EPOCHS`` epochs; its probabilities on val, test and ood (cached as .npy beside
    the model, so a re-run reuses both)."""
    from editguard.model import preset_config
    from editguard.training.evaluate import predict_manifest

    slug = name.replace(" ", "_")
    model = out / "models" / f"{slug}_s{seed}"
    if not (model / "metrics.json").exists():
        cfg = preset_config(base).to_dict()
        cfg.pop("preset")
        cfg["labels"] = []
        for key, value in patch.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
        arch = out / f"{slug}.json"
        out.mkdir(parents=True, exist_ok=True)
        arch.write_text(json.dumps(cfg, indent=2))
        run("train", "--train", str(sets["train"]), "--val", str(sets["val"]), "--out", str(model), "--preset",
            str(arch), "--ablation", ablation, "--epochs", str(EPOCHS), "--device", "cpu", "--seed", str(seed),
            "--no-progress")
    res = {}
    for split in ("val", "test", "ood"):
        f = model / f"probs_{split}.npy"
        if not f.exists():
            np.save(f, predict_manifest(model, sets[split], progress=False)[2])
        res[split] = np.load(f)
    return res


def train_seconds(out: Path, name: str, seed: int) -> float:
    """The training time of a variant that :func:`train_variant` trained: its epochs' seconds, summed."""
    log = out / "models" / f"{name.replace(' ', '_')}_s{seed}" / "train_log.jsonl"
    return sum(json.loads(line)["seconds"] for line in log.read_text().splitlines() if line.strip())


def groups(metas: list[dict]) -> dict[str, np.ndarray]:
    """Boolean masks of the prompt groups, from each item's meta."""
    side = np.array([str(m.get("op", "")).startswith("unintended_") for m in metas])
    neutral = np.array([bool(m.get("neutral_prompt", False)) for m in metas]) & ~side
    return {"stated": ~side & ~neutral, "neutral": neutral, "side effect": side, "all": np.ones(len(metas), bool)}


def auroc_table(labels, y, p, masks) -> dict:
    from sklearn.metrics import roc_auc_score

    out = {}
    for g, m in masks.items():
        row = {}
        for j, c in enumerate(labels):
            yy = y[m, j]
            row[c] = round(float(roc_auc_score(yy, p[m, j])), 4) if 0 < yy.sum() < len(yy) else None
        vals = [v for v in row.values() if v is not None]
        row["macro"] = round(float(np.mean(vals)), 4) if vals else None
        row["n"], row["unsafe"] = int(m.sum()), int(y[m].any(1).sum())
        out[g] = row
    return out


def thresholds(y: np.ndarray, prob: np.ndarray, precision: float) -> np.ndarray:
    """Per category, the threshold for precision >= ``precision`` on (y, prob)."""
    from editguard.clients.calibrate import Target, choose_threshold

    return np.array([choose_threshold(y[:, j], prob[:, j], target=Target("precision", precision)).threshold
                     for j in range(y.shape[1])])


def operating_point(y: np.ndarray, prob: np.ndarray, th: np.ndarray, masks: dict[str, np.ndarray]) -> dict:
    """Per group: the unsafe edits an item is flagged on (any category over its threshold) would stop, and
    the safe requests it would falsely block."""
    flag = (prob >= th).any(1)
    unsafe = y.any(1)
    op = {}
    for g, m in masks.items():
        tp, fp = int((flag & unsafe & m).sum()), int((flag & ~unsafe & m).sum())
        n_unsafe = int((unsafe & m).sum())
        op[g] = {"unsafe": n_unsafe, "stopped": tp, "share_stopped": round(tp / max(1, n_unsafe), 4),
                 "false_blocks": fp, "precision": round(tp / max(1, tp + fp), 4),
                 "fpr": round(fp / max(1, (~unsafe & m).sum()), 4)}
    return op
