"""Timing helpers every benchmark shares (and scripts/gpu_check.py): percentiles, a timed loop, a closed-loop
load, tiled batches, the machine's description."""

from __future__ import annotations

import itertools
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


_uploads = itertools.count()


def new_uploads(args: tuple) -> tuple:
    """``args`` with each ``bytes`` among them (an encoded image: the benchmarks' prompts are ``str``) made
    new bytes: the same image followed by a unique trailer, which decoders ignore. A server decodes an image
    once by content (:class:`~editguard.model.preprocess.DecodedImages`) and real uploads are new, so
    benchmarks that cycle a few triples send them as new uploads, and time no cache hit a user would not get."""
    return tuple(a + b"\0editguard-bench %d" % next(_uploads) if isinstance(a, bytes) else a for a in args)


def closed_loop(fn, calls: list[tuple], c: int, seconds: float, setup=None) -> tuple[list[float], float]:
    """``c`` threads call ``fn(*calls[i])`` back to back for ``seconds``: latencies (ms), wall (s). Each call's
    encoded images are new uploads (:func:`new_uploads`). ``setup``: called untimed before each call with its
    arguments, ``fn`` then takes what it returns (the wall includes it)."""
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(k: int):
        i, mine = k, []
        while time.perf_counter() < stop or not mine:
            args = new_uploads(calls[i % len(calls)])
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
