"""TensorRT plan from the exported ONNX, through the TensorRT Python API (TensorRT 10).

An optimization profile covers batch 1..max_batch (opt = the preferred batch) and, for the prompt
graph, 1..prompt_windows windows; FP16 is on where the GPU has it, and a timing cache beside the
repository makes rebuilds fast. The plan only runs on the GPU model and TensorRT version
that built it. In NVIDIA's container the equivalent command is in the README
(`trtexec --onnx=... --minShapes/--optShapes/--maxShapes ... --fp16 --timingCacheFile=...`).
"""

from __future__ import annotations

import logging
from pathlib import Path

_logger = logging.getLogger(__name__)

__all__ = ["build_plan", "tensorrt_available"]


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(
            "building a TensorRT plan needs the tensorrt package and an NVIDIA GPU: pip install 'editguard[tensorrt]' "
            "(its wheels come from NVIDIA's index), or run `editguard export --runtime tensorrt` inside NVIDIA's "
            "Triton or TensorRT container"
        ) from e
    return trt


def build_plan(onnx_path: str | Path, plan_path: str | Path, *, max_batch: int, opt_batch: int | None = None,
               fp16: bool = True, timing_cache: str | Path | None = None, workspace_gib: float = 4.0,
               item_max: dict[str, tuple[int, ...]] | None = None) -> Path:
    """Build ``plan_path`` from ``onnx_path``; returns the plan's path. Raises RuntimeError on parse/build errors.

    ``item_max``: for an input with dynamic dims past the batch (the prompt graph's window axis), its largest
    per-item shape; the profile spans 1 up to it on those dims, optimised for the largest (the ensemble
    sends every window)."""
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = opt_batch or max(1, min(max_batch, 32))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        item = tuple(inp.shape)[1:]
        top = item
        if -1 in item:
            top = tuple((item_max or {}).get(inp.name, ()))
            if len(top) != len(item):
                raise ValueError(f"{onnx_path}: input '{inp.name}' has dynamic dims {list(item)}; give its largest "
                                 f"item shape in item_max")
        low = tuple(1 if d == -1 else d for d in item)
        profile.set_shape(inp.name, (1, *low), (opt, *top), (max_batch, *top))
    config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    plan_path = Path(plan_path)
    plan_path.write_bytes(bytes(serialized))
    if timing_cache:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    _logger.info("TensorRT plan %s (batch 1..%d, opt %d, fp16=%s)", plan_path, max_batch, opt, fp16)
    return plan_path
