"""`editguard bench`: the hot paths' benchmarks. Each command parses its arguments and calls its stage's public
functions."""

from __future__ import annotations

import argparse

from .base import UsageError, add_connection, command, connection_from

__all__ = ["add_bench"]


def add_bench(sub) -> None:
    p = command(sub, "bench", _run_bench)
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
                   "version in the repository), sessions (a session turn beside a single triple), explain (the "
                   "verdicts with editguard_explain served and not, and an explain call; needs `export --explain`), "
                   "preprocess, "
                   "presets, ray (default: %(default)s)")
    p.add_argument("--presets", default="small,base,cpu-lite0", help="presets section: the presets to build, "
                   "export and serve (default: %(default)s)")
    p.add_argument("--upload-sizes", default="256,512,1024", help="uploads section: image sides in px "
                   "(default: %(default)s)")
    p.add_argument("--ray-workers", default="1,2", help="ray section: actor counts to compare (default: %(default)s)")
    p.add_argument("--ray-items", type=int, default=3000, help="ray section: triples per run (default: %(default)s)")
    add_connection(p, admin=True)


def _run_bench(args: argparse.Namespace) -> int:
    """benchmark the hot paths: torch vs onnxruntime, served throughput, preprocessing

    Measure in-process torch eager vs onnxruntime (FP32/FP16) per batch size, a closed-loop
    concurrency sweep against a real Triton through the real client, what uploads cost at
    256/512/1024 px (PIL images on the pixels path vs PNG and JPEG bytes: c1 latency, c16
    throughput, client CPU per triple), the serving graphs (inline vs the ensemble, every prompt new
    and Zipf-repeated) with Triton's queue/compute/cache split, and image decode + resize throughput;
    optionally (--sections sessions) a session turn (step and cumulative triple in one request)
    beside a single triple, (--sections ray) batch scoring on Ray at 1, 2, ... workers, and (--sections
    presets) each production preset's exact architecture, untrained (small and base from
    stand-in weights folders), in-process and served at its own resolution. Prints markdown
    tables and writes bench.json and bench.md to --out.

    examples:
      editguard bench --model-dir demo/model --repository demo/repository --out bench/cpu
      editguard bench --model-dir demo/model --repository demo/repository --out bench/ray --sections ray
      editguard bench --model-dir demo/model --repository demo/repository --out bench/sessions --sections sessions
      editguard bench --sections presets --out bench/presets
    """
    from editguard.benchmarks import BenchConfig, run_bench, to_markdown

    ints = lambda s: [int(x) for x in s.split(",") if x]
    sections = [s for s in args.sections.split(",") if s]
    if not (args.model_dir and args.repository) and set(sections) - {"presets", "preprocess"}:
        raise UsageError(f"--sections {','.join(sections)} needs --model-dir and --repository (a trained model "
                         "and its exported repository); only presets and preprocess run without them")
    r = run_bench(BenchConfig(model_dir=args.model_dir, repository=args.repository, out=args.out,
                              batch_sizes=ints(args.batch_sizes), concurrency=ints(args.concurrency),
                              seconds=args.seconds, server=args.server, sections=sections,
                              presets=args.presets.split(","), ray_items=args.ray_items,
                              ray_workers=ints(args.ray_workers), upload_sizes=ints(args.upload_sizes),
                              connection=connection_from(args)))
    print(to_markdown(r))
    print(f"wrote {args.out}/bench.json and {args.out}/bench.md")
    return 0

