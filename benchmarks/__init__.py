"""editguard.benchmarks: ``editguard bench``, how fast each hot path is, as tables and JSON (never timed tests).

Its sections, each measured in one run so the ratios compare like with like:

- **inprocess**: torch eager vs onnxruntime (FP32 and FP16) on the same model, triples/s and
  batch-latency percentiles per batch size. A frozen prompt tower runs for every triple in both
  ("every prompt encoded"), and again on Zipf-repeated prompts, torch with its embedding cache and
  onnxruntime behind the served LRU; plus the in-process *pipeline*: the repository's
  newest version run by :class:`~editguard.serving.served.ServedVersion` from encoded bytes
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
  without Pillow's JPEG draft (downscale-on-decode), and JPEG through the served client model's
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

from .config import BenchConfig
from .report import ratios, run_bench, to_markdown

__all__ = ["BenchConfig", "run_bench", "ratios", "to_markdown"]
