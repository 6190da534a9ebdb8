"""`editguard export` and `check-repository`: a model dir into a Triton repository, and its check. Each command
parses its arguments and calls its stage's public functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .base import CHECK_FAILED, OK, PARTIAL, add_connection, add_json, command, connection_from

__all__ = ["add_export", "add_check"]


def add_export(sub) -> None:
    p = command(sub, "export", _run_export)
    p.add_argument("model_dir", help="a model dir written by `editguard train`")
    p.add_argument("--repository", default="repository", help="Triton model repository (default: %(default)s)")
    p.add_argument("--version", type=int, help="version number (default: one past the highest present)")
    p.add_argument("--fp16", action="store_true", help="serve the FP16 graph (parity-checked)")
    p.add_argument("--runtime", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="tensorrt also builds model.plan for the native TensorRT backend")
    p.add_argument("--max-batch", type=int, default=64,
                   help="max batch size of the served models (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="where the parity check runs: cpu or cuda")
    p.add_argument("--decode-device", metavar="DEVICE", help="where the served model decodes JPEG uploads: 'cuda' "
                   "(nvJPEG; needs torch and torchvision in Triton's Python backend), 'cpu' (torchvision, for "
                   "checking that path without a GPU), or '' for Pillow, the default; other formats always use "
                   "Pillow. Omitted: the repository keeps its setting")
    p.add_argument("--explain", action="store_true", help="also write a version of editguard_explain (the torch "
                   "network, about the model dir's size): EditGuardClient.explain returns why a triple was flagged "
                   "(a box to blur, the share of the output, the change and the prompt); needs torch in Triton's "
                   "Python backend")
    p.add_argument("--server", metavar="URL", help="also load the new version into this running Triton (gRPC "
                   "host:port); comma-separate the replicas that share the repository to roll it across them. "
                   "Model control needs the server's admin key (see --admin-key-file)")
    add_connection(p, admin=True)
    add_json(p, "the new version, its parity and where it was loaded")


def _run_export(args: argparse.Namespace) -> int:
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
      editguard export runs/cpu --repository repository --explain   # + editguard_explain, served on request

    then: editguard serve --repository repository

    Exits 3 when the version was written but not loaded into every --server replica.
    """
    from dataclasses import asdict

    from editguard.export.writer import ExportConfig, export_version
    from editguard.serving.versions import pinned

    r = export_version(ExportConfig(model_dir=args.model_dir, repository=args.repository, version=args.version,
                                    fp16=args.fp16, runtime=args.runtime, max_batch=args.max_batch, device=args.device,
                                    decode_device=args.decode_device, explain=args.explain))
    print(f"exported version {r.version} of {r.model} to {r.repository} in {r.seconds} s")
    print(f"  parity FP32: max |dprob| {r.parity_fp32['max_abs_prob']:.2e} over {r.parity_fp32['n']} triples "
          f"(limit {r.parity_fp32['tolerance']:.0e})")
    if r.parity_fp16:
        p16 = r.parity_fp16
        print(f"  parity FP16: max |dprob| {p16['max_abs_prob']:.2e} (limit {p16['tolerance']:.0e})")
    if r.plan:
        print(f"  TensorRT plan: {r.plan}")
    if r.thresholds:
        print(f"  {r.thresholds}")
    args.summary = dict(asdict(r), loaded_into=[])
    pin = pinned(args.repository, r.model)
    if pin is not None:
        print(f"  note: {r.model} is pinned to version {pin}, so version {r.version} is not served until `editguard "
              f"versions unpin --repository {args.repository}`")
    if args.server:
        from editguard.clients.protocol import parse_urls
        from editguard.model.repository import PAIRS
        from editguard.serving.control import roll_out

        urls = parse_urls(args.server)

        try:  # what each replica serves now (its graph's models), and at least this model's inline pair
            roll_out(urls, connection=connection_from(args), ensure=(PAIRS[r.model], r.model))
        except (RuntimeError, PermissionError) as e:
            print(f"editguard export: version {r.version} is in {args.repository} but was not loaded: {e}",
                  file=sys.stderr)
            return PARTIAL
        args.summary["loaded_into"] = urls
        print(f"  loaded into {', '.join(urls)} (one replica at a time)")
    return OK


def add_check(sub) -> None:
    p = command(sub, "check-repository", _run_check)
    p.add_argument("repository", help="the Triton model repository to check")
    add_json(p, "the mismatches")


def _run_check(args: argparse.Namespace) -> int:
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

    if not Path(args.repository).is_dir():
        raise FileNotFoundError(f"repository {args.repository} does not exist")
    errors = check_repository(args.repository)
    args.summary = {"repository": args.repository, "ok": not errors, "mismatches": errors}
    for e in errors:
        print(e)
    if errors:
        print(f"editguard check-repository: {len(errors)} mismatch(es) in {args.repository}; fix the config (or export "
              "the model dir again, which writes the tensors from the graph)", file=sys.stderr)
        return CHECK_FAILED
    print(f"{args.repository}: every config agrees with the graphs it serves")
    return OK
