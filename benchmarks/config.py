"""The benchmark run's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BenchConfig:
    model_dir: str | None  # a trained model dir (not needed by the presets and preprocess sections)
    repository: str | None  # an exported repository of the same model (served)
    out: str = "bench"  # folder for bench.md and bench.json
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 32, 64])
    seconds: float = 5.0  # per measurement point
    server: str | None = None  # a running Triton (gRPC URL); default: start one on the repository
    sections: list[str] = field(default_factory=lambda: ["inprocess", "served", "uploads", "graphs", "preprocess"])
    upload_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024])
    presets: list[str] = field(default_factory=lambda: ["small", "base", "cpu-lite0"])  # section presets
    ray_items: int = 3000  # triples scored per ray-section run
    ray_workers: list[int] = field(default_factory=lambda: [1, 2])
    connection: Any = None  # with ``server``: its TLS, headers and admin key (statistics need the key)
