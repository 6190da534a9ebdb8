"""Writing a Triton model repository: a new numbered version, atomically, beside the others.

Layout (the templates are the files under ``model_repository/``)::

    REPO/editguard/config.pbtxt                 client-facing model (Python; runs the network inline)
    REPO/editguard/configs/NAME.pbtxt           its twin per native classifier config (BLS to the classifier)
    REPO/editguard/labels.txt                   label file (one category per line)
    REPO/editguard/N/{model.py, config.json, labels.json, tokenizer/, export.json[, thresholds.json]}
    REPO/editguard_classifier/config.pbtxt      Python backend + onnxruntime (default)
    REPO/editguard_classifier/configs/{onnxruntime,tensorrt}.pbtxt   native, NVIDIA's container
    REPO/editguard_classifier/N/{model.py, model.onnx, export.json[, model.plan]}

A model trained with ``--ablation precheck`` (the request before generation: input image, mask,
prompt) goes into its own pair, with the same files and conventions, its own versions and
thresholds: ``REPO/editguard_precheck`` (front) and
``REPO/editguard_precheck_classifier``.

A version is written under a hidden temporary name and renamed into place, so
Triton never sees half a version; the classifier's version lands before the
front model's that calls it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ..files import write_text_atomic
from ..model.served import CLASSIFIER, FRONT, PAIRS, PRECHECK, PRECHECK_CLASSIFIER, versions
from .pbtxt import read_config, write_config

_logger = logging.getLogger(__name__)

__all__ = ["FRONT", "CLASSIFIER", "PRECHECK", "PRECHECK_CLASSIFIER", "ExportConfig", "ExportResult", "export_version",
           "ensure_repository", "versions", "read_config", "write_config", "templates_dir"]


def templates_dir() -> Path:
    """The committed ``model_repository/``: the source tree's (editable installs), else the copy a wheel
    ships as ``editguard/model_repository`` (a namespace package: no ``__init__.py``, so no ``__pycache__``
    that Triton would take for a model)."""
    src = Path(__file__).resolve().parent.parent / "model_repository"
    if (src / FRONT / "config.pbtxt").exists():
        return src
    return Path(str(resources.files("editguard.model_repository")))


def ensure_repository(repository: str | Path, front: str = FRONT) -> Path:
    """Create the folders and configs of ``front`` and its network from the templates where missing."""
    repo = _not_the_templates(repository)
    src = templates_dir()
    for model in (front, PAIRS[front]):
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
    # where the served front decodes JPEG uploads: "" Pillow on the host, or a torch device ("cuda":
    # nvJPEG through torchvision); None leaves the repository's setting as it is
    decode_device: str | None = None

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
    model: str = FRONT  # the client-facing model the version went to (editguard or editguard_precheck)


def export_version(cfg: ExportConfig) -> ExportResult:
    """Export ``cfg.model_dir`` as a new version of both models; raises if parity fails."""
    from ..model.model_dir import load_model_dir

    t0 = time.perf_counter()
    _not_the_templates(cfg.repository)
    net, pre = load_model_dir(cfg.model_dir, device=cfg.device)
    if net.cfg.ablation not in ("triple", "precheck"):
        raise ValueError(f"{cfg.model_dir} is an ablation ({net.cfg.ablation}); only triple models (and pre-checks, "
                         "--ablation precheck) can be served")
    front_name = PRECHECK if net.cfg.ablation == "precheck" else FRONT
    clf = PAIRS[front_name]
    repo = ensure_repository(cfg.repository, front_name)
    taken = set(versions(repo, front_name)) | set(versions(repo, clf))
    version = cfg.version or (max(taken, default=0) + 1)
    if version in taken:
        raise FileExistsError(f"version {version} of {front_name} already exists in {repo}; pick another "
                              "--version or omit it")
    _check_labels(repo, net.cfg.labels, front_name)
    stage = Path(tempfile.mkdtemp(dir=repo / clf, prefix=f".v{version}-"))
    try:
        result = _write_classifier(cfg, net, pre, stage, version, clf)
        front = _write_front(cfg, repo, version, result, front_name)
        os.replace(stage, repo / clf / str(version))
        os.replace(front, repo / front_name / str(version))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _update_configs(repo, cfg.max_batch, net, front_name, cfg.decode_device)
    result.model = front_name
    result.repository, result.seconds = str(repo), round(time.perf_counter() - t0, 1)
    return result


def _write_classifier(cfg: ExportConfig, net, pre, stage: Path, version: int, clf: str = CLASSIFIER) -> ExportResult:
    from .onnx_export import FP16_TOL, FP32_TOL, convert_fp16, export_onnx, parity, sample_inputs

    samples = sample_inputs(cfg.model_dir, pre)
    fp32 = export_onnx(net, stage / "model.fp32.onnx", samples, cfg.opset)
    p32 = parity(net, fp32, samples, FP32_TOL, cfg.device)
    _logger.info("FP32 parity: max |dprob| %.2e over %d triples (limit %.0e)", p32.max_abs_prob, p32.n, FP32_TOL)
    if not p32.ok:
        raise RuntimeError(f"FP32 ONNX parity failed: max |dprob| {p32.max_abs_prob:.3e} > {FP32_TOL}")
    p16 = None
    if cfg.fp16:
        convert_fp16(fp32, stage / "model.onnx")
        p16 = parity(net, stage / "model.onnx", samples, FP16_TOL, cfg.device)
        _logger.info("FP16 parity: max |dprob| %.2e (limit %.0e)", p16.max_abs_prob, FP16_TOL)
        if not p16.ok:
            raise RuntimeError(f"FP16 ONNX parity failed: max |dprob| {p16.max_abs_prob:.3e} > {FP16_TOL}")
        fp32.unlink()
    else:
        fp32.rename(stage / "model.onnx")
    plan = None
    if cfg.runtime == "tensorrt":
        from .tensorrt import build_plan

        plan = str(build_plan(stage / "model.onnx", stage / "model.plan", max_batch=cfg.max_batch, fp16=True,
                              timing_cache=Path(cfg.repository) / clf / "timing.cache"))
    shutil.copyfile(templates_dir() / CLASSIFIER / "model.py", stage / "model.py")
    meta = {"version": version, "model_dir": str(Path(cfg.model_dir).resolve()), "fp16": cfg.fp16,
            "vocab_size": net.text.encoder.config.vocab_size, "labels": net.cfg.labels,
            "parity_fp32": asdict(p32), "parity_fp16": asdict(p16) if p16 else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (stage / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
    return ExportResult(version, str(cfg.repository), asdict(p32), asdict(p16) if p16 else None, plan)


def _write_front(cfg: ExportConfig, repo: Path, version: int, result: ExportResult, front: str = FRONT) -> Path:
    src = Path(cfg.model_dir)
    stage = Path(tempfile.mkdtemp(dir=repo / front, prefix=f".v{version}-"))
    try:
        for f in ("config.json", "labels.json"):
            shutil.copyfile(src / f, stage / f)
        shutil.copytree(src / "tokenizer", stage / "tokenizer")
        shutil.copyfile(templates_dir() / FRONT / "model.py", stage / "model.py")
        (stage / "export.json").write_text(json.dumps(
            {"version": version, "model_dir": str(src.resolve()), "fp16": cfg.fp16,
             "parity_fp32": result.parity_fp32, "parity_fp16": result.parity_fp16}, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


def _check_labels(repo: Path, labels: list[str], front: str = FRONT) -> None:
    path = repo / front / "labels.txt"
    if path.exists():
        have = path.read_text().split()
        if have != labels and versions(repo, front):
            raise ValueError(f"{path} lists {have} but the model has {labels}; versions served side by side "
                             "must share labels: export into a new repository")
    write_text_atomic(path, "\n".join(labels) + "\n")


def _update_configs(repo: Path, max_batch: int, net, front: str = FRONT, decode_device: str | None = None) -> None:
    """max_batch_size for both models; exact dims in the native classifier configs; the front's pixels
    specs per version and its decode device; the front's variants for the native classifier configs."""
    clf = PAIRS[front]
    p = net.cfg.preprocess
    dims = {"input_image": [p.image_size, p.image_size, 3], "output_image": [p.image_size, p.image_size, 3],
            "mask": [p.image_size, p.image_size], "input_ids": [p.max_tokens], "attention_mask": [p.max_tokens],
            "logits": [len(net.cfg.labels)], "probabilities": [len(net.cfg.labels)]}
    paths = [repo / front / "config.pbtxt", repo / clf / "config.pbtxt",
             *sorted((repo / clf / "configs").glob("*.pbtxt"))]
    for path in paths:
        cfg = read_config(path)
        before = cfg.SerializeToString()
        cfg.max_batch_size = max_batch
        if cfg.dynamic_batching.preferred_batch_size:
            sizes = [b for b in cfg.dynamic_batching.preferred_batch_size if b <= max_batch] or [max_batch]
            del cfg.dynamic_batching.preferred_batch_size[:]
            cfg.dynamic_batching.preferred_batch_size.extend(sizes)
        if cfg.platform:  # native backends need the exact dims
            for t in list(cfg.input) + list(cfg.output):
                if t.name in dims:
                    del t.dims[:]
                    t.dims.extend(dims[t.name])
        if path == repo / front / "config.pbtxt":
            cfg.parameters["preprocess"].string_value = json.dumps(pixels_specs(repo, front), sort_keys=True)
            if decode_device is not None:
                cfg.parameters["decode_device"].string_value = decode_device
        if cfg.SerializeToString() != before:
            write_config(path, cfg)
    if front == FRONT:
        _write_front_variants(repo)


