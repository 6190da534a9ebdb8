"""editguard_classifier (Python backend): the exported ONNX network run by onnxruntime.

`editguard export` copies this file into every version dir beside model.onnx and export.json.
The session is built once in ``initialize``. ``execute`` checks each request, runs all valid
ones as one batch, and returns exactly one response per request: a bad request (wrong shape,
token ids out of range) gets an INVALID_ARG error and never reaches the network.
"""

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.meta = json.loads((version_dir / "export.json").read_text())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = int(os.environ.get("EDITGUARD_ORT_THREADS", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        self.session = ort.InferenceSession(str(version_dir / "model.onnx"), opts, providers=providers)
        self.inputs = {i.name: i.shape[1:] for i in self.session.get_inputs()}  # per-item shapes
        self.vocab_size = int(self.meta["vocab_size"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _check(self, request):
        """The request's arrays, or raise ValueError naming the problem."""
        arrays = {}
        for name, shape in self.inputs.items():
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is None:
                raise ValueError(f"input '{name}' is required by this model version")
            a = t.as_numpy()
            if list(a.shape[1:]) != list(shape):
                raise ValueError(f"input '{name}' has item shape {list(a.shape[1:])}, this model version takes {shape}")
            arrays[name] = a
        if "input_ids" in arrays:
            ids = arrays["input_ids"]
            if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
                bad = int(ids.max() if ids.max() >= self.vocab_size else ids.min())
                raise ValueError(f"input 'input_ids': token id {bad} is out of range [0, {self.vocab_size})")
            att = arrays["attention_mask"]
            if att.size and not np.isin(att, (0, 1)).all():
                raise ValueError("input 'attention_mask' must hold only 0 and 1")
        sizes = {a.shape[0] for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sorted(sizes)}")
        return arrays

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._check(request)))
            except ValueError as e:
                responses[i] = _error(str(e))
        if good:
            feed = {n: np.concatenate([a[n] for _, a in good]) for n in self.inputs}
            try:
                results = self.session.run(self.outputs, feed)
            except Exception as e:  # an ORT failure answers these requests with its message
                for i, _ in good:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                        f"onnxruntime failed: {e}", pb_utils.TritonError.INTERNAL))
                return responses
            start = 0
            for i, arrays in good:
                n = next(iter(arrays.values())).shape[0]
                tensors = [pb_utils.Tensor(name, r[start:start + n]) for name, r in zip(self.outputs, results)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        return responses


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
        message, pb_utils.TritonError.INVALID_ARG))
