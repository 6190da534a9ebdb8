"""`editguard redteam`: attack a target the way abusers will and report what gets through."""

from __future__ import annotations

import argparse

from .base import OK, UsageError, add_connection, add_json, client_options, command

__all__ = ["add_redteam"]


def add_redteam(sub) -> None:
    p = command(sub, "redteam", _run_redteam)
    p.add_argument("manifest", nargs="?",
                   help="a labelled manifest of unsafe and safe edits (held-out ones, e.g. the ood split)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--server", metavar="URL", help="attack a running Triton (host:port), at its installed thresholds")
    g.add_argument("--repository", metavar="REPO", help="attack an exported repository in-process (no server)")
    p.add_argument("--out", help="folder for redteam.json, redteam.md, redteam.png and through.jsonl (each "
                   "unsafe edit that got through)")
    p.add_argument("--attacks", default="", help="comma-separated attacks or families (wording, long_prompt, mask, "
                   "pixels, decomposition; default: all); `--list` shows them")
    p.add_argument("--list", action="store_true", help="list the attacks and exit")
    p.add_argument("--model-dir", metavar="DIR", help="the target's own model dir: enables the white-box pixel "
                   "attacks (needs torch: the [train] extra)")
    p.add_argument("--surrogate", metavar="DIR", help="another model dir (another seed or preset): enables the "
                   "transfer pixel attacks")
    p.add_argument("--per-class", type=int, default=0, metavar="N", help="attack a seeded sample of at most N unsafe "
                   "and N safe edits (default: all of them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of every attack's draws")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads in-process (default: all cores)")
    p.add_argument("--no-progress", action="store_true")
    add_connection(p)
    add_json(p, "the whole report")


def _run_redteam(args: argparse.Namespace) -> int:
    """attack a guard with obfuscated wording, long prompts, lying masks and crafted pixels

    Scores MANIFEST's edits clean and under each attack, at the target's installed thresholds, with
    the post-generation check and, where the target serves one, the pre-check. Reports per attack and
    category the attack success rate (ASR: unsafe edits flagged clean and passed after the attack)
    beside the share of safe edits flagged under the same transform, and lists each unsafe edit that got
    through (OUT/through.jsonl: its id, the prompt before and after). The pixel attacks need a model
    to take gradients from: --model-dir (white-box) and --surrogate (transfer). docs/red-team.md
    has the threat model, every attack, and how to add your own.

    examples:
      editguard redteam data/ood/manifest.jsonl --repository repository --out redteam --per-class 300
      editguard redteam data/ood/manifest.jsonl --server localhost:8001 --out redteam --attacks wording,long_prompt
      editguard redteam data/ood/manifest.jsonl --repository repository --model-dir runs/cpu \\
          --surrogate runs/cpu-seed1 --attacks pixels --out redteam-pixels
    """
    from editguard.redteam import ATTACKS, select
    from editguard.redteam.harness import RedTeamConfig, run
    from editguard.redteam.report import to_markdown, write_report

    if args.list:
        for a in ATTACKS.values():
            print(f"{a.family:12} {a.name:24} {a.description}")
        return OK
    if not (args.manifest and args.out and (args.server or args.repository)):
        raise UsageError("give MANIFEST, --out DIR and one of --server URL or --repository REPO (or --list)")
    try:
        attacks = select([n.strip() for n in args.attacks.split(",") if n.strip()])
    except ValueError as e:
        raise UsageError(str(e)) from e
    cfg = RedTeamConfig(manifest=args.manifest, server=args.server, repository=args.repository,
                        model_dir=args.model_dir, surrogate=args.surrogate, per_class=args.per_class,
                        seed=args.seed, threads=args.threads, client_options=client_options(args))
    report = run(cfg, attacks, show_progress=not args.no_progress)
    paths = write_report(report, args.out)
    print(to_markdown(report))
    print(f"report: {paths['md']}, {paths['json']}, {paths['png']}; what got through: {paths['through']}")
    args.summary = report
    return OK
