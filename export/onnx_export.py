"""ONNX export of a model dir, its parity check against torch, and the FP16 variant.

The graph takes what preprocessing produces (uint8 images and mask, int64
token ids and attention mask) with a dynamic batch axis, and returns
``logits`` and ``probabilities`` (``float32 [B, C]``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_logger = logging.getLogger(__name__)

__all__ = ["export_onnx", "convert_fp16", "parity", "sample_inputs", "Parity", "OUTPUT_NAMES"]

OUTPUT_NAMES = ["logits", "probabilities"]
FP32_TOL, FP16_TOL = 1e-4, 1e-2


@dataclass
class Parity:
    """Max |Δ| between onnxruntime and torch on the same inputs."""

    max_abs_prob: float
    max_abs_logit: float
    n: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_prob <= self.tolerance


def sample_inputs(model_dir: str | Path, pre, n: int = 16) -> dict[str, np.ndarray]:
    """Real preprocessed triples: ``examples.safetensors`` from training, else made-up images and prompts
    run through the model's own preprocessing."""
    from safetensors.numpy import load_file

    f = Path(model_dir) / "examples.safetensors"
    if f.exists():
        return load_file(str(f))
    from PIL import Image

    rng = np.random.default_rng(0)
    prompts = ["make the sky pink", "remove their clothes", "give them glasses", "change the background to a beach"]
    items = []
    for i in range(n):
        side = int(rng.integers(48, 200))
        base = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        edit = base.copy()
        edit[side // 4: side // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
        enc = []
        for arr in (base, edit):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "PNG")
            enc.append(buf.getvalue())
        items.append(pre.triple(enc[0], prompts[i % len(prompts)], enc[1]))
    from ..model.preprocess import collate

    return collate(items)


def export_onnx(net, path: str | Path, example: dict[str, np.ndarray], opset: int = 17) -> Path:
    """Export ``net`` (an :class:`EditGuardNet` in eval mode) to ``path`` with a dynamic batch axis."""
    import onnx
    import torch

    from ..model.network import ProbabilityWrapper

    wrapper = ProbabilityWrapper(net).eval()
    names = wrapper.names
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[k][:2])) for k in names)
    axes = {k: {0: "batch"} for k in names + OUTPUT_NAMES}
    path = Path(path)
    with torch.no_grad():
        torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=OUTPUT_NAMES,
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def convert_fp16(src: str | Path, dst: str | Path, op_block_list: list[str] | None = None) -> Path:
    """FP16 graph from the FP32 one with onnxruntime's converter; inputs and outputs keep their types.

    onnxruntime's converter (unlike onnxconverter-common's) also retypes the graph's own
    ``Cast(to=float)`` nodes, which here turn uint8 pixels and int64 masks into floats.
    ``op_block_list`` keeps ops in float32 if a model needs it; the parity check decides.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=op_block_list)
    onnx.save(half, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)
    return Path(dst)


def ort_session(path: str | Path, device: str = "cpu"):
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=providers)


def parity(net, onnx_path: str | Path, inputs: dict[str, np.ndarray], tolerance: float, device: str = "cpu") -> Parity:
    """Run torch and onnxruntime on ``inputs``; compare probabilities and logits."""
    import torch

    sess = ort_session(onnx_path, device)
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    logits, probs = sess.run(OUTPUT_NAMES, feed)
    with torch.no_grad():
        ref = net(**{k: torch.from_numpy(v).to(next(net.parameters()).device) for k, v in feed.items()}).float().cpu()
    return Parity(float(np.abs(probs - torch.sigmoid(ref).numpy()).max()),
                  float(np.abs(logits - ref.numpy()).max()), len(probs), tolerance)
