"""Every ``config.pbtxt`` of a repository checked against the graphs it serves (``editguard check-repository``).

A Triton config that disagrees with its model fails late: a native backend refuses to load it, or
an ensemble refuses requests. This reads every config (``config.pbtxt`` and the variants under
``configs/`` that ``--model-config-name`` picks) with Triton's own protobuf schema and compares:

- a network's config (``backend: "python"`` over ``model.onnx``, ``onnxruntime_onnx``, or
  ``tensorrt_plan``, whose plan is built from the same version's ``model.onnx``) with each version's
  ONNX graph: input and output names, data types, dims (``-1`` matches any size; native backends
  need exact ones), and ``max_batch_size`` against the graph's batch axis;
- an ensemble's steps with the configs Triton would load under the same config name: each step's
  model exists, every input it needs is mapped, every name it maps exists on that model, each
  mapped tensor comes from the ensemble's inputs or an earlier step, and the ensemble's outputs
  are all produced.

Every mismatch is one line naming the file, the tensor, and both sides.
"""

from __future__ import annotations

from pathlib import Path

from ..model.pbtxt import read_config

__all__ = ["graph_tensors", "check_repository", "ONNX_TO_TRITON"]

# ONNX TensorProto element types -> Triton data type names
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64",
                  8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}


def graph_tensors(onnx_path: str | Path, cache: dict | None = None) -> dict[str, dict[str, tuple[str, list[int]]]]:
    """``{"input": {name: (triton type, dims)}, "output": {...}}`` of an ONNX graph, dims including the
    batch axis, ``-1`` for a symbolic one. Reads the graph's declarations only (no weights are checked).
    ``cache``: a dict by path, shared by callers that read the same files (a graph is read whole)."""
    if cache is not None:
        key = Path(onnx_path).resolve()
        if key not in cache:
            cache[key] = graph_tensors(onnx_path)
        return cache[key]
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def tensors(values):
        out = {}
        for v in values:
            if v.name in inits:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out[v.name] = (ONNX_TO_TRITON.get(t.elem_type, f"onnx type {t.elem_type}"), dims)
        return out

    return {"input": tensors(model.graph.input), "output": tensors(model.graph.output)}


def _type_name(config_tensor) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(config_tensor.data_type)


def _network_errors(path: Path, config, onnx_path: Path, version: str, graphs: dict) -> list[str]:
    graph, errors = graph_tensors(onnx_path, graphs), []
    native = config.backend != "python"  # onnxruntime or tensorrt, by platform or by backend
    where = f"{onnx_path.name} (version {version})"
    for kind, declared in (("input", config.input), ("output", config.output)):
        have = graph[kind]
        names = {t.name for t in declared}
        for t in declared:
            if t.name not in have:
                errors.append(f"{path}: {kind} '{t.name}': declared in the config, but {where} has no such {kind} "
                              f"(it has {sorted(have)})")
                continue
            gtype, gdims = have[t.name]
            if _type_name(t) != gtype:
                errors.append(f"{path}: {kind} '{t.name}': config says {_type_name(t)}, {where} has {gtype}")
            item = gdims[1:] if config.max_batch_size > 0 else gdims
            dims = list(t.dims)
            fits = len(dims) == len(item) and all(
                c == g or g == -1 and (c == -1 or native) or c == -1 and not native for c, g in zip(dims, item))
            if not fits:
                errors.append(f"{path}: {kind} '{t.name}': config dims {dims}, {where} has {item} per item"
                              + (" (a native backend needs exact dims)" if native and -1 in dims else ""))
        if kind == "input":
            for name in sorted(set(have) - names):
                errors.append(f"{path}: input '{name}': {where} needs it, but the config does not declare it")
        if config.max_batch_size > 0:
            for name, (_, gdims) in have.items():
                if gdims and gdims[0] != -1 and gdims[0] < config.max_batch_size:
                    errors.append(f"{path}: {kind} '{name}': max_batch_size {config.max_batch_size}, but {where}'s "
                                  f"batch axis is fixed at {gdims[0]}")
    return errors


def _pick(model_dir: Path, config_name: str) -> Path:
    """The config Triton loads for a model under ``--model-config-name=config_name``."""
    variant = model_dir / "configs" / f"{config_name}.pbtxt"
    return variant if config_name and variant.exists() else model_dir / "config.pbtxt"


