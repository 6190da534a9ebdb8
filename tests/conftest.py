"""Shared fixtures: small synthetic data sets and one tiny trained model, built once per session.

Everything is generated here; no weights or data are committed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no machine here reaches the hub; fail fast if code tries
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from editguard.training.synth import generate  # noqa: E402


@pytest.fixture(scope="session")
def synth_sets(tmp_path_factory) -> dict[str, Path]:
    """Manifests: train (1500), val (300), test (400), ood (400), at 96 px."""
    root = tmp_path_factory.mktemp("synth")
    sizes = {"train": (1500, 11, "iid"), "val": (300, 12, "iid"), "test": (400, 13, "iid"), "ood": (400, 14, "ood")}
    return {name: generate(root / name, n, seed, split, image_size=96, progress=False)
            for name, (n, seed, split) in sizes.items()}


@pytest.fixture(scope="session")
def tiny_model_dir(synth_sets, tmp_path_factory) -> Path:
    """A tiny triple model trained for a few epochs on the CPU."""
    from editguard.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "tiny"
    train(TrainConfig(train=str(synth_sets["train"]), val=str(synth_sets["val"]), out=str(out), epochs=4,
                      patience=10, progress=False))
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
