"""editguard_classifier (Python backend): the exported ONNX network run by onnxruntime.

`editguard export` copies this file into every version dir beside model.onnx and export.json.
The session (editguard.serving.served.OnnxClassifier, which the served client model and the in-process
scorer run too) is built once in ``initialize``. ``execute`` checks each request, runs all valid
ones as one batch, and returns exactly one response per request: a bad request (wrong shape,
token ids out of range) gets an INVALID_ARG error and never reaches the network.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from editguard.serving.prometheus import ServedMetrics
from editguard.serving.python_backend import answer_each
from editguard.serving.served import OnnxClassifier


class TritonPythonModel:
    def initialize(self, args):
        gpu = args.get("model_instance_kind") == "GPU"
        self.net = OnnxClassifier(Path(args["model_repository"]) / args["model_version"],
                                  cuda_device=int(args["model_instance_device_id"]) if gpu else None)
        self.metrics = ServedMetrics(args["model_name"], args["model_version"])  # rejections only

    def _arrays(self, request):
        arrays = {}
        for name in self.net.inputs:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is not None:
                arrays[name] = t.as_numpy()
        return self.net.check(arrays)

    def execute(self, requests):
        return answer_each(requests, self._arrays, self._run, lambda e: self.metrics.rejected("bad_tensors"),
                           "onnxruntime failed")

    def _run(self, batches):
        return [[pb_utils.Tensor(k, v) for k, v in out.items()] for out in self.net.run(batches)]