def _ensemble_errors(path: Path, config, repo: Path, config_name: str) -> list[str]:
    errors = []
    available = {t.name for t in config.input}
    for k, step in enumerate(config.ensemble_scheduling.step, 1):
        model_dir = repo / step.model_name
        if not (model_dir / "config.pbtxt").exists():
            errors.append(f"{path}: step {k}: model '{step.model_name}' is not in {repo}")
            continue
        step_path = _pick(model_dir, config_name)
        try:
            step_cfg = read_config(step_path)
        except ValueError as e:
            errors.append(f"{path}: step {k} ({step.model_name}): {e}")
            continue
        ins = {t.name: t for t in step_cfg.input}
        outs = {t.name for t in step_cfg.output}
        for key, value in step.input_map.items():
            if key not in ins:
                errors.append(f"{path}: step {k} ({step.model_name}) maps input '{key}', which {step_path} does not "
                              f"declare (it has {sorted(ins)})")
            if value not in available:
                errors.append(f"{path}: step {k} ({step.model_name}) reads tensor '{value}', which neither the "
                              f"ensemble's inputs nor an earlier step provide")
        for name, t in ins.items():
            if name not in step.input_map and not t.optional:
                errors.append(f"{path}: step {k} ({step.model_name}): required input '{name}' of {step_path} is not "
                              "mapped")
        for key, value in step.output_map.items():
            if key not in outs:
                errors.append(f"{path}: step {k} ({step.model_name}) maps output '{key}', which {step_path} does "
                              f"not declare (it has {sorted(outs)})")
            available.add(value)
    for t in config.output:
        if t.name not in available:
            errors.append(f"{path}: output '{t.name}': no step of the ensemble produces it")
    return errors


def _client_errors(path: Path, config, client_model: str) -> list[str]:
    """A client model's config against the repository contract: the inputs and outputs clients send and read,
    with their types (:data:`~editguard.model.repository.INPUT_TYPES`, ``OUTPUT_TYPES``)."""
    from ..model.repository import OUTPUT_TYPES, PROMPT, client_inputs

    errors = []
    for kind, declared, expected in (("input", config.input, client_inputs(client_model)),
                                     ("output", config.output, OUTPUT_TYPES)):
        have = {t.name: t for t in declared}
        for name, dtype in expected.items():
            if name not in have:
                errors.append(f"{path}: {kind} '{name}': the repository contract has it, the config does not declare "
                              "it")
            elif _type_name(have[name]) != dtype:
                errors.append(f"{path}: {kind} '{name}': config says {_type_name(have[name])}, the contract {dtype}")
            elif kind == "input" and have[name].optional != (name != PROMPT):
                errors.append(f"{path}: input '{name}' must be {'optional' if name != PROMPT else 'required'}: a "
                              "request carries encoded images or pixels, and always the prompt")
        for name in sorted(set(have) - set(expected)):
            errors.append(f"{path}: {kind} '{name}' is not in the repository contract for {client_model}")
    return errors


def _code_errors(model_dir: Path, version: str) -> list[str]:
    """A Python-backend version runs the ``model.py`` export copied into it, which imports this editguard: a copy
    from another release may not import (modules move between releases), so each must be the installed one's."""
    from ..model.repository import CLASSIFIER, CLIENT_MODEL, CLIENT_MODELS, EXPLAIN, PREPARE, VERDICTS, templates_dir

    code = model_dir / version / "model.py"
    if not code.exists():
        return []
    template = (CLIENT_MODEL if model_dir.name in (*CLIENT_MODELS, PREPARE, VERDICTS) else
                EXPLAIN if model_dir.name == EXPLAIN else CLASSIFIER)
    if code.read_bytes() == (templates_dir() / template / "model.py").read_bytes():
        return []
    return [f"{code}: not the model.py of the installed editguard (exported by another release, whose imports may "
            f"not resolve): export the model dir again, or copy {templates_dir() / template / 'model.py'} over it"]


def check_repository(repository: str | Path, version: int | None = None, graphs: dict | None = None) -> list[str]:
    """Every mismatch between the configs of ``repository`` and the graphs they serve; empty when all agree.
    A config that does not parse is reported as such. ``version``: check the networks' graphs of that
    version only (the one an export just wrote). ``graphs``: a :func:`graph_tensors` cache to share."""
    from ..model.repository import CLIENT_MODELS, versions

    repo = Path(repository)
    if not repo.is_dir():
        return [f"{repo}: no such repository"]
    errors: list[str] = []
    graphs = {} if graphs is None else graphs
    for model_dir in sorted(p for p in repo.iterdir() if (p / "config.pbtxt").exists()):
        for path in [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]:
            try:
                config = read_config(path)
            except ValueError as e:
                errors.append(str(e))
                continue
            if config.name and config.name != model_dir.name:
                errors.append(f"{path}: name '{config.name}' differs from its folder '{model_dir.name}'")
            if model_dir.name in CLIENT_MODELS:
                errors += _client_errors(path, config, model_dir.name)
            if config.platform == "ensemble":
                errors += _ensemble_errors(path, config, repo, path.stem if path.parent.name == "configs" else "")
                continue
            for v in [version] if version is not None else versions(repo, model_dir.name):
                if path.name == "config.pbtxt" and config.backend == "python":
                    errors += _code_errors(model_dir, str(v))
                onnx_path = model_dir / str(v) / "model.onnx"
                if onnx_path.exists() and (config.backend in ("python", "onnxruntime", "tensorrt") or
                                           config.platform in ("onnxruntime_onnx", "tensorrt_plan")):
                    errors += _network_errors(path, config, onnx_path, str(v), graphs)
    return errors
