"""A bounded soak: N concurrent clients on loopback for a fixed time, with server RSS sampled.

    .venv/bin/python -m editguard.soak --repository demo/repository --clients 16 --seconds 300

Reports requests, errors, throughput and the RSS of Triton and its Python stubs at the start
(after warm-up) and the end. Traffic goes only to the server this process starts (loopback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

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


def soak(repository: str, triples: list[dict], clients: int, seconds: float) -> dict:
    """Run the soak against a Triton this function starts; returns the report."""
    from .clients import EditGuardClient, EditGuardError
    from .export.triton import TritonServer, free_port

    with TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        counts = {"ok": 0, "errors": 0}
        errors: list[str] = []
        lock = threading.Lock()
        with EditGuardClient(server.grpc_url, timeout=30) as guard:
            for t in triples[:8]:  # warm-up before the baseline RSS
                guard.classify(t["input"], t["prompt"], t["output"])
            rss_start, samples = process_tree_rss_mb(server.pid), []
            stop = time.monotonic() + seconds

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
            while any(th.is_alive() for th in threads):
                samples.append(round(process_tree_rss_mb(server.pid), 1))
                time.sleep(1.0)
            for th in threads:
                th.join()
        rss_end = process_tree_rss_mb(server.pid)
    return {"clients": clients, "seconds": seconds, "requests": counts["ok"] + counts["errors"],
            "errors": counts["errors"], "first_errors": errors[:5],
            "throughput": round(counts["ok"] / seconds, 1), "rss_start_mb": round(rss_start, 1),
            "rss_end_mb": round(rss_end, 1), "rss_max_mb": max(samples, default=rss_end),
            "rss_drift_mb": round(rss_end - rss_start, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", required=True, help="an exported repository")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--out", help="write the report as JSON here")
    a = p.parse_args(argv)
    import tempfile

    from .bench import encoded_triples

    with tempfile.TemporaryDirectory() as tmp:
        triples = encoded_triples(64, 256, Path(tmp))
    report = soak(a.repository, triples, a.clients, a.seconds)
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
