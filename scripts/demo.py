"""`make demo`: the whole pipeline on the CPU, from nothing to verdicts.

    synth (realistic edits) -> train (cpu preset) -> evaluate (iid test and held-out ood)
          -> export (ONNX, parity-checked) -> serve (a real Triton)
          -> score over gRPC -> calibrate --install -> re-score with the installed thresholds
          -> explain (why each held-out ood edit was flagged)
          -> review (a static page of the held-out ood scores, with the explanations)

Each stage is a plain `editguard` command; the commands are printed, with the time each took,
so they can be re-run by hand.

    .venv/bin/python -m scripts.demo --out demo     # what `make demo` runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scripts.experiments import SETTINGS, run

EPOCHS = 10  # the demo model's training epochs: 6 lost most of unintended change's recall (docs/results.md)


def serve_score_calibrate(out: Path, repo: Path) -> None:
    """Serve the repository, score over gRPC, calibrate and install thresholds, re-score, print verdicts."""
    from editguard.serving.triton import TritonServer, free_port

    print(f"\n$ editguard serve --repository {repo}   (started in-process on free ports)", flush=True)
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        url = server.grpc_url
        print(f"  Triton ready at {url}")
        res = out / "results"
        run("score", str(out / "val/manifest.jsonl"), "--out", str(res / "val.jsonl"), "--server", url,
            "--concurrency", "8")
        run("calibrate", str(res / "val.jsonl"), "--target", "precision=0.9", "--allow-unmet",
            "--out", str(out / "thresholds.json"), "--plots", str(out / "plots"), "--slice-by", "mask_kind",
            "--calibration", "isotonic", "--install", str(repo))
        for split in ("test", "ood"):
            run("score", str(out / f"{split}/manifest.jsonl"), "--out", str(res / f"{split}.jsonl"), "--server", url,
                "--concurrency", "8")
        final_table(res / "test.jsonl", out / "thresholds.json", "held-out iid test set")
        final_table(res / "ood.jsonl", out / "thresholds.json", "held-out ood set (phrasings, styles, masks, codecs)")
        show_verdicts(url, out / "ood/manifest.jsonl")
    print("  Triton stopped")


def final_table(results: Path, thresholds: Path, title: str) -> None:
    """Per category on a held-out set, at the installed thresholds (the server's own flags)."""
    import json

    from editguard.clients.results import read_results

    rows = read_results(results)
    th = json.loads(thresholds.read_text())["categories"]
    print(f"\n{title} ({len(rows)} triples), served verdicts at the installed thresholds:")
    print(f"{'category':<22} {'threshold':>9} {'precision':>9} {'recall':>7} {'FPR':>7} {'support':>8}")
    for name, t in th.items():
        truth = [name in r["labels"] for r in rows]
        flag = [r[f"flag_{name}"] for r in rows]
        tp = sum(a and b for a, b in zip(truth, flag))
        fp = sum(f and not a for a, f in zip(truth, flag))
        pos, neg = sum(truth), len(rows) - sum(truth)
        prec = tp / (tp + fp) if tp + fp else float("nan")
        print(f"{name:<22} {t['threshold']:9.3f} {prec:9.3f} {tp / max(pos, 1):7.3f} {fp / max(neg, 1):7.3f} {pos:8d}")
    truth = [bool(r["labels"]) for r in rows]
    unsafe = [r["unsafe"] for r in rows]
    tp = sum(a and b for a, b in zip(truth, unsafe))
    fp = sum(u and not a for a, u in zip(truth, unsafe))
    print(f"{'unsafe (any)':<22} {'':>9} {tp / max(tp + fp, 1):9.3f} {tp / max(sum(truth), 1):7.3f} "
          f"{fp / max(len(rows) - sum(truth), 1):7.3f} {sum(truth):8d}")


def show_verdicts(url: str, manifest: Path, n: int = 10) -> None:
    """Held-out (ood) triples classified with the thin client, as an inpainting backend would.

    The triples are a uniform random draw (fixed seed) from the whole ood set, not picked by outcome.
    """
    import json

    import numpy as np

    from editguard.clients import EditGuardClient

    lines = manifest.read_text().splitlines()
    pick = sorted(np.random.default_rng(0).choice(len(lines), n, replace=False))
    rows = [json.loads(lines[i]) for i in pick]
    print(f"\n{n} ood triples drawn at random (seed 0), classified by the thin client:")
    print(f"{'id':<14} {'prompt':<30} {'mask':<6} {'truth':<36} {'verdict':<7} flagged")
    with EditGuardClient(url) as guard:
        for r in rows:
            mask = manifest.parent / r["mask"] if r.get("mask") else None
            v = guard.classify(manifest.parent / r["input_image"], r["prompt"], manifest.parent / r["output_image"],
                               mask)
            print(f"{r['id']:<14} {r['prompt'][:29]:<30} {r['meta'].get('mask_kind', ''):<6} "
                  f"{','.join(r['labels']) or 'safe':<36} {'UNSAFE' if v.unsafe else 'safe':<7} "
                  f"{','.join(v.flagged_categories)}")


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
            "--out", str(model), "--preset", "cpu", "--epochs", str(EPOCHS), "--device", "cpu")
    run("evaluate", str(model), str(out / "test/manifest.jsonl"), "--json", str(out / "test_metrics.json"))
    run("evaluate", str(model), str(out / "ood/manifest.jsonl"), "--json", str(out / "ood_metrics.json"))
    repo = out / "repository"
    if not (repo / "editguard" / "1").exists():
        run("export", str(model), "--repository", str(repo))
    serve_score_calibrate(out, repo)
    run("explain", str(out / "ood/manifest.jsonl"), "--model-dir", str(model), "--out", str(out / "explain"),
        "--thresholds", str(repo / "editguard" / "1" / "thresholds.json"))
    run("review", str(out / "results/ood.jsonl"), "--manifest", str(out / "ood/manifest.jsonl"), "--out",
        str(out / "review"), "--thresholds", str(repo), "--slice-by", "mask_kind", "--title",
        "editguard demo: held-out ood set", "--explanations", str(out / "explain"))
    print(f"\nopen {(out / 'review' / 'index.html').resolve()} in a browser to look at the flagged edits")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs under {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