def pixels_specs(repo: Path, front: str = FRONT) -> dict[str, dict]:
    """``{version: pixels spec}`` of the front's versions on disk: what pixels-path clients prepare."""
    from ..model.config import ModelConfig

    return {str(v): ModelConfig.load(repo / front / str(v) / "config.json").preprocess.pixels_spec()
            for v in versions(repo, front)}


def _write_front_variants(repo: Path) -> None:
    """For each native classifier config (``configs/NAME.pbtxt``, picked by Triton's
    ``--model-config-name=NAME``), the front's twin that hands batches to that classifier over BLS
    instead of running the network itself."""
    source = (repo / FRONT / "config.pbtxt").read_text()
    front = read_config(repo / FRONT / "config.pbtxt")
    front.parameters["inline_classifier"].string_value = "false"
    (repo / FRONT / "configs").mkdir(exist_ok=True)
    for variant in sorted((repo / CLASSIFIER / "configs").glob("*.pbtxt")):
        header = (f"# Generated by `editguard export` from ../config.pbtxt for --model-config-name={variant.stem}:\n"
                  f"# the same model, but each batch goes over BLS to editguard_classifier, which that name\n"
                  f"# serves on the native backend.\n")
        write_config(repo / FRONT / "configs" / variant.name, front, header + source)
