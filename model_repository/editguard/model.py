"""editguard (Python backend): encoded images or prepared pixels, plus the prompt, in; verdicts out.

`editguard export` copies this file into every version dir of the Python models it writes: the
client-facing ``editguard`` (and ``editguard_precheck``) and, for the ensemble graph, the steps
``editguard_prepare`` and ``editguard_verdicts``. Each reads the files of the same version of the
client-facing model (config.json, tokenizer/, labels.json, thresholds.json), named by the parameter
``client_model``.

The work is editguard.serving.served.ServedVersion's, the same object the in-process scorer, the
Ray actors and the bench run, so their scores are the served ones. This file adds what is
Triton's: reading requests, answering each one, and counting. The parameter ``mode`` picks the role:

- ``inline`` (the embedded default): per dynamic batch, each request is checked and preprocessed
  (ServedVersion.prepare: editguard.model.preprocess, configured from this version's files; with the
  parameter decode_device, JPEGs are decoded on that torch device: nvJPEG on "cuda"). A request brings
  either encoded images (INPUT_IMAGE, OUTPUT_IMAGE, optional MASK, where an empty element means no mask:
  decoded and resized here) or pixels
  the client already letterboxed with the same module (INPUT_PIXELS, OUTPUT_PIXELS, optional
  MASK_PIXELS, and PIXELS_SPEC: the preprocessing it used, which must be this version's). A request
  that fails gets an INVALID_ARG error naming the input and the problem. The valid items run as one
  batch through onnxruntime in this process (a frozen prompt tower behind its LRU; its embeddings and
  the decoded images are cached by content and shared by the server's instances:
  editguard.serving.shared_cache), and this version's thresholds.json (re-read when it changes on
  disk, so installing thresholds needs no reload) turns scores into FLAGGED and UNSAFE;
- ``prepare`` (the ensemble's first step): the checks and preprocessing only; it answers with the
  network's input tensors;
- ``verdicts`` (the ensemble's last step): the classifier's probabilities in, SCORES, FLAGGED,
  UNSAFE, LABELS, THRESHOLDS and SESSION_THRESHOLDS out, against the client model version's current
  thresholds.json.

editguard.serving.prometheus counts triples, flags, unsafe verdicts, rejections by reason and the score
distribution on Triton's metrics endpoint, under the client-facing model's name (in the ensemble,
editguard_prepare counts the rejections and editguard_verdicts the verdicts).
"""

import json
import logging
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from editguard.model.preprocess import PreprocessError, collate
from editguard.model.repository import (CUMULATIVE, ENCODED_INPUTS, OUTPUTS, PAIRS, PIXELS_INPUTS, PIXELS_SPEC,
                                        PROBABILITIES, PROMPT, SESSION_THRESHOLDS_OUTPUT, THRESHOLDS_OUTPUT)
from editguard.serving.prometheus import ServedMetrics
from editguard.serving.python_backend import answer_each, output_types
from editguard.serving.served import ServedVersion
from editguard.serving.shared_cache import server_cache_dir

INPUT_IMAGE, OUTPUT_IMAGE, MASK = ENCODED_INPUTS
INPUT_PIXELS, OUTPUT_PIXELS, MASK_PIXELS = PIXELS_INPUTS


class _TritonLog(logging.Handler):
    """editguard's log records (thresholds read or refused, ...) into Triton's log."""

    def emit(self, record: logging.LogRecord) -> None:
        log = pb_utils.Logger.log_error if record.levelno >= logging.ERROR else pb_utils.Logger.log_info
        log(self.format(record))


