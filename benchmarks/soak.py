"""A bounded soak: N concurrent clients on loopback for a fixed time, with server RSS sampled.

    .venv/bin/python -m editguard.benchmarks.soak --repository demo/repository --clients 16 --seconds 300

Reports requests, errors, throughput, and the RSS of Triton and its Python stubs. A server's
memory grows while it warms up (allocator pools, onnxruntime arenas, gRPC buffers) and then stays
flat, so the baseline is taken once the load has run ``--warmup`` seconds *and* RSS has stopped growing
(under ``SETTLE_MB`` over the last ``--settle`` seconds; at most ``--max-warmup`` seconds in all: a loaded
machine batches differently and warms up for longer), and the verdict comes from
the slope of RSS against requests served over the samples after it (MB per 10k requests, a
least-squares fit), not from the difference of two samples. The soak fails on errors, or when the
slope says a leak: over ``--max-slope`` MB per 10k requests *and* a fitted growth over the window
bigger than sampling noise. Traffic goes only to the server this process starts (loopback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["soak", "process_tree_rss_mb"]


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MiB (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        stack += children.get(p, [])
    return total / 1024


NOISE_MB = 8.0  # RSS moves by a few MB between samples with no trend; a fitted growth under this is no verdict
SETTLE_MB = 2.0  # the warm-up is over when RSS grew less than this over the last ``settle`` seconds


def leak_verdict(samples: list[tuple[int, float]], max_slope: float = 2.0) -> dict:
    """``samples``: (requests served, RSS MB) after the warm-up. The slope in MB per 10k requests,
    the growth it predicts over the window, and whether that says a leak."""
    if len(samples) < 3 or samples[-1][0] - samples[0][0] <= 0:
        return {"slope_mb_per_10k": None, "fitted_growth_mb": None, "leak": False,
                "verdict": "too short to judge: run longer"}
    x = np.array([s[0] for s in samples], float)
    y = np.array([s[1] for s in samples], float)
    slope = float(np.polyfit(x, y, 1)[0]) * 1e4
    growth = float(slope * (x[-1] - x[0]) / 1e4)
    leak = bool(slope > max_slope and growth > NOISE_MB)
    verdict = (f"leak: {slope:.2f} MB per 10k requests" if leak else
               "flat" if slope <= max_slope else f"slope {slope:.2f} MB/10k but only {growth:.1f} MB fitted growth "
               f"(within noise): run longer to judge")
    return {"slope_mb_per_10k": round(slope, 3), "fitted_growth_mb": round(growth, 1), "leak": leak,
            "verdict": verdict}


def warmed_up(trace: list[tuple[float, float]], warmup: float, settle: float) -> bool:
    """``trace``: (seconds under load, RSS MB) since the load began. Warm once ``warmup`` seconds have
    passed and RSS grew less than ``SETTLE_MB`` over the last ``settle`` seconds."""
    if not trace or trace[-1][0] < max(warmup, settle):
        return False
    now, rss = trace[-1]
    before = [r for t, r in trace if t <= now - settle]
    return bool(before) and rss - before[-1] < SETTLE_MB


def soak(repository: str, triples: list[dict], clients: int, seconds: float, warmup: float = 120.0,
         interval: float = 5.0, max_slope: float = 2.0, settle: float = 30.0, max_warmup: float | None = None,
         log=None) -> dict:
    """Run the soak against a Triton this function starts: at least ``warmup`` seconds of load, longer
    until RSS settles (:func:`warmed_up`, at most ``max_warmup`` s, default 3 × ``warmup``), then
    ``seconds`` measured, RSS sampled every ``interval`` s; returns the report."""
    max_warmup = 3 * warmup if max_warmup is None else max(max_warmup, warmup)
    from ..clients import EditGuardClient, EditGuardError
    from ..serving.triton import TritonServer, free_port

    with TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        counts = {"ok": 0, "errors": 0}
        errors: list[str] = []
        lock = threading.Lock()
        with EditGuardClient(server.grpc_url, timeout=30) as guard:
            rss_cold = process_tree_rss_mb(server.pid)
            stop = float("inf")  # set when the warm-up ends

            def worker(k: int):
                i = k
                while time.monotonic() < stop:
                    t = triples[i % len(triples)]
                    try:
                        guard.classify(t["input"], t["prompt"], t["output"])
                        key = "ok"
                    except EditGuardError as e:
                        key = "errors"
                        errors.append(str(e))
                    with lock:
                        counts[key] += 1
                    i += clients

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
            for th in threads:
                th.start()
            began, trace = time.monotonic(), [(0.0, rss_cold)]
            while not warmed_up(trace, warmup, settle) and trace[-1][0] < max_warmup:
                time.sleep(interval)
                trace.append((time.monotonic() - began, process_tree_rss_mb(server.pid)))
            warmup_s, settled = trace[-1][0], warmed_up(trace, warmup, settle)
            if log:
                log(f"soak: warm after {warmup_s:.0f} s" if settled else
                    f"soak: RSS still growing after {warmup_s:.0f} s of warm-up; measuring anyway")
            with lock:
                measured_from = counts["ok"] + counts["errors"]
            stop = time.monotonic() + seconds
            rss_start, samples = process_tree_rss_mb(server.pid), []
            t_start = time.monotonic()
            while any(th.is_alive() for th in threads):
                with lock:
                    done = counts["ok"] + counts["errors"]
                samples.append((done, round(process_tree_rss_mb(server.pid), 1)))
                if log:
                    log(f"soak: {done - measured_from} requests measured, RSS {samples[-1][1]} MB")
                time.sleep(interval)
            for th in threads:
                th.join()
            with lock:
                total = counts["ok"] + counts["errors"]
            samples.append((total, round(process_tree_rss_mb(server.pid), 1)))
            measured_s = time.monotonic() - t_start
    rss_end = samples[-1][1]
    return {"clients": clients, "warmup_s": round(warmup_s, 1), "settled": settled, "seconds": seconds,
            "requests": total,
            "errors": counts["errors"], "first_errors": errors[:5],
            "throughput": round((total - measured_from) / max(measured_s, 1e-9), 1),
            "rss_cold_mb": round(rss_cold, 1), "rss_start_mb": round(rss_start, 1), "rss_end_mb": rss_end,
            "rss_max_mb": max(r for _, r in samples), "warmup_growth_mb": round(rss_start - rss_cold, 1),
            "rss_drift_mb": round(rss_end - rss_start, 1), "samples": samples, "max_slope": max_slope,
            **leak_verdict(samples, max_slope)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", required=True, help="an exported repository")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=120, help="measured seconds, after the warm-up "
                   "(default: %(default)s)")
    p.add_argument("--warmup", type=float, default=120, help="seconds of load at least before the RSS baseline; "
                   "the cpu preset's server grows for about two minutes (onnxruntime arenas meeting new batch "
                   "sizes) (default: %(default)s)")
    p.add_argument("--settle", type=float, default=30, help="after --warmup, the load goes on until RSS grew "
                   f"under {SETTLE_MB:g} MB over this many seconds (default: %(default)s)")
    p.add_argument("--max-warmup", type=float, help="the longest warm-up, settled or not (default: 3 x --warmup)")
    p.add_argument("--interval", type=float, default=5, help="seconds between RSS samples (default: %(default)s)")
    p.add_argument("--max-slope", type=float, default=2.0, help="MB per 10k requests over which RSS growth is a "
                   "leak (default: %(default)s)")
    p.add_argument("--out", help="write the report as JSON here")
    a = p.parse_args(argv)
    import tempfile

    from .workloads import encoded_triples

    with tempfile.TemporaryDirectory() as tmp:
        triples = encoded_triples(64, 256, Path(tmp))
    report = soak(a.repository, triples, a.clients, a.seconds, a.warmup, a.interval, a.max_slope, a.settle,
                  a.max_warmup, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"verdict: {report['verdict']}; {report['errors']} errors", file=sys.stderr)
    return 0 if report["errors"] == 0 and not report["leak"] else 1


if __name__ == "__main__":
    sys.exit(main())
