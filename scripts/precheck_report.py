"""How much a pre-generation check can know: per-category AUROC of a model on a labelled manifest,
split by what the prompt shows, and the share of unsafe edits it would stop before generation.

    .venv/bin/python -m scripts.precheck_report runs/precheck demo/ood/manifest.jsonl \
        --calibrate-on demo/val/manifest.jsonl --out runs/precheck/report.json

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

from scripts.experiments import auroc_table, groups, operating_point, thresholds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("manifest", help="labelled manifest to report on (the realistic ood split, say)")
    p.add_argument("--calibrate-on", required=True, help="labelled manifest to choose the thresholds on")
    p.add_argument("--precision", type=float, default=0.95)
    p.add_argument("--gen-seconds", type=float, default=4.0, help="GPU seconds one inpainting generation costs "
                   "(default: %(default)s, an SDXL-class inpainting at 1024 px on one GPU)")
    p.add_argument("--out", help="write the report as JSON")
    a = p.parse_args(argv)

    from editguard.training.evaluate import predict_manifest

    recs_c, cfg, p_c = predict_manifest(a.model_dir, a.calibrate_on, progress=False)
    labels = cfg.labels
    y_c = np.array([[c in r.labels for c in labels] for r in recs_c], int)
    th = thresholds(y_c, p_c, a.precision)
    recs, _, prob = predict_manifest(a.model_dir, a.manifest, progress=False)
    y = np.array([[c in r.labels for c in labels] for r in recs], int)
    masks = groups([r.meta for r in recs])
    report = {"model_dir": a.model_dir, "ablation": cfg.ablation, "manifest": a.manifest,
              "auroc": auroc_table(labels, y, prob, masks), "thresholds": dict(zip(labels, th.round(4).tolist()))}
    op = operating_point(y, prob, th, masks)
    saved = op["all"]["stopped"] / len(recs) * 1000 * a.gen_seconds
    report["operating_point"] = {"target": f"precision >= {a.precision} per category on {a.calibrate_on}",
                                 "groups": op, "gen_seconds": a.gen_seconds,
                                 "gpu_seconds_saved_per_1000_requests": round(saved, 1)}
    cols = labels + ["macro"]
    print(f"per-category AUROC of {a.model_dir} ({cfg.ablation}) on {a.manifest}")
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
