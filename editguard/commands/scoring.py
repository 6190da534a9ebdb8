"""`editguard score`, `calibrate` and `review`: verdicts on a manifest, thresholds from them, a page to look.
Each command parses its arguments and calls its stage's public functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.repository import CLIENT_MODEL, CLIENT_MODELS
from .base import OK, UsageError, add_connection, add_json, client_options, command, summarize

__all__ = ["add_score", "add_calibrate", "add_review"]


def add_score(sub) -> None:
    p = command(sub, "score", _run_score)
    p.add_argument("manifest", help="manifest to score (.jsonl, .parquet, .csv); labels optional")
    p.add_argument("--out", required=True, help="results: a .jsonl file, or a folder of Parquet parts")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--server", metavar="URL", help="Triton gRPC host:port (comma-separate several to spread load)")
    g.add_argument("--repository", metavar="REPO", help="score in-process from an exported repository (no server)")
    p.add_argument("--version", default="", help="model version (default: the latest)")
    p.add_argument("--precheck", action="store_true", help="score the check before generation (editguard_precheck: "
                   "the input image, prompt and mask; the output image is not sent)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight with --server (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size in-process (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request deadline in seconds, retries included")
    p.add_argument("--allow-outside-root", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("scale-out (--engine ray)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: an actor pool on Ray Data (default: %(default)s)")
    g.add_argument("--workers", type=int, help="Ray actors, each with its own onnxruntime session or Triton client "
                   "(default: one per GPU, else as many as the CPUs allow)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each actor reserves and onnxruntime "
                   "threads it runs (default: %(default)s)")
    g.add_argument("--ray-address", metavar="ADDR", help="a running Ray cluster (auto, ray://head:10001); "
                   "default: start one on the local machine for the run")
    add_connection(p)
    add_json(p, "the counts and, for a labelled manifest, the metrics")


def _run_score(args: argparse.Namespace) -> int:
    """score a manifest offline (through Triton or in-process), resumable

    Score every triple of MANIFEST and write per-category scores and flags. Through a running
    Triton (--server) or in-process with onnxruntime from an exported repository (--repository).
    A rerun skips ids already written and retries failures; failures go to OUT.errors.jsonl with
    the reason.

    examples:
      editguard score data/val/manifest.jsonl --out results/val.jsonl --server localhost:8001
      editguard score data/val/manifest.jsonl --out results/val.jsonl --repository repository   # no server
      editguard score data/val/manifest.jsonl --out results/pre-val.jsonl --server localhost:8001 --precheck
      editguard score logs.parquet --out results/logs --repository repository --engine ray --workers 8

    A results folder instead of a .jsonl file gets Parquet parts. --engine ray runs a Ray Data actor pool
    (pip install 'editguard[ray]'): on a Ray cluster started on the local machine for the run, or on a
    running one with --ray-address. Same results, same resume, same output schema. Exits 3 when items
    failed.
    """
    from editguard.clients.score import ScoreConfig, score

    s = score(ScoreConfig(manifest=args.manifest, out=args.out, server=args.server, repository=args.repository,
                          version=args.version, concurrency=args.concurrency, batch_size=args.batch_size,
                          timeout=args.timeout, allow_outside_root=args.allow_outside_root,
                          progress=not args.no_progress, engine=args.engine, workers=args.workers,
                          cpus_per_worker=args.cpus_per_worker, ray_address=args.ray_address,
                          client_options=client_options(args), precheck=args.precheck))
    print(f"scored {s.scored}, skipped {s.skipped} already done, {s.errors} failed, in {s.seconds:.1f} s; "
          f"{s.total_rows} rows in {args.out}")
    if s.errors:
        print(f"failures and reasons: {args.out}.errors.jsonl (a rerun retries them)")
    if s.report:
        from editguard.reports import format_table

        print(format_table(s.report, f"metrics over all {s.total_rows} rows"))
    return summarize(args, s, s.errors, out=args.out, errors_file=f"{args.out}.errors.jsonl" if s.errors else None)


def add_calibrate(sub) -> None:
    p = command(sub, "calibrate", _run_calibrate)
    p.add_argument("results", help="results of `editguard score` on a labelled manifest")
    p.add_argument("--target", default="precision=0.95",
                   help="default target, METRIC=VALUE: precision=P or recall=R (at least), or fpr=F (a false-positive "
                   "rate of at most F) (default: %(default)s)")
    p.add_argument("--target-for", action="append", default=[], metavar="CATEGORY=METRIC=VALUE",
                   help="a category's own target; repeat for several")
    p.add_argument("--out", default="thresholds.json", help="where to write thresholds.json (default: %(default)s)")
    p.add_argument("--calibration", choices=["isotonic", "sigmoid"], help="also fit probability calibration; "
                   "report ECE before and after")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the CIs (default: %(default)s)")
    p.add_argument("--plots", metavar="DIR", help="write pr_curves.png and reliability.png here")
    p.add_argument("--slice-by", metavar="meta.FIELD", help="report precision/recall/FPR per value of a meta field "
                   "(meta.FIELD or FIELD), and save the table in thresholds.json ('slices')")
    p.add_argument("--fpr-factor", type=float, default=2.0, help="flag slices whose FPR is over this multiple of "
                   "the overall FPR (default: %(default)s)")
    p.add_argument("--allow-unmet", action="store_true", help="use the best achievable threshold where a target "
                   "can't be met, instead of failing")
    p.add_argument("--check", action="append", default=[], metavar="OTHER_RESULTS",
                   help="labelled results of the same model on another set (another source, a later month, the "
                   "ood split): report precision, recall and FPR there at the chosen thresholds, with 95%% CIs, and "
                   "warn where FPR grows over --shift-factor; repeat for several")
    p.add_argument("--shift-factor", type=float, default=2.0, help="warn when a --check set's FPR is over this "
                   "multiple of the calibration set's (default: %(default)s)")
    p.add_argument("--install", metavar="REPOSITORY", help="write thresholds.json beside the model version in this "
                   "Triton repository")
    p.add_argument("--version", help="the model version to install for (default: the results' version)")
    p.add_argument("--model", default=CLIENT_MODEL, choices=CLIENT_MODELS,
                   help="the model whose version --install writes to: results of `score --precheck` calibrate "
                   "editguard_precheck (default: %(default)s)")
    p.add_argument("--overlay", action="append", default=[], metavar="DECISIONS",
                   help="reviewed labels over the results' labels: the decisions JSONL that `editguard review`'s page "
                   "downloads; repeat for several")
    p.add_argument("--sessions", action="store_true",
                   help="choose an edit session's thresholds (results of a manifest with sessions): per category a "
                   "step and a cumulative threshold, together, so that the target holds per session (a session is "
                   "flagged when any turn's step or cumulative check is); edits outside sessions count as one-turn "
                   "sessions. --install adds them to the installed thresholds.json, whose one-shot thresholds stay; "
                   "client sessions use them (SESSION_THRESHOLDS)")
    p.add_argument("--only", action="append", default=[], metavar="CATEGORY[,CATEGORY]",
                   help="calibrate these categories alone (a category added with `train --from`) and keep the "
                   "others' installed thresholds exactly as they are; needs --install")


def _run_calibrate(args: argparse.Namespace) -> int:
    """choose per-category thresholds from labelled scores; install them into a repository

    Choose each category's threshold with scikit-learn's precision_recall_curve so that it meets
    a target (e.g. precision >= 0.95), report precision, recall, FPR and support with bootstrap
    95% CIs, and write thresholds.json. --install puts it beside the model version in a Triton
    repository; the served model picks it up on its next request, with no restart.

    examples:
      editguard calibrate results/val.jsonl --target precision=0.9 --install repository --plots plots/
      editguard calibrate results/val.jsonl --target precision=0.9 --target-for minors=recall=0.99 \\
          --calibration isotonic --slice-by mask_kind --check results/ood.jsonl
      editguard calibrate results/pre-val.jsonl --target precision=0.95 --model editguard_precheck \\
          --install repository
      editguard calibrate results/new-val.jsonl --only weapon_minor --target precision=0.9 --install repository
      editguard calibrate results/sessions-val.jsonl --sessions --target precision=0.9 --install repository
    """

    from editguard.clients.calibrate import CalibrateConfig, calibrate_results, format_check, format_thresholds
    from editguard.files import write_json_atomic
    from editguard.model.repository import install_thresholds

    if args.sessions and (args.plots or args.calibration):
        raise UsageError("--sessions chooses two thresholds per category: --plots and --calibration work on one-shot "
                         "results")
    if args.only and not args.install:
        raise UsageError("--only keeps the other categories' installed thresholds: pass --install REPOSITORY")
    run = calibrate_results(CalibrateConfig(
        results=args.results, target=args.target, target_for=args.target_for, method=args.calibration,
        n_boot=args.bootstrap, allow_unmet=args.allow_unmet, version=args.version, overlays=args.overlay,
        only=args.only, installed=args.install, model=args.model, check=args.check, shift_factor=args.shift_factor,
        slice_by=args.slice_by, fpr_factor=args.fpr_factor, sessions=args.sessions))
    for path, hits, reviewed in run.overlays:
        print(f"overlay {path}: reviewed labels for {hits} of {reviewed} ids")
    result = run.result
    write_json_atomic(args.out, result.thresholds)
    print(format_thresholds(result))
    for name, check in result.thresholds.get("checks", {}).items():
        print("\n" + format_check(name, check, result.thresholds["reference"]))
    print(f"wrote {args.out}")
    if args.plots:
        from editguard.clients.plots import plot_pr_curves, plot_reliability

        Path(args.plots).mkdir(parents=True, exist_ok=True)
        pr = plot_pr_curves(run.labels, run.y_true, run.y_score, result.choices, Path(args.plots) / "pr_curves.png")
        rel = plot_reliability(run.labels, run.y_true, run.y_score, result.calibrators,
                               Path(args.plots) / "reliability.png")
        print(f"plots: {pr}, {rel}")
    if run.slices:
        print(f"\n{'slice (' + args.slice_by + ')':<24} {'n':>6} {'prec':>6} {'recall':>6} {'FPR':>6}")
        for s in run.slices:
            flag = f"  <-- FPR over {args.fpr_factor:g}x overall" if s["flag"] else ""
            print(f"{s['slice']:<24} {s['n']:>6} {s['precision']:6.3f} {s['recall']:6.3f} {s['fpr']:6.3f}{flag}")
    if args.install:
        path = install_thresholds(result.thresholds, args.install, args.version, args.model)
        print(f"installed {path} (the served model uses it from its next request)")
        if result.thresholds.get("sessions") and not args.sessions:
            print("  kept its session thresholds (the 'sessions' block); `calibrate --sessions --install` chooses them "
                  "again")
    return OK


def add_review(sub) -> None:
    p = command(sub, "review", _run_review)
    p.add_argument("results", help="results of `editguard score` (JSONL or Parquet folder)")
    p.add_argument("--manifest", required=True, help="the manifest that was scored (images, prompts, labels, meta)")
    p.add_argument("--out", required=True, help="folder for index.html and thumbs/ (created; thumbnails are reused)")
    p.add_argument("--thresholds", metavar="FILE_OR_REPO", help="a thresholds.json, or the repository whose installed "
                   "thresholds of the results' version to show (default: 0.5)")
    p.add_argument("--slice-by", action="append", default=[], metavar="meta.FIELD",
                   help="summary tables of precision, recall and FPR per value of a meta field (meta.FIELD or FIELD; "
                   "labels needed); repeat")
    p.add_argument("--explanations", metavar="DIR", help="a folder `editguard explain` wrote: each explained edit "
                   "gets a heatmap toggle over its output and the share of the output, the change and the prompt")
    p.add_argument("--title", default="editguard review", help="page title (default: %(default)s)")
    p.add_argument("--workers", type=int, help="thumbnail processes (default: all cores)")
    p.add_argument("--allow-outside-root", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _run_review(args: argparse.Namespace) -> int:
    """a static review page of scored triples: look at what was flagged, record decisions as labels

    Write OUT/index.html (plus thumbnails): a self-contained page that opens from disk or any
    static host. It shows a summary (flag rates; with labels, precision, recall and FPR at the
    thresholds, PR curves and --slice-by tables) and a grid of triples (input, output, mask,
    what changed, the prompt, and each category's score against its threshold), with filters,
    sorting and a near-the-threshold queue. Reviewers mark verdicts correct or wrong and
    download decisions.jsonl, which `editguard train --overlay` and `editguard calibrate
    --overlay` read back as labels.

    examples:
      editguard review results/val.jsonl --manifest data/val/manifest.jsonl --out review/val --thresholds repository
      editguard calibrate results/val.jsonl --overlay decisions.jsonl --target precision=0.9   # the decisions

    then open review/val/index.html in a browser, review, and "Download decisions".
    """
    from editguard.clients.review import ReviewConfig, build_review

    index = build_review(ReviewConfig(results=args.results, manifest=args.manifest, out=args.out,
                                      thresholds=args.thresholds, slice_by=args.slice_by, title=args.title,
                                      explanations=args.explanations,
                                      workers=args.workers, progress=not args.no_progress,
                                      allow_outside_root=args.allow_outside_root))
    print(f"review page: {index.resolve()}")
    return 0


def add_explain(sub) -> None:
    p = command(sub, "explain", _run_explain)
    p.add_argument("manifest", help="the edits to explain (a manifest; labels optional)")
    p.add_argument("--model-dir", required=True, help="the model dir whose verdicts to explain (a triple model)")
    p.add_argument("--out", required=True, help="folder for explanations.jsonl and heatmaps/ (created)")
    p.add_argument("--categories", help="comma-separated categories to explain on every edit (default: the ones "
                   "flagged, at --thresholds)")
    p.add_argument("--thresholds", metavar="FILE", help="a thresholds.json (a repository's "
                   "editguard/N/thresholds.json) deciding what is flagged (default: 0.5 for every category)")
    p.add_argument("--method", choices=["integrated_gradients", "occlusion"], default="integrated_gradients",
                   help="how the heatmap is made (default: %(default)s; docs/results.md, \"Explanations\", "
                   "compares them)")
    p.add_argument("--steps", type=int, default=4, help="integrated gradients' path steps (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    add_json(p, "the counts")
    p.add_argument("--allow-outside-root", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _run_explain(args: argparse.Namespace) -> int:
    """why each edit was flagged: where in the image, and which part of the triple moved the score

    For each edit and each flagged category (or --categories), write a heatmap at the input
    image's size (OUT/heatmaps/ID__CATEGORY.png, 255 = most responsible), and a line of
    OUT/explanations.jsonl: the score, the heatmap's peak [x, y] and the box [x0, y0, x1, y1] of
    the region around it (input-image pixels; null when no changed pixel carries the score), and
    the share of the score carried by the output alone, the change (input against output) and
    the prompt. An edit that cannot be read gets an error line; the others go on (exit 3).

    examples:
      editguard explain data/ood/manifest.jsonl --model-dir runs/cpu --out explain/ood \\
          --thresholds repository/editguard/1/thresholds.json
      editguard explain flagged.jsonl --model-dir runs/cpu --out explain/one --categories sexual,minors
    """
    from editguard.model.explain import explain_manifest

    cats = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    result = explain_manifest(args.manifest, args.model_dir, args.out, categories=cats, thresholds=args.thresholds,
                              method=args.method, steps=args.steps, device=args.device,
                              allow_outside_root=args.allow_outside_root,
                              progress=not args.no_progress)
    print(f"{result.explanations} explanations of {result.edits} edits ({result.errors} unreadable): {result.path}")
    return summarize(args, result, result.errors)
