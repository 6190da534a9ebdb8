"""Progress for long work: a tqdm bar on a terminal, plain periodic lines anywhere else.

A tqdm bar written to a file or a pipe (CI, ``nohup``, a Kubernetes log) turns into megabytes of
carriage returns. When stderr is not a terminal, :func:`progress` logs one line every
``$EDITGUARD_PROGRESS_SECONDS`` (default 10) instead, with the count, rate and ETA, and a last
line when the work ends.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from typing import Callable, Iterable, Iterator

__all__ = ["progress", "LineProgress", "parallel_map"]


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, leave: bool = True, **tqdm_kw):
    """``tqdm(...)`` on a terminal; a :class:`LineProgress` with the same methods elsewhere."""
    if not disable and not sys.stderr.isatty():
        return LineProgress(iterable, total=total, desc=desc, unit=unit)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, **tqdm_kw)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """tqdm's ``update``, ``set_postfix``, ``close`` and iteration, as a line every ``interval`` seconds."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
                 interval: float | None = None, stream=None):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.interval = float(os.environ.get("EDITGUARD_PROGRESS_SECONDS", 10)) if interval is None else interval
        self.stream = stream or sys.stderr
        self.start = self._last = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kw) -> None:
        items = {**(ordered_dict or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total and rate > 0 and self.n < self.total:
            eta = f", ETA {_clock((self.total - self.n) / rate)}"
        post = f" [{self.postfix}]" if self.postfix else ""
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{done} {self.unit}{pct}, {rate:.1f} {self.unit}/s, {_clock(elapsed)} elapsed{eta}{post}"

    def _write(self) -> None:
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write()


def parallel_map(fn: Callable, jobs: list, *, workers: int | None = None, desc: str = "", unit: str = "it",
                 show: bool = True, chunksize: int = 16, min_jobs: int = 64) -> Iterator:
    """``fn(job)`` for every job, in order, with progress: in a pool of ``workers`` processes (default: the
    cores, at most 8) when there are at least ``min_jobs`` jobs, else in this process. ``fn`` must be a
    module-level function (the pool pickles it)."""
    workers = workers or min(mp.cpu_count(), 8)
    bar = progress(total=len(jobs), desc=desc, unit=unit, disable=not show)
    try:
        if workers > 1 and len(jobs) >= min_jobs:
            # spawn, not fork: forking a process that already runs threads (gRPC, say) can deadlock the child
            with mp.get_context("spawn").Pool(workers) as pool:
                for out in pool.imap(fn, jobs, chunksize=chunksize):
                    bar.update()  # before yielding: a caller that zips the results never resumes after the last
                    yield out
        else:
            for job in jobs:
                out = fn(job)
                bar.update()
                yield out
    finally:
        bar.close()
