"""editguard (Python backend, BLS): encoded images + prompt in, per-category verdicts out.

`editguard export` copies this file into every version dir beside config.json, tokenizer/ and
labels.json (and `editguard calibrate --install` adds thresholds.json). Per batch of requests:

1. each request is decoded, resized and tokenized by editguard.model.preprocess, the one
   definition of preprocessing, configured from this version's files; a request that fails
   gets an INVALID_ARG error naming the input and the problem;
2. the valid items go to editguard_classifier (the same version number) as one batch;
3. thresholds.json (re-read when it changes on disk, so installing thresholds needs no
   reload) turns scores into FLAGGED and UNSAFE.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from editguard.model.preprocess import PreprocessError, Preprocessor, collate
from editguard.model.thresholds import DEFAULT_THRESHOLD, threshold_array


class TritonPythonModel:
    def initialize(self, args):
        self.dir = Path(args["model_repository"]) / args["model_version"]
        self.version = int(args["model_version"])
        config = json.loads(args["model_config"])
        self.classifier = config["parameters"]["classifier"]["string_value"]
        self.pre = Preprocessor.from_dir(self.dir)
        self.labels = json.loads((self.dir / "config.json").read_text())["labels"]
        self.label_bytes = np.array([n.encode() for n in self.labels], dtype=np.object_)
        self._thresholds_mtime = None
        self.thresholds = np.full(len(self.labels), DEFAULT_THRESHOLD, np.float32)
        self._load_thresholds()

    def _load_thresholds(self):
        """Read thresholds.json when it is new or changed; a bad file keeps the current thresholds."""
        path = self.dir / "thresholds.json"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            if self._thresholds_mtime is not None:  # removed: back to the defaults
                self._thresholds_mtime = None
                self.thresholds = np.full(len(self.labels), DEFAULT_THRESHOLD, np.float32)
            return
        if mtime == self._thresholds_mtime:
            return
        self._thresholds_mtime = mtime
        try:
            t = threshold_array(json.loads(path.read_text()), self.labels)
        except (ValueError, KeyError, TypeError) as e:
            pb_utils.Logger.log_error(f"editguard v{self.version}: ignoring bad {path}: {e}")
            return
        self.thresholds = t
        pb_utils.Logger.log_info(f"editguard v{self.version}: thresholds from {path}")

    def _triples(self, request):
        """All triples of one request (usually one), preprocessed; raises PreprocessError."""
        get = lambda name: pb_utils.get_input_tensor_by_name(request, name)
        src, out, prompt = (get(n).as_numpy().reshape(-1) for n in ("INPUT_IMAGE", "OUTPUT_IMAGE", "PROMPT"))
        mask = get("MASK")
        mask = mask.as_numpy().reshape(-1) if mask is not None else [None] * len(src)
        items = []
        for k in range(len(src)):
            try:
                items.append(self.pre.triple(src[k], prompt[k], out[k], mask[k]))
            except PreprocessError as e:
                where = f" (item {k} of the request)" if len(src) > 1 else ""
                raise PreprocessError(e.field.upper(), e.reason + where) from e
        return items

    def execute(self, requests):
        self._load_thresholds()
        responses = [None] * len(requests)
        good = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._triples(request)))
            except PreprocessError as e:
                responses[i] = _error(str(e), pb_utils.TritonError.INVALID_ARG)
        if not good:
            return responses
        batch = collate([item for _, items in good for item in items])
        inputs = [pb_utils.Tensor(name, np.ascontiguousarray(arr)) for name, arr in batch.items()]
        result = pb_utils.InferenceRequest(model_name=self.classifier, model_version=self.version,
                                           requested_output_names=["probabilities"], inputs=inputs).exec()
        if result.has_error():
            for i, _ in good:
                responses[i] = _error(f"classifier: {result.error().message()}", pb_utils.TritonError.INTERNAL)
            return responses
        probs = pb_utils.get_output_tensor_by_name(result, "probabilities").as_numpy().astype(np.float32)
        start = 0
        for i, items in good:
            p = probs[start:start + len(items)]
            start += len(items)
            flagged = p >= self.thresholds
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("SCORES", p),
                pb_utils.Tensor("FLAGGED", flagged),
                pb_utils.Tensor("UNSAFE", flagged.any(axis=1, keepdims=True)),
                pb_utils.Tensor("LABELS", np.tile(self.label_bytes, (len(items), 1))),
            ])
        return responses


def _error(message, code):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
