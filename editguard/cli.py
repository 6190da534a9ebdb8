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
    editguard explain   why it flagged: a heatmap, its peak and box, and the share of the output, change and prompt
    editguard redteam   attack a guard (wording, long prompts, masks, pixels) and report what gets through
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
from typing import Callable

from .commands import bench, data, export, redteam, scoring, serving, training
from .commands.base import ERROR, EXIT_CODES, INTERRUPTED, USAGE, UsageError

__all__ = ["main", "build_parser", "UsageError", "EXIT_CODES", "ENVIRONMENT"]

# The environment variables editguard reads, also in docs/design.md ("Environment variables").
ENVIRONMENT = {
    "EDITGUARD_ADMIN_KEY": "the admin key itself (serve, and every command with --server that needs it)",
    "EDITGUARD_ADMIN_KEY_FILE": "the admin key's file (default ~/.config/editguard/admin-key)",
    "EDITGUARD_WEIGHTS": "train: the weights folder the pretrained towers load from (as --weights)",
    "EDITGUARD_ORT_THREADS": "served and in-process scoring: onnxruntime's threads per session",
    "EDITGUARD_PROMPT_CACHE": "served and in-process scoring: prompt embeddings kept per process (default 4096)",
    "EDITGUARD_IMAGE_CACHE": "served and in-process scoring: decoded images kept per process, by content (default 256)",
    "EDITGUARD_SHARED_CACHE": "served: 0 keeps those caches per front process, not shared by the server's instances",
    "EDITGUARD_PROGRESS_SECONDS": "seconds between progress lines when the output is not a terminal (default 10)",
    "TRITON_BACKENDS_DIR": "serve: the backends of NVIDIA's tritonserver on PATH (default /opt/tritonserver/backends)",
}

_EPILOG_QUICK = """\
quick start (the cpu preset on 2 CPU cores; `make demo` runs all of it for you):
  editguard synth --out data/train --n 6000 --seed 1
  editguard synth --out data/val --n 1000 --seed 2
  editguard train --train data/train/manifest.jsonl --val data/val/manifest.jsonl --out runs/cpu
  editguard evaluate runs/cpu data/val/manifest.jsonl
  editguard export runs/cpu --repository repository
  editguard serve --repository repository
"""

# the subcommands in the order `editguard --help` lists them, each added by its command group's module
SUBCOMMANDS: list[Callable] = [data.add_synth, data.add_import, data.add_split, training.add_train,
                               training.add_weights, training.add_evaluate, export.add_export, serving.add_serve,
                               export.add_check, serving.add_versions, scoring.add_score, scoring.add_calibrate,
                               scoring.add_review, scoring.add_explain, redteam.add_redteam, bench.add_bench]


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
    for add in SUBCOMMANDS:
        add(sub)
    return p


def _write_summary(args: argparse.Namespace) -> None:
    """The command's ``--json`` summary, to the file or (``-``) stdout."""
    import json

    if not getattr(args, "json", None) or args.summary is None:
        return
    text = json.dumps(args.summary, indent=2, default=str) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        from editguard.files import write_text_atomic

        write_text_atomic(args.json, text)


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
