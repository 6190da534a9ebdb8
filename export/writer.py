"""Writing a Triton model repository: a new numbered version, atomically, beside the others.

The layout and the names are the repository contract's (:mod:`editguard.model.repository`); the
committed templates are the files under ``model_repository/``, which export copies (it never writes
there). A model trained with ``--ablation precheck`` (the request before generation: input image,
mask, prompt) goes into its own pair, ``editguard_precheck`` and ``editguard_precheck_classifier`` (and
``editguard_precheck_prompt``), with the same files, its own versions and thresholds; it is served
inline under every config name.

A version is written under a hidden temporary name and renamed into place, so Triton never sees half
a version; the networks' versions land before the client model's that calls them. The configs of the
networks take their tensors from the exported graph, the client model's variants (the ensemble graph)
are written from its config, and the whole repository is then checked (:mod:`editguard.export.check`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import write_json_atomic, write_text_atomic
from ..model.pbtxt import read_config, write_config
from ..model.repository import (
    CLASSIFIER,
    CLIENT_MODEL,
    EXPLAIN,
    PAIRS,
    PRECHECK,
    PREPARE,
    PROBABILITIES,
    PROMPT_EMBEDDING,
    PROMPTS,
    THRESHOLDS,
    VERDICTS,
    carry_thresholds,
    graph_models,
    pixels_specs,
    templates_dir,
    versions,
    write_labels,
)

_logger = logging.getLogger(__name__)

__all__ = ["ExportConfig", "ExportResult", "export_version", "ensure_repository"]


def ensure_repository(repository: str | Path, client_model: str = CLIENT_MODEL, split_prompt: bool = False) -> Path:
    """Create the folders and configs of ``client_model`` and the models behind it from the templates where
    missing."""
    repo = _not_the_templates(repository)
    src = templates_dir()
    for model in graph_models(client_model, split_prompt):
        (repo / model).mkdir(parents=True, exist_ok=True)
        for f in [Path("config.pbtxt"), *(p.relative_to(src / model) for p in (src / model).glob("configs/*.pbtxt"))]:
            if not (repo / model / f).exists():
                (repo / model / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / model / f, repo / model / f)
    return repo


def _not_the_templates(repository: str | Path) -> Path:
    """``repository``, unless it is the committed templates' folder: export copies those, never writes there."""
    repo = Path(repository)
    if repo.resolve() == templates_dir().resolve():
        raise ValueError(f"{repo} holds editguard's committed config templates, which export never edits; export "
                         "into a repository of your own, e.g. --repository repository (created, and ignored by git)")
    return repo


@dataclass
class ExportConfig:
    model_dir: str  # a model dir written by `editguard train`
    repository: str = "repository"  # the Triton model repository to add a version to (not the templates)
    version: int | None = None  # version number; default: one past the highest present
    fp16: bool = False  # serve the FP16 graph (converted from FP32, parity-checked)
    runtime: str = "onnxruntime"  # "onnxruntime", or "tensorrt" to also build model.plan
    max_batch: int = 64  # max_batch_size of both models; the TensorRT profile's max
    opset: int = 17  # ONNX opset
    device: str = "cpu"  # where the parity check runs ("cuda" for FP16 on a GPU)
    # where the served client model decodes JPEG uploads: "" Pillow on the host, or a torch device ("cuda":
    # nvJPEG through torchvision); None leaves the repository's setting as it is
    decode_device: str | None = None
    # also write the version of editguard_explain: the torch network, served on request for explanations
    explain: bool = False

    def __post_init__(self) -> None:
        if self.runtime not in ("onnxruntime", "tensorrt"):
            raise ValueError(f"runtime must be 'onnxruntime' or 'tensorrt', got {self.runtime!r}")
        if not 1 <= self.max_batch <= 4096:
            raise ValueError(f"max_batch must be 1..4096, got {self.max_batch}")
        d = self.decode_device
        if d not in (None, "", "cpu", "cuda") and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise ValueError(f"decode_device must be '' (Pillow), 'cpu', 'cuda' or 'cuda:N', got {d!r}")


