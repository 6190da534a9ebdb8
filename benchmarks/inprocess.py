"""In-process sections: torch eager against onnxruntime, the served pipeline, preprocessing, the presets."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..model.prompt_cache import PromptCache, with_cache
from .config import BenchConfig
from .timing import new_uploads, tile, timed
from .workloads import PROMPT_POOL, ZIPF_S, encode_upload, prompt_stream, upload_images


def run_graphs(classifier, prompt, batch: dict[str, np.ndarray]) -> None:
    """One onnxruntime pass over ``batch``: the prompt graph into the classifier graph where the prompt
    tower is its own (``prompt`` a session), else the classifier alone (``prompt`` None)."""
    from ..export.onnx_export import PROMPT_OUTPUT

    feed = dict(batch)
    if prompt is not None:
        feed[PROMPT_OUTPUT] = prompt.run(None, {k: batch[k] for k in ("input_ids", "attention_mask")})[0]
    classifier.run(None, {i.name: feed[i.name] for i in classifier.get_inputs()})


def _export_graphs(net, samples: dict, workdir: Path) -> dict[str, tuple]:
    """``{precision: (classifier session, prompt-tower session or None)}`` of ``net`` exported FP32 and FP16."""
    from ..export.onnx_export import convert_fp16, export_onnx, export_prompt_onnx, ort_session

    split, graphs = net.split_prompt, {}
    for precision in ("fp32", "fp16"):
        clf, prompt = workdir / precision / "classifier", workdir / precision / "prompt"
        for d in (clf, prompt) if split else (clf,):
            d.mkdir(parents=True, exist_ok=True)
        export_onnx(net, clf / "model.onnx", samples)
        if split:
            export_prompt_onnx(net, prompt / "model.onnx", samples)
            (prompt / "export.json").write_text(json.dumps({"vocab_size": net.text.encoder.config.vocab_size}))
        if precision == "fp16":
            for d in (clf, prompt) if split else (clf,):
                convert_fp16(d / "model.onnx", d / "half.onnx")
                os.replace(d / "half.onnx", d / "model.onnx")
        graphs[precision] = (ort_session(clf / "model.onnx"), ort_session(prompt / "model.onnx") if split else None)
    return graphs


def bench_inprocess(cfg: BenchConfig, triples: list[dict], workdir: Path) -> dict:
    """torch eager and onnxruntime on the same work. With a frozen prompt tower, "every prompt encoded"
    rows run it for every triple in both (torch without its embedding cache); the "zipf prompts" rows feed
    each call the next prompts of a Zipf stream, torch with its own cache (:class:`PromptCache`) and
    onnxruntime with the served LRU (:class:`~editguard.serving.served.PromptEmbeddings`)."""
    import torch

    from ..export.onnx_export import sample_inputs
    from ..model.model_dir import load_model_dir
    from ..serving.served import ServedVersion

    net, pre = load_model_dir(cfg.model_dir)
    samples = sample_inputs(cfg.model_dir, pre)
    graphs = _export_graphs(net, samples, workdir)
    every = " (every prompt encoded)" if net.split_prompt else ""
    rows = []
    for b in cfg.batch_sizes:
        batch = tile(samples, b)
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}

        def torch_run():
            with torch.inference_mode():
                net(**tensors)

        rows.append({"runtime": "torch eager fp32" + every, "batch": b, **timed(torch_run, cfg.seconds, b)})
        for precision, sessions in graphs.items():
            rows.append({"runtime": f"onnxruntime {precision}" + every, "batch": b,
                         **timed(lambda: run_graphs(*sessions, batch), cfg.seconds, b)})
    b = max(cfg.batch_sizes)
    if net.split_prompt:
        rows += _zipf_rows(cfg, net, pre, tile(samples, b), graphs["fp32"][0], workdir, b)
    served = ServedVersion.open(cfg.repository, threads=0)  # the exported version, as the server runs it
    items = [triples[i % len(triples)] for i in range(b)]

    def pipeline():
        served.flags(served.probabilities([served.prepare(*new_uploads((t["input"], t["prompt"], t["output"])))
                                           for t in items]))

    rows.append({"runtime": "pipeline: the served version in-process", "batch": b, **timed(pipeline, cfg.seconds, b)})
    return {"rows": rows, "prompts": f"zipf: Zipf(s={ZIPF_S}) over {PROMPT_POOL} distinct prompts, LRU of 4096"}


def _zipf_rows(cfg: BenchConfig, net, pre, batch: dict, classifier, workdir: Path, b: int) -> list[dict]:
    """Repeated prompts: each call takes the next ``b`` prompts of one Zipf stream; torch with its own cache of
    embeddings, onnxruntime with the served LRU in front of the prompt graph."""
    import torch

    from ..export.onnx_export import PROMPT_OUTPUT
    from ..serving.served import PromptEmbeddings

    ids, att = pre.tokens(prompt_stream(200 * b, repeated=True))
    images = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    lru, cache = PromptEmbeddings(workdir / "fp32" / "prompt", size=4096), PromptCache.of(net)
    at = {"torch": 0, "ort": 0}

    def chunk(who: str):
        k = at[who] % (len(ids) // b)
        at[who] += 1
        return ids[k * b:(k + 1) * b], att[k * b:(k + 1) * b]

    def torch_zipf():
        i, a = chunk("torch")
        tensors = {**{k: torch.from_numpy(v) for k, v in images.items()}, "input_ids": torch.from_numpy(i),
                   "attention_mask": torch.from_numpy(a)}
        with torch.inference_mode():
            net(**with_cache(cache, tensors))

    def ort_zipf():
        i, a = chunk("ort")
        feed = {**images, PROMPT_OUTPUT: lru(i, a)}
        classifier.run(None, {x.name: feed[x.name] for x in classifier.get_inputs()})

    return [{"runtime": "torch eager fp32 (zipf prompts, its cache)", "batch": b, **timed(torch_zipf, cfg.seconds, b)},
            {"runtime": "onnxruntime fp32 (zipf prompts, LRU)", "batch": b, **timed(ort_zipf, cfg.seconds, b),
             "prompt_hit_rate": round(lru.hits / max(lru.hits + lru.misses, 1), 3)}]


def bench_preprocess(cfg: BenchConfig, workdir: Path) -> dict:
    from ..model.config import ModelConfig
    from ..model.preprocess import Preprocessor

    base = ModelConfig.load(Path(cfg.model_dir) / "config.json").preprocess
    decoders = [("pillow", Preprocessor(replace(base, jpeg_draft=False), tokenizer=None)),
                ("pillow draft", Preprocessor(replace(base, jpeg_draft=True), tokenizer=None))]
    try:  # the served client model's decode_device: torchvision, on the GPU (nvJPEG) where there is one
        import torch

        from ..serving.torch_decode import TorchDecoder

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        decoders += [(f"torchvision {d}", TorchDecoder(base, None, d)) for d in devices]
    except (ImportError, RuntimeError):
        pass
    rows = []
    for size in (512, 1024):
        img = upload_images(size, 1)[0]
        for fmt in ("JPEG", "PNG", "WEBP"):
            data = encode_upload(img, fmt)
            # only JPEG differs by decoder: the others take Pillow's path whatever the client model is set to
            for name, pre in decoders if fmt == "JPEG" else decoders[:1]:
                r = timed(lambda: pre.image(data), cfg.seconds / 2, 1)
                rows.append({"format": fmt, "size": size, "bytes": len(data), "decoder": name,
                             "images_s": r["triples_s"], "p50_ms": r["p50_ms"]})
    return {"rows": rows}
