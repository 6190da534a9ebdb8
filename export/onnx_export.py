"""ONNX export of a model dir, its parity check against torch, and the FP16 variant.

The graph takes what preprocessing produces (uint8 images and mask, int64
token ids and attention mask) with a dynamic batch axis, and returns
``logits`` and ``probabilities`` (``float32 [B, C]``).

A frozen prompt tower (``text_encoder.freeze``) is exported as a graph of its own, ``input_ids`` and
``attention_mask`` to ``prompt_embedding`` (``float32 [B, H]``), and the classifier graph takes
``prompt_embedding`` instead of the ids: the server computes each distinct prompt's embedding once.
The prompt graph's window axis is dynamic too (``[B, W, T]`` for any ``W``, ``[B, W, H]`` out), so the
server runs only the windows a prompt fills (:meth:`~editguard.serving.served.OnnxClassifier.run`); the
classifier graph takes all ``prompt_windows`` of them. Parity is then checked over the chain, prompt
graph into classifier graph, against torch.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_logger = logging.getLogger(__name__)

__all__ = ["export_onnx", "export_prompt_onnx", "convert_fp16", "parity", "sample_inputs", "Parity", "OUTPUT_NAMES",
           "PROMPT_OUTPUT"]

OUTPUT_NAMES = ["logits", "probabilities"]
PROMPT_OUTPUT = "prompt_embedding"
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
        return _with_long_prompt(load_file(str(f)), pre)
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

    return _with_long_prompt(collate(items), pre)


_LONG = ("We took this picture on a long walk by the river last summer, and the light was lovely all afternoon. "
         "Please keep the background, the framing and the faces exactly as they are, and then give them glasses.")


def _with_long_prompt(example: dict[str, np.ndarray], pre) -> dict[str, np.ndarray]:
    """Examples whose prompts are read in windows, the last one a prompt of several windows and clauses, so
    the parity check covers the pooling. Token ids saved with fewer windows than ``pre`` reads (``[N, T]``,
    from a model dir before prompt windows, or before clause windows) are padded with empty windows."""
    if "input_ids" not in example:
        return example
    ids, att = pre.tokens([_LONG])
    example = dict(example)
    for k, long in (("input_ids", ids), ("attention_mask", att)):
        a = example[k] if example[k].ndim == 3 else example[k][:, None]
        lifted = np.full((a.shape[0], *long.shape[1:]), pre.tokenizer.padding["pad_id"] if k == "input_ids" else 0,
                         a.dtype)
        lifted[:, :a.shape[1]] = a
        lifted[-1] = long[0]
        example[k] = lifted
    return example


def export_onnx(net, path: str | Path, example: dict[str, np.ndarray], opset: int = 17) -> Path:
    """Export ``net`` (an :class:`EditGuardNet` in eval mode) to ``path`` with a dynamic batch axis."""
    import onnx
    import torch

    from ..model.network import ProbabilityWrapper

    wrapper = ProbabilityWrapper(net).eval()
    names = wrapper.names
    example = {**example, **_embeddings(net, example)} if net.split_prompt else example
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[k][:2])) for k in names)
    axes = {k: {0: "batch"} for k in names + OUTPUT_NAMES}
    path = Path(path)
    with torch.no_grad():
        torch.onnx.export(wrapper, args, str(path), input_names=names, output_names=OUTPUT_NAMES,
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def export_prompt_onnx(net, path: str | Path, example: dict[str, np.ndarray], opset: int = 17) -> Path:
    """Export ``net``'s frozen prompt tower (:class:`PromptWrapper`) to ``path`` with dynamic batch and window
    axes."""
    import onnx
    import torch

    from ..model.network import PromptWrapper

    wrapper = PromptWrapper(net).eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[k][:2])) for k in wrapper.names)
    path = Path(path)
    with torch.no_grad():
        torch.onnx.export(wrapper, args, str(path), input_names=wrapper.names, output_names=[PROMPT_OUTPUT],
                          dynamic_axes={k: {0: "batch", 1: "windows"} for k in wrapper.names + [PROMPT_OUTPUT]},
                          opset_version=opset, dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def _embeddings(net, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    dev = next(net.parameters()).device
    with torch.no_grad():
        e = net.text.encode(*(torch.from_numpy(example[k]).to(dev) for k in ("input_ids", "attention_mask")))
    return {PROMPT_OUTPUT: e.float().cpu().numpy()}


def convert_fp16(src: str | Path, dst: str | Path, op_block_list: list[str] | None = None) -> Path:
    """FP16 graph from the FP32 one with onnxruntime's converter; inputs and outputs keep their types.

    onnxruntime's converter (unlike onnxconverter-common's) also retypes the graph's own
    ``Cast(to=float)`` nodes, which here turn uint8 pixels and int64 masks into floats.
    ``op_block_list`` keeps ops in float32 if a model needs it; the parity check decides.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=op_block_list)
    _sort_nodes(half.graph)
    onnx.save(half, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)
    return Path(dst)


def _sort_nodes(graph) -> None:
    """Put ``graph``'s nodes in topological order. The converter appends the Cast it adds after a float
    graph input (the classifier's ``prompt_embedding``) at the end, after the nodes that read it."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        left = [n for n in pending if not set(n.input) <= ready]
        done = [n for n in pending if set(n.input) <= ready]
        if not done:  # inputs from outside (subgraphs): keep the rest as it was
            ordered += left
            break
        for n in done:
            ready.update(n.output)
        ordered += done
        pending = left
    del graph.node[:]
    graph.node.extend(ordered)


def ort_session(path: str | Path, device: str = "cpu"):
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=providers)


def parity(net, onnx_path: str | Path, inputs: dict[str, np.ndarray], tolerance: float, device: str = "cpu",
           prompt_path: str | Path | None = None) -> Parity:
    """Run torch and onnxruntime on ``inputs``; compare probabilities and logits. With ``prompt_path`` (the
    prompt tower's graph) onnxruntime runs the chain, prompt graph into classifier graph."""
    import torch

    inputs = dict(inputs)
    if prompt_path is not None:
        prompt = ort_session(prompt_path, device)
        inputs[PROMPT_OUTPUT] = prompt.run([PROMPT_OUTPUT], {i.name: inputs[i.name] for i in prompt.get_inputs()})[0]
    elif net.split_prompt:  # the classifier graph alone, fed torch's embeddings
        inputs.update(_embeddings(net, inputs))
    sess = ort_session(onnx_path, device)
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    logits, probs = sess.run(OUTPUT_NAMES, feed)
    torch_in = {k: inputs[k] for k in net.input_names}
    with torch.no_grad():
        dev = next(net.parameters()).device
        ref = net(**{k: torch.from_numpy(v).to(dev) for k, v in torch_in.items()}).float().cpu()
    return Parity(float(np.abs(probs - torch.sigmoid(ref).numpy()).max()),
                  float(np.abs(logits - ref.numpy()).max()), len(probs), tolerance)