@dataclass
class ExportResult:
    version: int
    repository: str
    parity_fp32: dict
    parity_fp16: dict | None = None
    plan: str | None = None
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    model: str = CLIENT_MODEL  # the client model the version went to (editguard or editguard_precheck)
    models: list[str] = field(default_factory=list)  # every model the version was written to, in landing order
    thresholds: str | None = None  # what thresholds the version starts with, when carried from an older one


def export_version(cfg: ExportConfig) -> ExportResult:
    """Export ``cfg.model_dir`` as a new version of both models; raises if parity fails."""
    from ..model.model_dir import load_model_dir

    t0 = time.perf_counter()
    _not_the_templates(cfg.repository)
    net, pre = load_model_dir(cfg.model_dir, device=cfg.device)
    if net.cfg.ablation not in ("triple", "precheck"):
        raise ValueError(f"{cfg.model_dir} is an ablation ({net.cfg.ablation}); only triple models (and pre-checks, "
                         "--ablation precheck) can be served")
    client_model = PRECHECK if net.cfg.ablation == "precheck" else CLIENT_MODEL
    if cfg.explain and client_model != CLIENT_MODEL:
        raise ValueError(f"{cfg.model_dir} is a pre-check: explanations need the triple model (both images); export "
                         "it without --explain")
    split = net.split_prompt
    models = graph_models(client_model, split)
    repo = ensure_repository(cfg.repository, client_model, split)
    _check_graph(repo, client_model, split)
    taken = set().union(*(versions(repo, m) for m in models))
    version = cfg.version or (max(taken, default=0) + 1)
    if version in taken:
        raise FileExistsError(f"version {version} of {client_model} already exists in {repo}; pick another "
                              "--version or omit it")
    write_labels(repo, net.cfg.labels, client_model)
    stages = {m: Path(tempfile.mkdtemp(dir=repo / m, prefix=f".v{version}-")) for m in models if m != client_model}
    try:
        result = _write_networks(cfg, net, pre, stages[PAIRS[client_model]], version,
                                 stages.get(PROMPTS[client_model]), PAIRS[client_model])
        for step in (PREPARE, VERDICTS):
            if step in stages:
                shutil.copyfile(templates_dir() / CLIENT_MODEL / "model.py", stages[step] / "model.py")
        stages[client_model] = _write_client_model(cfg, repo, version, result, client_model)
        result.thresholds = _carry_thresholds(Path(cfg.model_dir), repo, client_model, version, stages[client_model])
        if cfg.explain:
            stages[EXPLAIN] = _write_explain_model(cfg, repo, version)
        for m in ([EXPLAIN] if cfg.explain else []) + models:  # the networks land first, the client model last
            os.replace(stages[m], repo / m / str(version))
    except BaseException:
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)
        raise
    graphs: dict = {}  # each graph is read once: for the configs, then for both checks
    _update_configs(repo, cfg.max_batch, net, client_model, cfg.decode_device, version, graphs)
    from .check import check_repository

    errors = check_repository(repo, version, graphs)
    if errors:
        raise ValueError(f"{repo}: the configs disagree with the exported graphs:\n  " + "\n  ".join(errors))
    for e in check_repository(repo, graphs=graphs):  # older versions the new configs no longer fit, or older code
        _logger.warning("%s (an older version that Triton may refuse to load: export it again, or retire it; models "
                        "of other shapes go into a repository of their own)", e)
    result.model, result.models = client_model, models
    result.repository, result.seconds = str(repo), round(time.perf_counter() - t0, 1)
    return result


