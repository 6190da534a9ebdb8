"""Timing helpers every benchmark shares (and scripts/gpu_check.py): percentiles, a timed loop, a closed-loop
load, tiled batches, the machine's description."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time

import numpy as np


def pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in (50, 95, 99)}


def timed(fn, seconds: float, items: int) -> dict:
    fn()  # warm-up
    lat, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(lat) < 5:
        t = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t) * 1e3)
    return {"triples_s": round(items * len(lat) / (time.perf_counter() - t0), 1), **pct(lat)}


def tile(batch: dict[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    reps = -(-b // len(next(iter(batch.values()))))
    return {k: np.ascontiguousarray(np.concatenate([v] * reps)[:b]) for k, v in batch.items()}


def closed_loop(fn, calls: list[tuple], c: int, seconds: float, setup=None) -> tuple[list[float], float]:
    """``c`` threads call ``fn(*calls[i])`` back to back for ``seconds``: latencies (ms), wall (s). ``setup``:
    called untimed before each call, ``fn`` then takes what it returns (the wall includes it)."""
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(k: int):
        i, mine = k, []
        while time.perf_counter() < stop or not mine:
            args = calls[i % len(calls)]
            if setup is not None:
                args = setup(*args)
            t0 = time.perf_counter()
            fn(*args)
            mine.append((time.perf_counter() - t0) * 1e3)
            i += c
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(c)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat, time.perf_counter() - t0


def machine() -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "timm", "transformers", "tritonclient", "nvidia-pytriton",
                "pillow", "numpy", "ray"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "versions": versions,
            "command": "editguard " + " ".join(sys.argv[1:]) if sys.argv else ""}
