"""editguard_explain (Python backend): the explanations of editguard.model.explain, served on request.

`editguard export --explain` copies this file into each version dir beside the model dir's network
(config.json, model.safetensors, labels.json, tokenizer/). ``initialize`` loads it with torch once; a
request's categories default to the ones editguard's same version flags at its installed
thresholds.json (read again when it changes). Each request is read and checked alone: a bad image,
prompt or category answers that request with INVALID_ARG, naming the field, and the others go on.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from editguard.model.explain import Explainer
from editguard.model.repository import CLIENT_MODEL, ThresholdsFile
from editguard.serving.prometheus import ServedMetrics
from editguard.serving.python_backend import answer_each


class TritonPythonModel:
    def initialize(self, args):
        version = Path(args["model_repository"]) / args["model_version"]
        self.explainer = Explainer.from_model_dir(version)
        self.thresholds = ThresholdsFile(version.parent.parent / CLIENT_MODEL / args["model_version"],
                                         self.explainer.labels)
        self.metrics = ServedMetrics(args["model_name"], args["model_version"])  # rejections only

    def _rows(self, request):
        def column(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else [v[0] if hasattr(v, "__len__") else v for v in t.as_numpy()]

        images, outputs, prompts = column("INPUT_IMAGE"), column("OUTPUT_IMAGE"), column("PROMPT")
        masks, cats = column("MASK"), column("CATEGORIES")
        rows = []
        pre = self.explainer.pre
        for i, (src, prompt, out) in enumerate(zip(images, prompts, outputs)):
            field = (lambda name: f"{name}[{i}]") if len(images) > 1 else (lambda name: name)
            src = pre.decode(bytes(src), field("input_image"))
            out = pre.decode(bytes(out), field("output_image"))
            mask = bytes(masks[i]) if masks is not None and len(masks[i]) else None
            if mask is not None:
                pre.mask(mask, src.info.get("source_size", src.size), field("mask"))
            names = None
            if cats is not None and len(cats[i]):
                names = [c.strip() for c in bytes(cats[i]).decode("utf-8", "replace").split(",") if c.strip()]
                unknown = sorted(set(names) - set(self.explainer.labels))
                if unknown:
                    raise ValueError(f"{field('categories')}: unknown categories {unknown}; this model has "
                                     f"{self.explainer.labels}")
            pre.prompt_text(bytes(prompt), field("prompt"))  # checked here; explain reads it as sent
            rows.append((src, bytes(prompt), out, mask, names))
        return rows

    def execute(self, requests):
        self.thresholds.refresh()
        return answer_each(requests, self._rows, self._run, lambda e: self.metrics.rejected("bad_request"),
                           "explanation failed")

    def _run(self, works):
        limits = self.thresholds.values
        out = []
        for rows in works:
            texts = [json.dumps([e.record() for e in self.explainer.explain(src, prompt, output, mask, names, limits)])
                     for src, prompt, output, mask, names in rows]
            out.append([pb_utils.Tensor("EXPLANATIONS", np.array([[t.encode()] for t in texts], dtype=object))])
        return out
