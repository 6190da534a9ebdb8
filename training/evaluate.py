"""``editguard evaluate``: score a labelled manifest with a model dir and report metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..manifest import read_manifest
from ..reports import classification_report
from ..model.model_dir import load_model_dir
from .data import TripleDataset, collate_batch, label_matrix

_logger = logging.getLogger(__name__)

__all__ = ["evaluate", "predict_manifest"]


def predict_manifest(model_dir: str | Path, manifest: str | Path, *, batch_size: int = 128, device: str = "cpu",
                     allow_outside_root: bool = False, progress: bool = True):
    """``(records, net config, probabilities float32 [N, C])`` of ``model_dir`` on ``manifest``."""
    net, pre = load_model_dir(model_dir, device=device)
    records = read_manifest(manifest, labels=net.cfg.labels, allow_outside_root=allow_outside_root)
    ds = TripleDataset(records, pre, net.cfg.labels, cache=False)
    loader = DataLoader(ds, batch_size, collate_fn=collate_batch)
    from .loop import predict

    return records, net.cfg, predict(net, loader, torch.device(device), progress=progress)


def evaluate(model_dir: str | Path, manifest: str | Path, *, batch_size: int = 128, device: str = "cpu",
             allow_outside_root: bool = False, progress: bool = True) -> dict:
    """The :func:`classification_report` of ``model_dir`` on ``manifest`` (labels required)."""
    records, cfg, probs = predict_manifest(model_dir, manifest, batch_size=batch_size, device=device,
                                           allow_outside_root=allow_outside_root, progress=progress)
    labels = cfg.labels
    report = classification_report(label_matrix(records, labels), probs, labels)
    report["model_dir"], report["manifest"] = str(model_dir), str(manifest)
    report["ablation"] = cfg.ablation
    return report