def _check_graph(repo: Path, client_model: str, split: bool) -> None:
    """Versions served side by side share one graph: with or without a separate prompt tower."""
    have = versions(repo, client_model)
    if have and bool(versions(repo, PROMPTS[client_model])) != split:
        was = "a separate prompt tower" if not split else "the prompt tower inside the classifier"
        raise ValueError(f"{repo / client_model} serves versions {have} with {was}, and this model's graph differs "
                         "(text_encoder.freeze decides it); versions served side by side share one graph: export "
                         "into a new repository")


def _write_networks(cfg: ExportConfig, net, pre, stage: Path, version: int, prompt_stage: Path | None,
                    clf: str = CLASSIFIER) -> ExportResult:
    """The classifier's version (and, for a frozen prompt tower, the prompt tower's), parity-checked over
    the chain in FP32 and, with ``cfg.fp16``, in FP16."""
    from .onnx_export import FP16_TOL, FP32_TOL, convert_fp16, export_onnx, export_prompt_onnx, parity, sample_inputs

    samples = sample_inputs(cfg.model_dir, pre)
    stages = [stage] + ([prompt_stage] if prompt_stage else [])
    export_onnx(net, stage / "model.fp32.onnx", samples, cfg.opset)
    if prompt_stage:
        export_prompt_onnx(net, prompt_stage / "model.fp32.onnx", samples, cfg.opset)
    prompt = (lambda name: prompt_stage / name) if prompt_stage else (lambda name: None)
    p32 = parity(net, stage / "model.fp32.onnx", samples, FP32_TOL, cfg.device, prompt("model.fp32.onnx"))
    _logger.info("FP32 parity: max |dprob| %.2e over %d triples (limit %.0e)", p32.max_abs_prob, p32.n, FP32_TOL)
    if not p32.ok:
        raise RuntimeError(f"FP32 ONNX parity failed: max |dprob| {p32.max_abs_prob:.3e} > {FP32_TOL}")
    p16 = None
    if cfg.fp16:
        for s in stages:
            convert_fp16(s / "model.fp32.onnx", s / "model.onnx")
        p16 = parity(net, stage / "model.onnx", samples, FP16_TOL, cfg.device, prompt("model.onnx"))
        _logger.info("FP16 parity: max |dprob| %.2e (limit %.0e)", p16.max_abs_prob, FP16_TOL)
        if not p16.ok:
            raise RuntimeError(f"FP16 ONNX parity failed: max |dprob| {p16.max_abs_prob:.3e} > {FP16_TOL}")
        for s in stages:
            (s / "model.fp32.onnx").unlink()
    else:
        for s in stages:
            (s / "model.fp32.onnx").rename(s / "model.onnx")
    plan = None
    if cfg.runtime == "tensorrt":
        from .tensorrt import build_plan

        for s in stages:
            built = build_plan(s / "model.onnx", s / "model.plan", max_batch=cfg.max_batch, fp16=True,
                               timing_cache=Path(cfg.repository) / clf / "timing.cache",
                               item_max={k: v.shape[1:] for k, v in samples.items()})
            plan = plan or str(built)
    meta = {"version": version, "model_dir": str(Path(cfg.model_dir).resolve()), "fp16": cfg.fp16,
            "vocab_size": net.text.encoder.config.vocab_size if net.cfg.use_prompt else 0, "labels": net.cfg.labels,
            "parity_fp32": asdict(p32), "parity_fp16": asdict(p16) if p16 else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for s in stages:
        shutil.copyfile(templates_dir() / CLASSIFIER / "model.py", s / "model.py")
        (s / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
    return ExportResult(version, str(cfg.repository), asdict(p32), asdict(p16) if p16 else None, plan)


def _write_client_model(cfg: ExportConfig, repo: Path, version: int, result: ExportResult,
                        client_model: str = CLIENT_MODEL) -> Path:
    src = Path(cfg.model_dir)
    stage = Path(tempfile.mkdtemp(dir=repo / client_model, prefix=f".v{version}-"))
    try:
        for f in ("config.json", "labels.json"):
            shutil.copyfile(src / f, stage / f)
        shutil.copytree(src / "tokenizer", stage / "tokenizer")
        shutil.copyfile(templates_dir() / CLIENT_MODEL / "model.py", stage / "model.py")
        (stage / "export.json").write_text(json.dumps(
            {"version": version, "model_dir": str(src.resolve()), "fp16": cfg.fp16,
             "parity_fp32": result.parity_fp32, "parity_fp16": result.parity_fp16}, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


def _write_explain_model(cfg: ExportConfig, repo: Path, version: int) -> Path:
    """A version of editguard_explain: the model dir's network and tokenizer as they are (torch loads them),
    and its model.py; the model's config from the template where missing."""
    src, tpl = Path(cfg.model_dir), templates_dir() / EXPLAIN
    (repo / EXPLAIN).mkdir(exist_ok=True)
    if not (repo / EXPLAIN / "config.pbtxt").exists():
        shutil.copyfile(tpl / "config.pbtxt", repo / EXPLAIN / "config.pbtxt")
    stage = Path(tempfile.mkdtemp(dir=repo / EXPLAIN, prefix=f".v{version}-"))
    try:
        for f in ("config.json", "labels.json", "model.safetensors"):
            shutil.copyfile(src / f, stage / f)
        for d in ("tokenizer", "text_encoder"):
            if (src / d).is_dir():
                shutil.copytree(src / d, stage / d)
        shutil.copyfile(tpl / "model.py", stage / "model.py")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


def _carry_thresholds(model_dir: Path, repo: Path, client_model: str, version: int, stage: Path) -> str | None:
    """A model grown with ``train --from`` starts with its parent version's thresholds where it scores as the
    parent does (:func:`~editguard.model.repository.carry_thresholds`); returns the line saying so, or None."""
    from ..model.model_dir import GROWN

    if not (model_dir / GROWN).exists():
        return None
    carried = carry_thresholds(json.loads((model_dir / GROWN).read_text()), repo, client_model, version)
    if carried is None:
        return None
    doc, line = carried
    write_json_atomic(stage / THRESHOLDS, doc)
    return line


def _update_configs(repo: Path, max_batch: int, net, client_model: str = CLIENT_MODEL, decode_device: str | None = None,
                    version: int | None = None, cache: dict | None = None) -> None:
    """max_batch_size everywhere; the networks' tensors from the exported graph of ``version`` (exact dims
    in the native configs); the client model's pixels specs per version and the decode device; the client model's
    variants (the ensemble graph). ``cache``: the graphs read (:func:`~editguard.export.check.graph_tensors`)."""
    from .check import graph_tensors

    graphs = {m: graph_tensors(repo / m / str(version) / "model.onnx", cache)
              for m in (PAIRS[client_model], PROMPTS[client_model])
              if (repo / m / str(version) / "model.onnx").exists()}
    for model in graph_models(client_model, PROMPTS[client_model] in graphs):
        for path in [repo / model / "config.pbtxt", *sorted((repo / model / "configs").glob("*.pbtxt"))]:
            cfg = read_config(path)
            before = cfg.SerializeToString()
            cfg.max_batch_size = max_batch
            if cfg.dynamic_batching.preferred_batch_size:
                sizes = [b for b in cfg.dynamic_batching.preferred_batch_size if b <= max_batch] or [max_batch]
                del cfg.dynamic_batching.preferred_batch_size[:]
                cfg.dynamic_batching.preferred_batch_size.extend(sizes)
            if model in graphs:
                _set_tensors(cfg, graphs[model], exact=cfg.backend != "python")
            if model == client_model:
                cfg.parameters["preprocess"].string_value = json.dumps(pixels_specs(repo, client_model), sort_keys=True)
            if model in (client_model, PREPARE) and decode_device is not None:
                cfg.parameters["decode_device"].string_value = decode_device
            if cfg.SerializeToString() != before:
                write_config(path, cfg)
    if client_model == CLIENT_MODEL:
        _write_graph_variants(repo, graphs)


def _set_tensors(cfg, graph: dict, exact: bool) -> None:
    """The config's inputs and outputs as the graph declares them: names, types, and per-item dims (exact for
    a native backend, ``-1`` for the Python one, which serves versions of different sizes)."""
    from tritonclient.grpc import model_config_pb2 as mc

    for kind, tensors in (("input", cfg.input), ("output", cfg.output)):
        old = {t.name: t for t in tensors}
        new = []
        for name, (dtype, dims) in graph[kind].items():
            t = mc.ModelInput() if kind == "input" else mc.ModelOutput()
            if name in old:
                t.CopyFrom(old[name])
            t.name, t.data_type = name, mc.DataType.Value(dtype)
            if kind == "input":
                t.optional = False
            del t.dims[:]
            item = dims[1:]  # the Python backend keeps only the channels of an image fixed
            t.dims.extend(item if exact else [d if (d == 3 and k == len(item) - 1 > 0) else -1
                                              for k, d in enumerate(item)])
            new.append(t)
        del tensors[:]
        tensors.extend(new)


ENSEMBLE_NAMES = ("ensemble",)  # config names that serve the ensemble over the Python stand-ins


def _write_graph_variants(repo: Path, graphs: dict) -> None:
    """The client model's variants under ``configs/``, which Triton picks with ``--model-config-name=NAME``: for each
    native classifier config and for ``ensemble``, the ensemble graph (prepare -> prompt tower -> classifier
    -> verdicts)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    client_config = read_config(repo / CLIENT_MODEL / "config.pbtxt")
    (repo / CLIENT_MODEL / "configs").mkdir(exist_ok=True)
    ensemble = mc.ModelConfig(name=CLIENT_MODEL, platform="ensemble", max_batch_size=client_config.max_batch_size)
    ensemble.input.extend(client_config.input)
    ensemble.output.extend(client_config.output)
    ensemble.version_policy.CopyFrom(client_config.version_policy)
    ensemble.parameters["preprocess"].CopyFrom(client_config.parameters["preprocess"])

    def step(model: str, ins, outs) -> None:
        s = ensemble.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        s.input_map.update({n: n for n in ins})
        s.output_map.update({n: n for n in outs})

    net_inputs = list(graphs[CLASSIFIER]["input"])
    prompt_inputs = list(graphs[PROMPTS[CLIENT_MODEL]]["input"]) if PROMPTS[CLIENT_MODEL] in graphs else []
    step(PREPARE, [t.name for t in client_config.input],
         [n for n in net_inputs if n != PROMPT_EMBEDDING] + prompt_inputs)
    if prompt_inputs:
        step(PROMPTS[CLIENT_MODEL], prompt_inputs, [PROMPT_EMBEDDING])
    step(CLASSIFIER, net_inputs, [PROBABILITIES])
    step(VERDICTS, [PROBABILITIES], [t.name for t in client_config.output])
    body = text_format.MessageToString(ensemble)
    names = sorted({p.stem for p in (repo / CLASSIFIER / "configs").glob("*.pbtxt")} | set(ENSEMBLE_NAMES))
    for name in names:
        backend = ("the Python-backend stand-ins (each step's config.pbtxt)" if name in ENSEMBLE_NAMES else
                   f"the networks' configs/{name}.pbtxt (native backend) and the Python steps' config.pbtxt")
        header = (f"# Generated by `editguard export` for --model-config-name={name}: editguard as an ensemble\n"
                  f"# over {backend}.\n# Each step runs its latest loaded version. The client contract is the "
                  "inline client model's\n# (../config.pbtxt): the same tensors, parameters and per-request errors.\n")
        write_text_atomic(repo / CLIENT_MODEL / "configs" / f"{name}.pbtxt", header + body)
