"""How much a pre-generation check can know: per-category AUROC of a model on a labelled manifest,
split by what the prompt shows, and the share of unsafe edits it would stop before generation.

    .venv/bin/python scripts/precheck_report.py runs/precheck demo/ood/manifest.jsonl \
        --calibrate-on demo/val/manifest.jsonl --out runs/precheck/report.json

A model trained with ``--ablation joint`` (the pre-check as a second head on the triple model's
towers) reports either head: ``--head precheck`` or ``--head triple``.

Groups (from the synthetic benchmark's meta):
- *stated*: the prompt states the edit (not a neutral prompt, not a side effect): a request-side
  check can know;
- *neutral*: a neutral prompt ("make it look nicer") over an unsafe edit: only the output shows it;
- *side effect*: a safe prompt whose edit also changed the person: only the output shows it.

The operating point: per-category thresholds for precision >= ``--precision`` on the calibration
manifest; the share of unsafe edits flagged there is the share a backend would not generate, and
``--gen-seconds`` turns it into GPU seconds saved per 1,000 requests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("manifest", help="labelled manifest to report on (the realistic ood split, say)")
    p.add_argument("--calibrate-on", required=True, help="labelled manifest to choose the thresholds on")
    p.add_argument("--precision", type=float, default=0.95)
    p.add_argument("--gen-seconds", type=float, default=4.0, help="GPU seconds one inpainting generation costs "
                   "(default: %(default)s, an SDXL-class inpainting at 1024 px on one GPU)")
    p.add_argument("--head", default="triple", choices=["triple", "precheck"],
                   help="for a model trained with --ablation joint: which head to report (precheck: the "
                   "request-only head on the triple's towers)")
    p.add_argument("--out", help="write the report as JSON")
    a = p.parse_args(argv)

    from editguard.training.evaluate import predict_manifest

    recs_c, cfg, p_c = predict_manifest(a.model_dir, a.calibrate_on, progress=False, head=a.head)
    labels = cfg.labels
    y_c = np.array([[c in r.labels for c in labels] for r in recs_c], int)
    th = thresholds(y_c, p_c, a.precision)
    recs, _, prob = predict_manifest(a.model_dir, a.manifest, progress=False, head=a.head)
    y = np.array([[c in r.labels for c in labels] for r in recs], int)
    masks = groups([r.meta for r in recs])
    report = {"model_dir": a.model_dir, "ablation": cfg.ablation, "head": a.head, "manifest": a.manifest, "auroc": auroc_table(
        labels, y, prob, masks), "thresholds": dict(zip(labels, th.round(4).tolist()))}
    op = operating_point(y, prob, th, masks)
    saved = op["all"]["stopped"] / len(recs) * 1000 * a.gen_seconds
    report["operating_point"] = {"target": f"precision >= {a.precision} per category on {a.calibrate_on}",
                                 "groups": op, "gen_seconds": a.gen_seconds,
                                 "gpu_seconds_saved_per_1000_requests": round(saved, 1)}
    cols = labels + ["macro"]
    print(f"per-category AUROC of {a.model_dir} ({cfg.ablation}, {a.head} head) on {a.manifest}")
    print(f"{'group':<12} {'n':>5} {'unsafe':>6} " + " ".join(f"{c[:10]:>10}" for c in cols))
    for g, row in report["auroc"].items():
        print(f"{g:<12} {row['n']:>5} {row['unsafe']:>6} " + " ".join(
            f"{row[c]:>10.3f}" if row[c] is not None else f"{'-':>10}" for c in cols))
    print(f"\nat {report['operating_point']['target']}:")
    for g, o in op.items():
        print(f"  {g:<12} stops {o['stopped']}/{o['unsafe']} unsafe edits ({100 * o['share_stopped']:.1f}%), "
              f"{o['false_blocks']} false blocks (precision {o['precision']:.3f}, FPR {o['fpr']:.4f})")
    print(f"  GPU seconds saved per 1,000 requests at {a.gen_seconds:g} s a generation: {saved:.0f}")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
