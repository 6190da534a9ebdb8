"""editguard_classifier (Python backend): the exported ONNX network run by onnxruntime.

`editguard export` copies this file into every version dir beside model.onnx and export.json.
The session (editguard.model.served.OnnxClassifier, which the served front and the in-process
scorer run too) is built once in ``initialize``. ``execute`` checks each request, runs all valid
ones as one batch, and returns exactly one response per request: a bad request (wrong shape,
token ids out of range) gets an INVALID_ARG error and never reaches the network.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from editguard.export.metrics import ServedMetrics
from editguard.model.served import OnnxClassifier


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
        responses = [None] * len(requests)
        good = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._arrays(request)))
            except ValueError as e:
                responses[i] = _error(str(e), pb_utils.TritonError.INVALID_ARG)
                self.metrics.rejected("bad_tensors")
        if not good:
            return responses
        try:
            results = self.net.run([a for _, a in good])
        except Exception as e:  # an ORT failure answers these requests with its message
            for i, _ in good:
                responses[i] = _error(f"onnxruntime failed: {e}", pb_utils.TritonError.INTERNAL)
            return responses
        for (i, _), out in zip(good, results):
            responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in out.items()])
        return responses


def _error(message, code):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
