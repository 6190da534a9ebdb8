"""``editguard bench``: how fast each hot path is, as tables and JSON (never timed tests).

Its sections, each measured in one run so the ratios compare like with like:

- **inprocess**: torch eager vs onnxruntime (FP32 and FP16) on the same model, triples/s and
  batch-latency percentiles per batch size. A frozen prompt tower runs for every triple in both
  ("every prompt encoded"), and again on Zipf-repeated prompts, torch with its embedding cache and
  onnxruntime behind the served LRU; plus the in-process *pipeline*: the repository's
  newest version run by :class:`~editguard.model.served.ServedVersion` from encoded bytes
  (decode, resize, tokenize, the checked onnxruntime call, thresholds), the server's own code;
- **served**: a closed-loop concurrency sweep through the real client against a real Triton,
  with encoded images as clients send them: throughput, p50/p95/p99, the mean executed batch
  size and the queue vs compute split from Triton's statistics API;
- **uploads**: what an inpainting backend pays per triple at upload sizes (256, 512, 1024 px
  photo-like images) as PIL images (the pixels path: letterboxed in the client, uint8 sent),
  PNG bytes and JPEG bytes (decoded by the server): c1 latency, c16 throughput, and the
  client's own CPU time per triple;
- **graphs**: c1 and c16 for the three serving graphs of one repository (Triton's
  ``--model-config-name``): inline (the default), the ensemble (prepare -> prompt tower ->
  classifier -> verdicts, the production graph, here over the Python stand-ins), each
  with every prompt new and with Zipf-repeated prompts; Triton's queue, compute and response
  cache per model beside the client's latency;
- **preprocess**: decode + resize throughput of 512 and 1024 px JPEG, PNG and WebP, with and
  without Pillow's JPEG draft (downscale-on-decode), and JPEG through the served front's
  ``decode_device`` decoder (torchvision on the CPU, and nvJPEG where torch sees a GPU);
- **presets** (not in the default set): each production preset's exact architecture (``small`` and
  ``base`` from stand-in weights folders, random-init towers where the hub would give pretrained
  ones; ``cpu-lite0`` as it ships), untrained, exported and run at its own resolution: torch
  eager and onnxruntime at batch 1 and 8, the served version in-process from encoded bytes, and
  through a real Triton at concurrency 1 and 4. The baseline a GPU run compares with;
- **ray** (not in the default set): ``editguard score`` on one manifest of 256 px triples with
  the local engine, then with ``--engine ray`` at 1, 2, ... workers (one CPU each) on a Ray
  cluster started once beforehand; whole-run triples/s, actor start-up included.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any
from pathlib import Path

import numpy as np

__all__ = ["BenchConfig", "run_bench"]


@dataclass
class BenchConfig:
    model_dir: str | None  # a trained model dir (not needed by the presets and preprocess sections)
    repository: str | None  # an exported repository of the same model (served)
    out: str = "bench"  # folder for bench.md and bench.json
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 32, 64])
    seconds: float = 5.0  # per measurement point
    server: str | None = None  # a running Triton (gRPC URL); default: start one on the repository
    sections: list[str] = field(default_factory=lambda: ["inprocess", "served", "uploads", "graphs", "preprocess"])
    upload_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024])
    presets: list[str] = field(default_factory=lambda: ["small", "base", "cpu-lite0"])  # section presets
    ray_items: int = 3000  # triples scored per ray-section run
    ray_workers: list[int] = field(default_factory=lambda: [1, 2])
    connection: Any = None  # with ``server``: its TLS, headers and admin key (statistics need the key)


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in (50, 95, 99)}


def _timed(fn, seconds: float, items: int) -> dict:
    fn()  # warm-up
    lat, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(lat) < 5:
        t = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t) * 1e3)
    return {"triples_s": round(items * len(lat) / (time.perf_counter() - t0), 1), **_pct(lat)}


def _tile(batch: dict[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    reps = -(-b // len(next(iter(batch.values()))))
    return {k: np.ascontiguousarray(np.concatenate([v] * reps)[:b]) for k, v in batch.items()}


def encoded_triples(n: int, size: int, workdir: Path) -> list[dict]:
    """Client-side triples: PNG bytes of synthetic scenes at ``size`` px, with prompts."""
    from .training.synth import generate

    manifest = generate(workdir / f"synth{size}", n, seed=99, image_size=size, progress=False)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [{"input": (manifest.parent / r["input_image"]).read_bytes(), "prompt": r["prompt"],
             "output": (manifest.parent / r["output_image"]).read_bytes()} for r in rows]


# a few thousand distinct prompts, as a busy service sees them: ZIPF_S over PROMPT_POOL ranks
PROMPT_POOL, ZIPF_S = 5000, 1.0
_VERBS = ["make", "turn", "change", "give", "replace", "add", "remove", "paint", "put", "swap"]
_THINGS = ["the sky", "their hair", "the car", "the dress", "the wall", "her shirt", "his jacket", "the dog", "the sign",
           "the background", "the table", "their face", "the window", "the hat", "the flowers", "the street",
           "the shoes", "the sofa", "the lake", "the cake", "the door", "the tree", "the bike", "the lamp", "the roof"]
_INTO = ["pink", "into a beach", "at night", "in watercolor", "more vivid", "with snow", "older", "into a cartoon",
         "with neon lights", "into gold", "blue", "with sunglasses", "into marble", "in autumn", "with a smile",
         "into a sketch", "with fog", "into a painting", "red", "with stars"]


def prompt_pool(n: int = PROMPT_POOL) -> list[str]:
    """``n`` distinct edit prompts (verb, thing, result), in a fixed order: rank 1 is the most frequent."""
    pool = [f"{v} {t} {i}" for i in _INTO for t in _THINGS for v in _VERBS]
    return pool[:n]


def prompt_stream(k: int, repeated: bool, seed: int = 0) -> list[str]:
    """``k`` prompts as requests bring them: ``repeated`` draws ranks from Zipf(ZIPF_S) over the pool;
    otherwise every prompt is new (a request number in front; streams of other seeds share none)."""
    pool = prompt_pool()
    if not repeated:
        return [f"{seed * k + j} {pool[j % len(pool)]}" for j in range(k)]
    w = 1.0 / np.arange(1, len(pool) + 1) ** ZIPF_S
    ranks = np.random.default_rng(seed).choice(len(pool), size=k, p=w / w.sum())
    return [pool[r] for r in ranks]


def run_graphs(classifier, prompt, batch: dict[str, np.ndarray]) -> None:
    """One onnxruntime pass over ``batch``: the prompt graph into the classifier graph where the prompt
    tower is its own (``prompt`` a session), else the classifier alone (``prompt`` None)."""
    from .export.onnx_export import PROMPT_OUTPUT

    feed = dict(batch)
    if prompt is not None:
        feed[PROMPT_OUTPUT] = prompt.run(None, {k: batch[k] for k in ("input_ids", "attention_mask")})[0]
    classifier.run(None, {i.name: feed[i.name] for i in classifier.get_inputs()})


def bench_inprocess(cfg: BenchConfig, triples: list[dict], workdir: Path) -> dict:
    """torch eager and onnxruntime on the same work. With a frozen prompt tower, "every prompt encoded"
    rows run it for every triple in both (torch's embedding cache emptied before each call); the
    "zipf prompts" rows feed each call the next prompts of a Zipf stream, torch with its own cache and
    onnxruntime with the served LRU (:class:`~editguard.model.served.PromptEmbeddings`)."""
    import torch

    from .export.onnx_export import PROMPT_OUTPUT, convert_fp16, export_onnx, export_prompt_onnx, ort_session, \
        sample_inputs
    from .model.model_dir import load_model_dir
    from .model.served import PromptEmbeddings, ServedVersion

    net, pre = load_model_dir(cfg.model_dir)
    samples = sample_inputs(cfg.model_dir, pre)
    split = net.split_prompt
    graphs = {}
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

    def torch_run(tensors, keep_cache: bool):
        if split and not keep_cache:
            net.text._cache.clear()
        with torch.inference_mode():
            net(**tensors)

    every = " (every prompt encoded)" if split else ""
    rows = []
    for b in cfg.batch_sizes:
        batch = _tile(samples, b)
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        rows.append({"runtime": "torch eager fp32" + every, "batch": b,
                     **_timed(lambda: torch_run(tensors, False), cfg.seconds, b)})
        for precision, sessions in graphs.items():
            rows.append({"runtime": f"onnxruntime {precision}" + every, "batch": b,
                         **_timed(lambda: run_graphs(*sessions, batch), cfg.seconds, b)})
    b = max(cfg.batch_sizes)
    if split:  # repeated prompts: each call takes the next b prompts of one Zipf stream
        ids, att = pre.tokens(prompt_stream(200 * b, repeated=True))
        images = {k: v for k, v in _tile(samples, b).items() if k not in ("input_ids", "attention_mask")}
        lru = PromptEmbeddings(workdir / "fp32" / "prompt", size=4096)
        clf32 = graphs["fp32"][0]
        at = {"torch": 0, "ort": 0}

        def chunk(who: str):
            k = at[who] % (len(ids) // b)
            at[who] += 1
            return ids[k * b:(k + 1) * b], att[k * b:(k + 1) * b]

        def torch_zipf():
            i, a = chunk("torch")
            torch_run({**{k: torch.from_numpy(v) for k, v in images.items()}, "input_ids": torch.from_numpy(i),
                       "attention_mask": torch.from_numpy(a)}, True)

        def ort_zipf():
            i, a = chunk("ort")
            feed = {**images, PROMPT_OUTPUT: lru(i, a)}
            clf32.run(None, {x.name: feed[x.name] for x in clf32.get_inputs()})

        net.text._cache.clear()
        rows.append({"runtime": "torch eager fp32 (zipf prompts, its cache)", "batch": b,
                     **_timed(torch_zipf, cfg.seconds, b)})
        rows.append({"runtime": "onnxruntime fp32 (zipf prompts, LRU)", "batch": b,
                     **_timed(ort_zipf, cfg.seconds, b),
                     "prompt_hit_rate": round(lru.hits / max(lru.hits + lru.misses, 1), 3)})
    served = ServedVersion.open(cfg.repository, threads=0)  # the exported version, as the server runs it
    items = [triples[i % len(triples)] for i in range(b)]

    def pipeline():
        served.flags(served.probabilities([served.prepare(t["input"], t["prompt"], t["output"]) for t in items]))

    rows.append({"runtime": "pipeline: the served version in-process", "batch": b, **_timed(pipeline, cfg.seconds, b)})
    return {"rows": rows, "prompts": f"zipf: Zipf(s={ZIPF_S}) over {PROMPT_POOL} distinct prompts, LRU of 4096"}


def _stats(client, model: str, headers: dict) -> dict[str, float]:
    s = client.get_inference_statistics(model, headers=headers, as_json=True)["model_stats"]
    tot = {"inferences": 0, "executions": 0, "queue_ns": 0, "compute_ns": 0, "requests": 0, "cache_hits": 0}
    for m in s:
        st = m["inference_stats"]
        tot["inferences"] += int(m.get("inference_count", 0))
        tot["executions"] += int(m.get("execution_count", 0))
        tot["requests"] += int(st.get("success", {}).get("count", 0))
        tot["queue_ns"] += int(st.get("queue", {}).get("ns", 0))
        tot["cache_hits"] += int(st.get("cache_hit", {}).get("count", 0))
        tot["compute_ns"] += sum(int(st.get(k, {}).get("ns", 0)) for k in ("compute_input", "compute_infer",
                                                                            "compute_output"))
    return tot


def _closed_loop(fn, calls: list[tuple], c: int, seconds: float) -> tuple[list[float], float]:
    """``c`` threads call ``fn(*calls[i])`` back to back for ``seconds``: latencies (ms), wall (s)."""
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(k: int):
        i, mine = k, []
        while time.perf_counter() < stop or not mine:
            t0 = time.perf_counter()
            fn(*calls[i % len(calls)])
            mine.append((time.perf_counter() - t0) * 1e3)
            i += c
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(c)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat, time.perf_counter() - t0


_SHORT = {"editguard": "front", "editguard_classifier": "classifier", "editguard_prompt": "prompt",
          "editguard_prepare": "prepare", "editguard_verdicts": "verdicts"}


def _split(before: dict, after: dict) -> dict:
    """Per model that ran: mean executed batch, queue and compute per request (ms), from two statistics
    snapshots; for the prompt tower, the share of requests Triton's response cache answered."""
    row = {}
    for m in after:
        d = {k: after[m][k] - before[m][k] for k in after[m]}
        if not d["requests"] and m != "editguard":
            continue
        short = _SHORT.get(m, m)
        row[f"{short}_mean_batch"] = round(d["inferences"] / max(d["executions"], 1), 2)
        row[f"{short}_queue_ms"] = round(d["queue_ns"] / max(d["requests"], 1) / 1e6, 3)
        row[f"{short}_compute_ms"] = round(d["compute_ns"] / max(d["requests"], 1) / 1e6, 3)
        if d["cache_hits"]:
            row[f"{short}_cache_hit_rate"] = round(d["cache_hits"] / max(d["requests"], 1), 3)
    return row


def _sweep_point(served: tuple, triples: list[dict], c: int, seconds: float, prompts: list[str] | None = None,
                 warm: int = 0) -> dict:
    """Closed loop at concurrency ``c`` through the client; ``prompts`` replace the triples' own, in order,
    the first ``warm`` of them sent before the measurement (so caches reach their steady state)."""
    from .clients import EditGuardClient

    url, conn = served
    calls = [(t["input"], t["prompt"], t["output"]) for t in triples] if prompts is None else \
        [(triples[i % len(triples)]["input"], p, triples[i % len(triples)]["output"]) for i, p in enumerate(prompts)]
    with EditGuardClient(url, timeout=60, **conn.client_options()) as guard, conn.grpc_client(url) as stats_client:
        if warm:
            list(guard.classify_many([(str(i), *call) for i, call in enumerate(calls[:warm])], concurrency=16))
        guard.classify(*calls[-1])  # warm-up
        admin = conn.admin_headers()
        models = sorted({m.name for m in stats_client.get_model_repository_index(headers=admin).models
                         if m.name in _SHORT and m.state == "READY"})
        before = {m: _stats(stats_client, m, admin) for m in models}
        lat, wall = _closed_loop(guard.classify, calls[warm:], c, seconds)
        after = {m: _stats(stats_client, m, admin) for m in before}
    return {"concurrency": c, "triples_s": round(len(lat) / wall, 1), **_pct(lat), **_split(before, after)}


class _Served:
    """A Triton on ``repository`` for one section (or the running one at ``url``); entered, it gives
    ``(url, connection)``."""

    def __init__(self, repository: str, url: str | None = None, connection=None, graph: str = ""):
        from .connection import Connection

        self.repository, self.url, self.server, self.graph = repository, url, None, graph
        self.connection = connection or Connection()

    def __enter__(self) -> tuple:
        if self.url is None:
            from .export.triton import TritonServer, free_port

            self.server = TritonServer(self.repository, grpc_port=free_port(), http_port=free_port(),
                                       metrics_port=free_port(), graph=self.graph).start()
            self.url, self.connection = self.server.grpc_url, self.server.connection()
        return self.url, self.connection

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()


def bench_served(cfg: BenchConfig, triples: list[dict]) -> dict:
    with _Served(cfg.repository, cfg.server, cfg.connection) as served:
        rows = [_sweep_point(served, triples, c, cfg.seconds) for c in cfg.concurrency]
    return {"rows": rows, "server": cfg.server or "started by bench"}


def bench_precheck(cfg: BenchConfig, triples: list[dict]) -> dict:
    """The pre-check beside the triple model on the same 256 px JPEG triples, through the same client:
    c1 latency and c16 throughput. Needs a repository with an editguard_precheck version."""
    from .clients import EditGuardClient
    from .model.served import PRECHECK, versions

    if not cfg.server and not versions(cfg.repository, PRECHECK):
        raise ValueError(f"section precheck: {cfg.repository} has no {PRECHECK} version; export a model trained "
                         "with --ablation precheck into it")
    rows = []
    with _Served(cfg.repository, cfg.server, cfg.connection) as (url, conn), \
            EditGuardClient(url, timeout=60, **conn.client_options()) as guard:
        calls = {"editguard (after generation)": (guard.classify, [(t["input"], t["prompt"], t["output"])
                                                                   for t in triples]),
                 "editguard_precheck (before)": (guard.precheck, [(t["input"], t["prompt"]) for t in triples])}
        for name, (fn, args) in calls.items():
            fn(*args[0])  # warm-up
            lat1, _ = _closed_loop(fn, args, 1, cfg.seconds)
            lat16, wall = _closed_loop(fn, args, 16, cfg.seconds)
            rows.append({"model": name, "c1_p50_ms": _pct(lat1)["p50_ms"], "c1_p95_ms": _pct(lat1)["p95_ms"],
                         "c16_triples_s": round(len(lat16) / wall, 1)})
    return {"rows": rows}


def upload_images(size: int, n: int = 4, seed: int = 0) -> list:
    """``n`` photo-like PIL images of ``size`` px: scenes with uneven light, colour cast and sensor noise,
    which compress like photos (a 1024 px PNG is about 1.7 MB), not like flat renders."""
    from .training.synth.realism import photo_finish
    from .training.synth.scene import IID_STYLES, random_scene, render

    rng = np.random.default_rng(seed)
    return [photo_finish(render(random_scene(rng, IID_STYLES), size), seed + i) for i in range(n)]


def _encode(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


UPLOAD_FORMS = ("PIL images", "PNG bytes", "JPEG bytes")


def upload_calls(size: int, form: str) -> list[tuple]:
    """classify() arguments at ``size`` px in one of UPLOAD_FORMS (input, prompt, output, mask)."""
    imgs = upload_images(size)
    masks = [_box_mask(size, k) for k in range(len(imgs))]
    conv = {"PIL images": lambda im: im, "PNG bytes": lambda im: _encode(im, "PNG"),
            "JPEG bytes": lambda im: _encode(im, "JPEG")}[form]
    mconv = (lambda m: m) if form == "PIL images" else (lambda m: _encode(m, "PNG"))
    return [(conv(imgs[i]), "make the sky look like sunset", conv(imgs[(i + 1) % len(imgs)]), mconv(masks[i]))
            for i in range(len(imgs))]


def _box_mask(size: int, k: int):
    """A user-drawn box mask (mode L) over a quarter of the image."""
    from PIL import Image, ImageDraw

    m = Image.new("L", (size, size), 0)
    o = size // 8 * (1 + k % 3)
    ImageDraw.Draw(m).rectangle([o, o, o + size // 2, o + size // 2], fill=255)
    return m


def bench_uploads(cfg: BenchConfig) -> dict:
    """c1 latency, c16 throughput and client CPU per triple, per upload size and form (masks included)."""
    from .clients import EditGuardClient

    rows = []
    with _Served(cfg.repository, cfg.server, cfg.connection) as (url, conn), \
            EditGuardClient(url, timeout=60, **conn.client_options()) as guard:
        for size in cfg.upload_sizes:
            for form in UPLOAD_FORMS:
                calls = upload_calls(size, form)
                guard.classify(*calls[0])  # warm-up (and the pixels spec)
                cpu0 = time.process_time()
                lat1, _ = _closed_loop(guard.classify, calls, 1, cfg.seconds)
                cpu = (time.process_time() - cpu0) / len(lat1) * 1e3
                lat16, wall = _closed_loop(guard.classify, calls, 16, cfg.seconds)
                sent = sum(len(x) for x in calls[0] if isinstance(x, bytes))
                rows.append({"size": size, "form": form, "kb_sent": round(sent / 1024) if sent else "-",
                             "c1_p50_ms": _pct(lat1)["p50_ms"], "c1_p95_ms": _pct(lat1)["p95_ms"],
                             "c16_triples_s": round(len(lat16) / wall, 1), "client_cpu_ms": round(cpu, 2)})
    return {"rows": rows}


GRAPHS = {"inline": "inline (default)", "ensemble": "ensemble"}
GRAPH_WARM = 1000  # Zipf requests sent before each repeated-prompt measurement


def bench_graphs(cfg: BenchConfig, triples: list[dict]) -> dict:
    """c1 and c16 on 256 px PNG bytes for each serving graph of one repository (Triton's
    --model-config-name), with every prompt new and with Zipf-repeated prompts; Triton's per-model
    queue, compute and cache split beside the client's latency."""
    rows = []
    for graph, name in GRAPHS.items():
        with _Served(cfg.repository, graph=graph) as served:
            for repeated in (False, True):
                for c in (1, 16):
                    prompts = prompt_stream(20000, repeated, seed=c)
                    rows.append({"graph": name, "prompts": "zipf" if repeated else "unique",
                                 **_sweep_point(served, triples, c, cfg.seconds, prompts,
                                                GRAPH_WARM if repeated else 0)})
    return {"rows": rows, "prompts": f"zipf: Zipf(s={ZIPF_S}) over {PROMPT_POOL} distinct prompts, the first "
                                      f"{GRAPH_WARM} of the stream sent before measuring; unique: every request a "
                                      "new prompt"}


def bench_preprocess(cfg: BenchConfig, workdir: Path) -> dict:
    from .model.config import ModelConfig
    from .model.preprocess import Preprocessor

    base = ModelConfig.load(Path(cfg.model_dir) / "config.json").preprocess
    decoders = [("pillow", Preprocessor(replace(base, jpeg_draft=False), tokenizer=None)),
                ("pillow draft", Preprocessor(replace(base, jpeg_draft=True), tokenizer=None))]
    try:  # the served front's decode_device: torchvision, on the GPU (nvJPEG) where there is one
        import torch

        from .model.torch_decode import TorchDecoder

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        decoders += [(f"torchvision {d}", TorchDecoder(base, None, d)) for d in devices]
    except (ImportError, RuntimeError):
        pass
    rows = []
    for size in (512, 1024):
        img = upload_images(size, 1)[0]
        for fmt in ("JPEG", "PNG", "WEBP"):
            data = _encode(img, fmt)
            # only JPEG differs by decoder: the others take Pillow's path whatever the front is set to
            for name, pre in decoders if fmt == "JPEG" else decoders[:1]:
                r = _timed(lambda: pre.image(data), cfg.seconds / 2, 1)
                rows.append({"format": fmt, "size": size, "bytes": len(data), "decoder": name,
                             "images_s": r["triples_s"], "p50_ms": r["p50_ms"]})
    return {"rows": rows}


def bench_ray(cfg: BenchConfig, workdir: Path) -> dict:
    import ray

    from .clients.ray_engine import start_ray
    from .clients.score import ScoreConfig, score
    from .training.synth import generate

    manifest = generate(workdir / "ray", cfg.ray_items, seed=98, image_size=256, progress=False)
    started = start_ray()  # start-up is paid once here, as a long-lived cluster would have paid it
    rows = []
    try:
        runs = [("local", None)] + [("ray", w) for w in cfg.ray_workers]
        for engine, workers in runs:
            out = workdir / f"scores-{engine}-{workers}"
            s = score(ScoreConfig(manifest=str(manifest), out=str(out), repository=cfg.repository, engine=engine,
                                  workers=workers, progress=False))
            rows.append({"engine": engine, "workers": workers or "-", "triples": s.scored, "seconds": s.seconds,
                         "triples_s": round(s.scored / s.seconds, 1)})
    finally:
        if started:
            ray.shutdown()
    return {"rows": rows, "cluster_cpus": os.cpu_count()}


def machine() -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "timm", "transformers", "tritonclient", "nvidia-pytriton",
                "pillow", "numpy", "ray"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "versions": versions,
            "command": "editguard " + " ".join(sys.argv[1:]) if sys.argv else ""}


def preset_version(preset: str, workdir: Path) -> tuple:
    """An untrained model of ``preset``'s exact architecture (a stand-in weights folder where its towers
    come from the hub), exported as version 1 of a repository under ``workdir``: ``(model dir, repository,
    net, preprocessor)``, the net in eval mode."""
    from .export.repository import ExportConfig, export_version
    from .model.config import preset_config
    from .model.model_dir import create_model, save_model_dir
    from .model.stand_ins import write_stand_in
    from .model.taxonomy import default_taxonomy
    from .model.weight_pack import hub_files, use_pack

    cfg = preset_config(preset)
    if hub_files(cfg):
        cfg = use_pack(cfg, write_stand_in(cfg, workdir / "weights"))
    net, pre = create_model(cfg, workdir / "build", prompts=["make the sky pink"])
    model = save_model_dir(net.eval(), workdir / "model", tokenizer_dir=workdir / "build" / "tokenizer",
                           taxonomy=default_taxonomy())
    export_version(ExportConfig(model_dir=str(model), repository=str(workdir / "repo"), max_batch=8))
    return model, workdir / "repo", net, pre


def bench_presets(cfg: BenchConfig, triples: list[dict], workdir: Path) -> dict:
    import torch

    from .clients import EditGuardClient
    from .export.onnx_export import FP16_TOL, convert_fp16, ort_session, parity, sample_inputs
    from .model.served import CLASSIFIER, ServedVersion

    rows = []
    for preset in cfg.presets:
        model, repo, net, pre = preset_version(preset, workdir / preset)
        onnx_path = repo / CLASSIFIER / "1" / "model.onnx"
        sess = ort_session(onnx_path)
        served = ServedVersion.open(str(repo), threads=0)
        p32 = json.loads((onnx_path.parent / "export.json").read_text())["parity_fp32"]
        p16 = parity(net, convert_fp16(onnx_path, workdir / preset / "model.fp16.onnx"), sample_inputs(model, pre),
                     FP16_TOL)
        row = {"preset": preset, "image_size": pre.cfg.image_size,
               "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 1),
               "parity fp32 / fp16": f"{p32['max_abs_prob']:.1e} / {p16.max_abs_prob:.1e}",
               "train step b8 s": round(_train_step(net, collate_bytes(pre, triples[:8]), cfg.seconds), 2)}
        for b in (1, 8):
            batch = collate_bytes(pre, [triples[i % len(triples)] for i in range(b)])
            tensors = {k: torch.from_numpy(v) for k, v in batch.items()}

            def run_torch():
                with torch.inference_mode():
                    net(**tensors)

            feed = {i.name: batch[i.name] for i in sess.get_inputs()}
            row[f"torch b{b} triples/s"] = _timed(run_torch, cfg.seconds, b)["triples_s"]
            row[f"ORT b{b} triples/s"] = _timed(lambda: sess.run(None, feed), cfg.seconds, b)["triples_s"]
        items = triples[:8]
        row["pipeline b8 triples/s"] = _timed(lambda: served.flags(served.probabilities(
            [served.prepare(t["input"], t["prompt"], t["output"]) for t in items])), cfg.seconds, 8)["triples_s"]
        calls = [(t["input"], t["prompt"], t["output"]) for t in triples]
        with _Served(str(repo)) as (url, conn), EditGuardClient(url, timeout=120, **conn.client_options()) as guard:
            guard.classify(*calls[0])  # warm-up
            lat1, _ = _closed_loop(guard.classify, calls, 1, cfg.seconds)
            lat4, wall = _closed_loop(guard.classify, calls, 4, cfg.seconds)
        row["served c1 p50 ms"] = _pct(lat1)["p50_ms"]
        row["served c4 triples/s"] = round(len(lat4) / wall, 1)
        rows.append(row)
    return {"rows": rows, "note": "untrained models of the presets' exact architectures; small and base from "
                                  "stand-in weights folders (random-init towers)"}


def _train_step(net, batch: dict, seconds: float) -> float:
    """Median seconds of one training step (forward, BCE loss, backward, AdamW) on ``batch``; leaves
    ``net`` in eval mode."""
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    target = torch.zeros(len(batch["input_ids"]), len(net.cfg.labels))
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    net.train()

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(net(**tensors), target).backward()
        opt.step()

    took = _timed(step, seconds, len(target))["p50_ms"] / 1e3
    net.eval()
    return took


def collate_bytes(pre, triples: list[dict]) -> dict:
    """A model batch from encoded triples, through the model's own preprocessing."""
    from .model.preprocess import collate

    return collate([pre.triple(t["input"], t["prompt"], t["output"]) for t in triples])


def run_bench(cfg: BenchConfig) -> dict:
    """Run the chosen sections; write ``bench.json`` and ``bench.md`` under ``cfg.out``; return the results."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(cfg).items() if k != "connection"}  # the admin key stays out of bench.json
    result = {"machine": machine(), "config": config}
    with tempfile.TemporaryDirectory(prefix="editguard-bench-") as tmp:
        work = Path(tmp)
        triples = encoded_triples(64, 256, work) \
            if {"inprocess", "served", "graphs", "precheck", "presets"} & set(cfg.sections) else []
        if "inprocess" in cfg.sections:
            result["inprocess"] = bench_inprocess(cfg, triples, work)
        if "served" in cfg.sections:
            result["served"] = bench_served(cfg, triples)
        if "uploads" in cfg.sections:
            result["uploads"] = bench_uploads(cfg)
        if "graphs" in cfg.sections:
            result["graphs"] = bench_graphs(cfg, triples)
        if "precheck" in cfg.sections:
            result["precheck"] = bench_precheck(cfg, triples)
        if "preprocess" in cfg.sections:
            result["preprocess"] = bench_preprocess(cfg, work)
        if "presets" in cfg.sections:
            result["presets"] = bench_presets(cfg, triples, work)
        if "ray" in cfg.sections:
            result["ray"] = bench_ray(cfg, work)
    result["ratios"] = ratios(result)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    (out / "bench.md").write_text(to_markdown(result))
    return result


def ratios(r: dict) -> dict:
    """The headline ratios, measured in this one run."""
    out = {}
    if "inprocess" in r:
        rows = r["inprocess"]["rows"]
        bmax = max(x["batch"] for x in rows)
        best = lambda name: max((x["triples_s"] for x in rows if x["runtime"].split(" (")[0] == name
                                 and "zipf" not in x["runtime"] and x["batch"] == bmax), default=float("nan"))
        out["ort_fp32_over_torch_at_max_batch"] = round(best("onnxruntime fp32") / best("torch eager fp32"), 2)
        out["ort_fp16_over_fp32_at_max_batch"] = round(best("onnxruntime fp16") / best("onnxruntime fp32"), 2)
        zipf = {x["runtime"].split()[0]: x["triples_s"] for x in rows if "zipf" in x["runtime"]}
        if len(zipf) == 2:  # a frozen prompt tower, on repeated prompts: the LRU against torch's own cache
            out[f"ort_fp32_over_torch_zipf_b{bmax}"] = round(zipf["onnxruntime"] / zipf["torch"], 2)
        pipe = best("pipeline: the served version in-process")
        if "served" in r:
            served = max(x["triples_s"] for x in r["served"]["rows"])
            out["served_best_over_inprocess_pipeline"] = round(served / pipe, 2)
            out["served_best_over_inprocess_ort_model_only"] = round(served / best("onnxruntime fp32"), 2)
    if "uploads" in r:
        u = {(x["size"], x["form"]): x for x in r["uploads"]["rows"]}
        small, big = min(x[0] for x in u), max(x[0] for x in u)
        ref = u.get((small, "JPEG bytes"))
        if ref:
            for form in ("PIL images", "PNG bytes"):
                if (big, form) in u:
                    tag = form.split()[0].lower()
                    out[f"upload_{big}_{tag}_c1_over_{small}_jpeg_c1"] = round(u[big, form]["c1_p50_ms"] / ref["c1_p50_ms"], 2)
                    out[f"upload_{big}_{tag}_c16_over_{small}_jpeg_c16"] = round(
                        u[big, form]["c16_triples_s"] / ref["c16_triples_s"], 2)
            for form in ("JPEG bytes", "PNG bytes"):
                if (small, "PIL images") in u and (small, form) in u:
                    out[f"upload_{small}_pixels_c1_over_{form.split()[0].lower()}_bytes_c1"] = round(
                        u[small, "PIL images"]["c1_p50_ms"] / u[small, form]["c1_p50_ms"], 2)
    if "precheck" in r:
        rows = {x["model"].split()[0]: x for x in r["precheck"]["rows"]}
        pre, post = rows.get("editguard_precheck"), rows.get("editguard")
        if pre and post:
            out["precheck_c1_over_triple_c1"] = round(pre["c1_p50_ms"] / post["c1_p50_ms"], 2)
            out["precheck_c16_over_triple_c16"] = round(pre["c16_triples_s"] / post["c16_triples_s"], 2)
    if "graphs" in r:
        g = {(x["graph"].split()[0], x["prompts"], x["concurrency"]): x for x in r["graphs"]["rows"]}
        for c in (1, 16):
            if ("inline", "zipf", c) in g and ("ensemble", "zipf", c) in g:
                out[f"graph_ensemble_over_inline_zipf_c{c}_throughput"] = round(
                    g["ensemble", "zipf", c]["triples_s"] / g["inline", "zipf", c]["triples_s"], 2)
    for row in r.get("presets", {}).get("rows", []):
        name = row["preset"]
        out[f"{name}_ort_over_torch_b8"] = round(row["ORT b8 triples/s"] / row["torch b8 triples/s"], 2)
        out[f"{name}_served_c4_over_inprocess_pipeline_b8"] = round(row["served c4 triples/s"]
                                                                    / row["pipeline b8 triples/s"], 2)
    if "ray" in r:
        rate = {x["workers"]: x["triples_s"] for x in r["ray"]["rows"] if x["engine"] == "ray"}
        for w in sorted(k for k in rate if k != 1):
            if 1 in rate:
                out[f"ray_{w}_workers_over_1"] = round(rate[w] / rate[1], 2)
        local = next((x["triples_s"] for x in r["ray"]["rows"] if x["engine"] == "local"), None)
        if local and rate:
            out["ray_best_over_local_engine"] = round(max(rate.values()) / local, 2)
    if "preprocess" in r:
        rows = r["preprocess"]["rows"]
        for size in (512, 1024):
            rate = {x["decoder"]: x["images_s"] for x in rows if x["format"] == "JPEG" and x["size"] == size}
            for name, key in (("pillow draft", "draft"), ("torchvision cpu", "torchvision_cpu"),
                              ("torchvision cuda", "nvjpeg")):
                if rate.get("pillow") and rate.get(name):
                    out[f"jpeg{size}_{key}_over_pillow"] = round(rate[name] / rate["pillow"], 2)
    return out


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(x.get(k, "")) for k in keys) + " |" for x in rows]
    return "\n".join(lines)


def to_markdown(r: dict) -> str:
    m = r["machine"]
    parts = [f"machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), f"command: `{m['command']}`"]
    for section in ("inprocess", "served", "uploads", "graphs", "precheck", "presets", "preprocess", "ray"):
        if section in r:
            parts += [f"\n### {section}\n", _table(r[section]["rows"])]
    parts += ["\n### ratios (this run)\n", _table([{"ratio": k, "value": v} for k, v in r["ratios"].items()])]
    return "\n".join(parts) + "\n"