class TritonPythonModel:
    def initialize(self, args):
        logger = logging.getLogger("editguard")
        if not any(isinstance(h, _TritonLog) for h in logger.handlers):
            logger.addHandler(_TritonLog())
            logger.setLevel(logging.INFO)
        repo, version = Path(args["model_repository"]).parent, args["model_version"]
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.mode = params.get("mode") or "inline"  # (configs from before "mode" say inline_classifier)
        if params.get("inline_classifier", "true").lower() != "true":
            raise ValueError("parameter inline_classifier 'false' (the BLS graph) is gone: measured slower than both "
                             "the inline and the ensemble graph, at c1 and c16; serve the ensemble instead "
                             "(--model-config-name=ensemble)")
        if self.mode not in ("inline", "prepare", "verdicts"):
            raise ValueError(f"parameter 'mode' must be inline, prepare or verdicts, got {self.mode!r}")
        client_model = params.get("front") or args["model_name"]  # parameter "front": the client model's name
        self.classifier = params.get("classifier") or PAIRS[client_model]
        # the output tensors' names and types come from this model's config (the contract names the ones the
        # client model and the verdicts step answer; the prepare step's are the network inputs it feeds)
        self.outputs = output_types(config, () if self.mode == "prepare" else OUTPUTS)
        device = params.get("decode_device", "").strip()
        if device == "cpu":
            import torch

            torch.set_num_threads(1)  # like onnxruntime here: the instances already run side by side
        # the caches of decoded images and prompt embeddings, shared by this server's instances of the version
        # (a session's next turn may go to another instance); EDITGUARD_SHARED_CACHE=0 keeps them per instance
        shared = server_cache_dir() if os.environ.get("EDITGUARD_SHARED_CACHE", "1") != "0" else None
        # one onnxruntime thread per instance: the instances (processes) already run side by side
        self.served = ServedVersion(repo / client_model / version,
                                    repo / self.classifier / version if self.mode == "inline" else None,
                                    threads=1, decode_device=device, shared_dir=shared)
        if device:
            pb_utils.Logger.log_info(f"{args['model_name']} v{version}: decoding JPEGs on {device}")
        self.version = int(version)
        # the images a request carries, encoded and as pixels: a pre-check has no output image
        self.encoded = (INPUT_IMAGE,) if self.served.precheck else (INPUT_IMAGE, OUTPUT_IMAGE)
        self.pixels = (INPUT_PIXELS,) if self.served.precheck else (INPUT_PIXELS, OUTPUT_PIXELS)
        self.label_bytes = np.array([n.encode() for n in self.served.labels], dtype=np.object_)
        self.served.refresh_thresholds()
        # counted under the client-facing model's name whichever step counts, so dashboards and alerts on
        # model="editguard" hold for every graph
        self.metrics = ServedMetrics(client_model, self.version, None if self.mode == "prepare" else self.served.labels)

    def _triples(self, request):
        """All triples (or pre-check requests) of one request (usually one), preprocessed; raises
        PreprocessError."""
        get = lambda name: pb_utils.get_input_tensor_by_name(request, name)
        prompt = get(PROMPT).as_numpy().reshape(-1)
        cumulative = self._cumulative(get, len(prompt))
        # (a pre-check's config declares no OUTPUT_* inputs: Triton refuses them before they get here)
        if get(INPUT_PIXELS) is not None or get(OUTPUT_PIXELS) is not None:
            return self._pixels(get, prompt, cumulative)
        if any(get(n) is None for n in self.encoded):
            raise PreprocessError(INPUT_IMAGE, f"a request needs {' and '.join(self.encoded)} (encoded images), or "
                                  f"{', '.join(self.pixels)} and {PIXELS_SPEC} (prepared pixels)", "bad_request")
        src = get(INPUT_IMAGE).as_numpy().reshape(-1)
        out = get(OUTPUT_IMAGE).as_numpy().reshape(-1) if not self.served.precheck else [None] * len(src)
        mask = get(MASK)
        # an empty MASK element: that item has no mask (a request whose items only partly have one)
        mask = [m if len(m) else None for m in mask.as_numpy().reshape(-1)] if mask is not None else [None] * len(src)
        if not len(src) == len(out) == len(prompt) == len(mask):
            raise PreprocessError(INPUT_IMAGE, f"{', '.join(self.encoded)}, {PROMPT} and {MASK} disagree on the "
                                  "batch size", "bad_request")
        items = []
        for k in range(len(src)):
            try:
                items.append(self.served.prepare(src[k], prompt[k], out[k], mask[k], cumulative[k]))
            except PreprocessError as e:
                where = f" (item {k} of the request)" if len(src) > 1 else ""
                raise PreprocessError(e.field.upper(), e.reason + where, e.kind) from e
        return items

    @staticmethod
    def _cumulative(get, n):
        """Which of a request's ``n`` items are a session's cumulative triple (the optional CUMULATIVE input)."""
        flags = get(CUMULATIVE)
        if flags is None:
            return [False] * n
        flags = flags.as_numpy().reshape(-1)
        if len(flags) != n:
            raise PreprocessError(CUMULATIVE, f"{len(flags)} flags for {n} items; send one per item", "bad_request")
        return [bool(f) for f in flags]

    def _pixels(self, get, prompt, cumulative):
        """A pixels-path request: check the spec and the shapes, then tokenize; nothing is decoded."""
        for name in ENCODED_INPUTS:
            if get(name) is not None:
                raise PreprocessError(name, f"send encoded images ({', '.join(ENCODED_INPUTS)}) or pixels "
                                      f"({', '.join(PIXELS_INPUTS)}), not both", "bad_request")
        for name in [*self.pixels, PIXELS_SPEC]:
            if get(name) is None:
                raise PreprocessError(name, f"{name} is required on the pixels path", "bad_request")
        for raw in get(PIXELS_SPEC).as_numpy().reshape(-1):
            try:
                spec = json.loads(bytes(raw).decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise PreprocessError(PIXELS_SPEC, f"not a JSON object ({e})", "bad_request") from e
            if spec != self.served.spec:
                raise PreprocessError(PIXELS_SPEC, f"pixels were prepared for {json.dumps(spec)[:300]} but version "
                                      f"{self.version} takes {json.dumps(self.served.spec)}; read this version's "
                                      "preprocessing (parameter 'preprocess' of the model config) and prepare "
                                      "them again", "spec_mismatch")
        s = self.served.spec["image_size"]
        # the network's input name for each pixels input
        names = dict(zip(self.pixels, ("input_image", "output_image")))
        arrays = {key: get(name).as_numpy() for name, key in names.items()}
        n = len(arrays["input_image"])
        mask = get(MASK_PIXELS)
        arrays["mask"] = mask.as_numpy() if mask is not None else np.full((n, s, s), 255, np.uint8)
        for name, key in [*names.items(), (MASK_PIXELS, "mask")]:
            shape = (s, s) if key == "mask" else (s, s, 3)
            if arrays[key].shape[1:] != shape:
                raise PreprocessError(name, f"item shape is {list(arrays[key].shape[1:])}; version {self.version} "
                                      f"takes {list(shape)}", "bad_pixels")
        if any(len(a) != len(prompt) for a in arrays.values()):
            raise PreprocessError(INPUT_PIXELS, f"the pixels inputs and {PROMPT} disagree on the batch size",
                                  "bad_pixels")
        ids, att = self.served.pre.tokens(list(prompt), None if self.served.precheck else cumulative)
        items = [{**{k: a[i] for k, a in arrays.items()}, "input_ids": ids[i], "attention_mask": att[i]}
                 for i in range(n)]
        if "output_image" in arrays:  # the caller's mask is checked against its pixels, as on the encoded path
            for it in items:
                it["mask"] = self.served.pre.honest_mask(it["input_image"], it["output_image"], it["mask"])
        return items

    def execute(self, requests):
        rejected = lambda e: self.metrics.rejected(getattr(e, "kind", "bad_request"))  # noqa: E731
        if self.mode == "prepare":
            return answer_each(requests, self._triples, self._prepared, rejected, "prepare")
        self.served.refresh_thresholds()
        if self.mode == "verdicts":
            return answer_each(requests, self._probabilities, self._verdicts, rejected, "verdicts")
        return answer_each(requests, self._triples, self._classified, rejected, "classifier")

    def _prepared(self, work):
        """The ensemble's prepare step: each request's network inputs, as tensors."""
        return [[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in collate(items).items()
                 if k in self.outputs] for items in work]

    def _probabilities(self, request):
        """The verdicts step's input: ``float32 [n, C]`` probabilities, checked."""
        p = pb_utils.get_input_tensor_by_name(request, PROBABILITIES)
        p = p.as_numpy() if p is not None else None
        if p is None or p.ndim != 2 or p.shape[1] != len(self.served.labels) or not np.isfinite(p).all():
            raise ValueError(f"input '{PROBABILITIES}' must be finite, shape [n, {len(self.served.labels)}]")
        return p.astype(np.float32)

    def _classified(self, work):
        """Verdicts of each request's triples (``work``: one list of prepared items per request), classified
        as one batch."""
        probs = self.served.probabilities([item for items in work for item in items])
        return self._outputs(probs, [len(items) for items in work])

    def _verdicts(self, parts):
        """The verdicts step: each request's probabilities (``parts``) to its output tensors."""
        return self._outputs(np.concatenate(parts), [len(p) for p in parts])

    def _outputs(self, probs, counts):
        """The output tensors of each request (``counts[i]`` rows of ``probs`` each), against the current
        thresholds; the verdicts are counted on the metrics endpoint."""
        flags = self.served.flags(probs)
        outputs, start = [], 0
        for n in counts:
            p, flagged = probs[start:start + n], flags[start:start + n]
            start += n
            values = (p, flagged, flagged.any(axis=1, keepdims=True), np.tile(self.label_bytes, (n, 1)),
                      np.tile(self.served.thresholds, (n, 1)), np.tile(self.served.session_thresholds, (n, 1, 1)))
            # (THRESHOLDS and SESSION_THRESHOLDS where this version's config declares them: older configs do not)
            names = (*OUTPUTS, THRESHOLDS_OUTPUT, SESSION_THRESHOLDS_OUTPUT)
            outputs.append([pb_utils.Tensor(name, v.astype(self.outputs[name], copy=False))
                            for name, v in zip(names, values) if name in self.outputs])
        self.metrics.classified(probs, flags)
        return outputs
