"""`editguard synth`, `import` and `split`: data in, manifests out. Each command parses its arguments and calls
its stage's public functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .base import OK, UsageError, add_json, command, summarize

__all__ = ["add_synth", "add_import", "add_split"]


def add_synth(sub) -> None:
    p = command(sub, "synth", _run_synth)
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
    g.add_argument("--sessions", action="store_true",
                   help="write --n multi-turn edit sessions instead of one-shot triples: safe ones, harmful edits "
                   "split into partial steps under harmless-sounding prompts, and look-alikes that stop short of "
                   "harm; each turn edits the previous turn's output (manifest fields session, turn, "
                   "cumulative_labels)")
    g = p.add_argument_group("prompts")
    g.add_argument("--prompts", metavar="FILE",
                   help="JSON {operation: [phrasing, ...]} replacing the built-in phrasings; slots: "
                   "{color} {place} {object}")
    g.add_argument("--list-ops", action="store_true", help="print the operations, labels and phrasings, then exit")
    g.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


def _run_synth(args: argparse.Namespace) -> int:
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
      editguard synth --out data/sessions-ood --n 600 --seed 9 --split ood --sessions
      editguard synth --list-ops
    """
    from editguard.training.synth import generate, list_ops, load_prompts

    prompts = load_prompts(args.prompts) if args.prompts else None
    if args.list_ops:
        for op in list_ops(prompts):
            labels = ", ".join(op["labels"]) or "safe"
            print(f"{op['name']}  [{labels}]  weight {op['weight']}")
            for split in ("iid", "ood"):
                for ph in op[split]:
                    print(f"    {split}: {ph}")
        return 0
    if not args.out:
        raise UsageError("--out is required (or use --list-ops)")
    if args.sessions:
        if prompts:
            raise UsageError("--prompts replaces one-shot phrasings; sessions have their own step phrasings")
        from editguard.training.synth.sessions import generate_sessions

        path = generate_sessions(args.out, args.n, args.seed, args.split, args.image_size, workers=args.workers,
                                 clean=args.clean)
        turns = sum(1 for line in path.read_text().splitlines() if line.strip())
        print(f"wrote {args.n} sessions ({turns} turns): {path}")
        return 0
    path = generate(args.out, args.n, args.seed, args.split, args.image_size, prompts, workers=args.workers,
                    clean=args.clean)
    print(f"wrote {args.n} triples: {path}")
    return 0


def add_import(sub) -> None:
    from editguard.training.corpora import CORPORA  # no torch: the parser stays quick to build

    p = command(sub, "import", _run_import)
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
    add_json(p, "the counts (written, skipped, labelled, ...)")


def _run_import(args: argparse.Namespace) -> int:
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

    s = import_corpus(ImportConfig(source=args.source, out=args.out, corpus=args.corpus,
                                   columns=parse_columns(args.columns) if args.columns else None,
                                   layout=args.layout or "dataset", split=args.split, name=args.name,
                                   labels=args.labels, taxonomy=args.taxonomy, limit=args.limit,
                                   progress=not args.no_progress))
    print(f"imported {s.written} rows ({s.labelled} with labels), skipped {s.skipped}, {s.already} done before, "
          f"in {s.seconds:.1f} s: {s.manifest}")
    if s.skipped:
        print(f"skipped rows, with the column and the reason: {Path(args.out) / 'skipped.jsonl'}")
    if s.unmatched_labels:
        print(f"warning: {len(s.unmatched_labels)} ids in {args.labels} match no row (first: {s.unmatched_labels[0]})",
              file=sys.stderr)
    return summarize(args, s, s.skipped, skipped_file=str(Path(args.out) / "skipped.jsonl") if s.skipped else None)


def add_split(sub) -> None:
    p = command(sub, "split", _run_split)
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
    add_json(p, "split_report.json's summary")


def _run_split(args: argparse.Namespace) -> int:
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

    fractions = tuple(float(x) for x in args.fractions.split(","))
    r = split_manifest(SplitConfig(manifest=args.manifest, fractions=fractions, group_by=args.group_by,
                                   max_distance=args.max_distance, seed=args.seed,
                                   allow_outside_root=args.allow_outside_root, progress=not args.no_progress))
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
    print(f"wrote {', '.join(n + '.jsonl' for n in r['splits'])} and split_report.json beside {args.manifest}")
    args.summary = r
    return OK
