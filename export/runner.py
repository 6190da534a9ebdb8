"""The exported network as the served models run it: one onnxruntime session per version dir.

Both Python-backend models use it: ``editguard_classifier`` (the network as a Triton model of its
own) and ``editguard`` when it runs the network in its own process (``inline_classifier``), which
saves a BLS hop per batch. Needs numpy and onnxruntime only (no torch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["OnnxClassifier"]


class OnnxClassifier:
    """``model.onnx`` and ``export.json`` of one ``editguard_classifier`` version dir.

    ``threads``: onnxruntime's intra-op threads (0: its default, every core); the environment
    variable ``EDITGUARD_ORT_THREADS`` overrides it. ``cuda_device``: use the CUDA execution
    provider on that device when onnxruntime has it.
    """

    def __init__(self, version_dir: str | Path, threads: int = 0, cuda_device: int | None = None):
        import onnxruntime as ort

        version_dir = Path(version_dir)
        self.meta = json.loads((version_dir / "export.json").read_text())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = int(os.environ.get("EDITGUARD_ORT_THREADS", threads))
        if threads:
            opts.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if cuda_device is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": cuda_device}))
        self.session = ort.InferenceSession(str(version_dir / "model.onnx"), opts, providers=providers)
        self.inputs = {i.name: i.shape[1:] for i in self.session.get_inputs()}  # per-item shapes
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.vocab_size = int(self.meta["vocab_size"])

    def check(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays this version takes, checked (shapes, dtypes, token ids in range); raises ValueError
        naming the input and the problem. Untrusted callers reach the classifier directly."""
        out = {}
        for name, shape in self.inputs.items():
            a = arrays.get(name)
            if a is None:
                raise ValueError(f"input '{name}' is required by this model version")
            if list(a.shape[1:]) != list(shape):
                raise ValueError(f"input '{name}' has item shape {list(a.shape[1:])}, this model version takes {shape}")
            out[name] = a
        if "input_ids" in out:
            ids = out["input_ids"]
            if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
                bad = int(ids.max() if ids.max() >= self.vocab_size else ids.min())
                raise ValueError(f"input 'input_ids': token id {bad} is out of range [0, {self.vocab_size})")
            att = out["attention_mask"]
            if att.size and not np.isin(att, (0, 1)).all():
                raise ValueError("input 'attention_mask' must hold only 0 and 1")
        sizes = {a.shape[0] for a in out.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sorted(sizes)}")
        return out

    def run(self, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run checked batches as one onnxruntime call; the outputs split back per batch."""
        feed = {n: np.concatenate([b[n] for b in batches]) if len(batches) > 1 else batches[0][n]
                for n in self.inputs}
        results = self.session.run(self.outputs, feed)
        split, start = [], 0
        for b in batches:
            n = next(iter(b.values())).shape[0]
            split.append({name: r[start:start + n] for name, r in zip(self.outputs, results)})
            start += n
        return split
