"""The Triton repository contract: the one place that says what a repository holds and what its models
are called. Export writes it, the served models and the in-process scorer read it, the clients,
calibration and review speak it, and ``check-repository`` checks the configs against it.

Layout (``editguard export`` writes it; the committed templates are ``model_repository/``)::

    REPO/editguard/config.pbtxt, configs/NAME.pbtxt, labels.txt
    REPO/editguard/N/                   config.json, tokenizer/, labels.json, export.json[, thresholds.json]
    REPO/editguard_classifier/N/        model.onnx, export.json[, model.plan]
    REPO/editguard_prompt/N/            model.onnx, export.json  (a frozen prompt tower only)
    REPO/editguard_prepare/N/, REPO/editguard_verdicts/N/   the ensemble graph's Python steps

and the pre-check's pair, ``editguard_precheck`` and ``editguard_precheck_classifier``
(``editguard_precheck_prompt``), with the same files.

thresholds.json, per category::

    {"model_version": "3", "created": ..., "source": ...,
     "categories": {"sexual": {"threshold": 0.62, "target": "precision>=0.95", "precision": 0.96, ...}, ...}}

lives beside the version it calibrates. Its lifecycle is here: read (:func:`threshold_array`),
installed (:func:`install_thresholds`), merged for ``calibrate --only`` (:func:`merge_thresholds`),
carried to a grown model's version (:func:`carry_thresholds`) and watched by the served model
(:class:`ThresholdsFile`). A category missing from the file keeps 0.5. Light: numpy only.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import numpy as np

from .config import ModelConfig, PreprocessConfig

_logger = logging.getLogger(__name__)

__all__ = ["CLIENT_MODEL", "CLASSIFIER", "PRECHECK", "PRECHECK_CLASSIFIER", "PAIRS", "PROMPTS", "PREPARE",
           "VERDICTS", "CLIENT_MODELS", "ENCODED_INPUTS", "PIXELS_INPUTS", "PROMPT", "PIXELS_SPEC", "CUMULATIVE",
           "OUTPUTS",
           "THRESHOLDS_OUTPUT", "SESSION_THRESHOLDS_OUTPUT", "SESSION_CHECKS", "session_threshold_array",
           "merge_session_thresholds", "keep_session_thresholds",
           "INPUT_TYPES", "OUTPUT_TYPES", "client_inputs",
           "NETWORK_INPUTS", "PROMPT_EMBEDDING", "PROBABILITIES", "LOGITS", "MAX_IMAGE_BYTES", "MAX_PROMPT_BYTES",
           "versions", "version_dir", "templates_dir", "graph_models", "write_labels", "pixels_specs",
           "DEFAULT_THRESHOLD", "THRESHOLDS", "threshold_array", "load_thresholds", "install_thresholds",
           "merge_thresholds", "carry_thresholds", "ThresholdsFile"]

# -- model names ------------------------------------------------------------------------------------------
CLIENT_MODEL, CLASSIFIER = "editguard", "editguard_classifier"  # the triple model, and its network
PRECHECK, PRECHECK_CLASSIFIER = "editguard_precheck", "editguard_precheck_classifier"  # before generation
CLIENT_MODELS = (CLIENT_MODEL, PRECHECK)  # what clients call
EXPLAIN = "editguard_explain"  # opt-in (`export --explain`): why editguard's same version flagged a triple
PAIRS = {CLIENT_MODEL: CLASSIFIER, PRECHECK: PRECHECK_CLASSIFIER}  # client model -> its network
PROMPTS = {CLIENT_MODEL: "editguard_prompt", PRECHECK: "editguard_precheck_prompt"}  # -> its frozen prompt tower
# the Python steps of the triple model's ensemble graph (before and after the networks)
PREPARE, VERDICTS = "editguard_prepare", "editguard_verdicts"

# -- tensor names -----------------------------------------------------------------------------------------
# what a client sends: encoded images (TYPE_STRING [1]) or prepared pixels (the pixels path), and the prompt
ENCODED_INPUTS = ("INPUT_IMAGE", "OUTPUT_IMAGE", "MASK")
PIXELS_INPUTS = ("INPUT_PIXELS", "OUTPUT_PIXELS", "MASK_PIXELS")
PROMPT, PIXELS_SPEC = "PROMPT", "PIXELS_SPEC"
# TYPE_BOOL [1], optional, the triple model only: true where the item is an edit session's cumulative triple, whose
# prompt (the turn prompts joined) the model reads turn by turn (model.preprocess, ``session_turns``)
CUMULATIVE = "CUMULATIVE"
OUTPUTS = ("SCORES", "FLAGGED", "UNSAFE", "LABELS")  # what every client model answers
# and what one exported by this editguard answers too: the thresholds FLAGGED was judged at, which a client
# session's escalation multiplies (repositories exported before it still serve OUTPUTS)
THRESHOLDS_OUTPUT = "THRESHOLDS"
# the thresholds of an edit session's two checks, ``[2, C]`` a row: the step triple's, then the cumulative triple's
# (thresholds.json's "sessions" block, from `calibrate --sessions`; the one-shot thresholds where none is installed)
SESSION_THRESHOLDS_OUTPUT = "SESSION_THRESHOLDS"
SESSION_CHECKS = ("step", "cumulative")
# their Triton types; every input but PROMPT is optional (a request carries one complete set)
INPUT_TYPES = {"INPUT_IMAGE": "TYPE_STRING", "OUTPUT_IMAGE": "TYPE_STRING", "MASK": "TYPE_STRING",
               "INPUT_PIXELS": "TYPE_UINT8", "OUTPUT_PIXELS": "TYPE_UINT8", "MASK_PIXELS": "TYPE_UINT8",
               "PROMPT": "TYPE_STRING", "PIXELS_SPEC": "TYPE_STRING", CUMULATIVE: "TYPE_BOOL"}
OUTPUT_TYPES = {"SCORES": "TYPE_FP32", "FLAGGED": "TYPE_BOOL", "UNSAFE": "TYPE_BOOL", "LABELS": "TYPE_STRING",
                THRESHOLDS_OUTPUT: "TYPE_FP32", SESSION_THRESHOLDS_OUTPUT: "TYPE_FP32"}
# the networks: uint8 images, the prompt as token ids (or, for a frozen tower, its embedding), probabilities out
NETWORK_INPUTS = ("input_image", "output_image", "mask", "input_ids", "attention_mask")
PROMPT_EMBEDDING, LOGITS, PROBABILITIES = "prompt_embedding", "logits", "probabilities"

# -- limits on what a client sends ------------------------------------------------------------------------
MAX_IMAGE_BYTES = PreprocessConfig.max_image_bytes  # an encoded image (the served default); clients check it first
MAX_PROMPT_BYTES = 64 * 1024  # a prompt's UTF-8 bytes, checked by the client before sending


# -- layout -----------------------------------------------------------------------------------------------
def client_inputs(client_model: str) -> dict[str, str]:
    """``{input: Triton type}`` a client model declares: the pre-check takes no output image."""
    skip = ("OUTPUT_IMAGE", "OUTPUT_PIXELS", CUMULATIVE) if client_model == PRECHECK else ()
    return {k: v for k, v in INPUT_TYPES.items() if k not in skip}


def versions(repository: str | Path, model: str = CLIENT_MODEL) -> list[int]:
    """The version numbers of ``model`` on disk in ``repository``, ascending."""
    d = Path(repository) / model
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()) if d.exists() else []


def version_dir(repository: str | Path, model: str, version: str | int) -> Path:
    """``REPO/model/N``."""
    return Path(repository) / model / str(version)


def templates_dir() -> Path:
    """The committed ``model_repository/``: the source tree's (editable installs), else the copy a wheel
    ships as ``editguard/model_repository`` (a namespace package: no ``__init__.py``, so no ``__pycache__``
    that Triton would take for a model)."""
    src = Path(__file__).resolve().parent.parent / "model_repository"
    if (src / CLIENT_MODEL / "config.pbtxt").exists():
        return src
    return Path(str(resources.files("editguard.model_repository")))


def graph_models(client_model: str = CLIENT_MODEL, split_prompt: bool = False) -> list[str]:
    """The models one version of ``client_model`` is made of, in the order they land and load: the networks
    (the prompt tower when it is its own graph, then the classifier), the ensemble's Python steps, and the
    client model last."""
    if client_model not in PAIRS:
        raise ValueError(f"model must be one of {list(PAIRS)}, got {client_model!r}")
    return ([PROMPTS[client_model]] if split_prompt else []) + [PAIRS[client_model]] + \
        ([PREPARE, VERDICTS] if client_model == CLIENT_MODEL else []) + [client_model]


def write_labels(repository: str | Path, labels: list[str], client_model: str = CLIENT_MODEL) -> None:
    """``labels.txt``: the longest label list of the versions served side by side. A version may append
    categories to the others' (a model grown with ``train --from``), never drop, rename or reorder them: a
    category keeps its place in SCORES and FLAGGED across versions. Raises ValueError otherwise."""
    from ..files import write_text_atomic

    path = Path(repository) / client_model / "labels.txt"
    if path.exists() and versions(repository, client_model):
        have = path.read_text().split()
        n = min(len(have), len(labels))
        if have[:n] != labels[:n]:
            raise ValueError(f"{path} lists {have} but the model has {labels}; versions served side by side must "
                             "share their labels in order (a new version may only append categories): export into "
                             "a new repository")
        labels = max(have, labels, key=len)
    write_text_atomic(path, "\n".join(labels) + "\n")


def pixels_specs(repository: str | Path, client_model: str = CLIENT_MODEL) -> dict[str, dict]:
    """``{version: pixels spec}`` of the client model's versions on disk: what pixels-path clients prepare
    (the client model's config parameter ``preprocess``)."""
    return {str(v): ModelConfig.load(version_dir(repository, client_model, v) / "config.json")
            .preprocess.pixels_spec() for v in versions(repository, client_model)}


# -- thresholds.json --------------------------------------------------------------------------------------
DEFAULT_THRESHOLD = 0.5
THRESHOLDS = "thresholds.json"


def threshold_array(data: dict, labels: list[str]) -> np.ndarray:
    """``float32 [C]`` thresholds in ``labels`` order; raises ValueError on a malformed file."""
    cats = data.get("categories")
    if not isinstance(cats, dict):
        raise ValueError("thresholds.json needs a 'categories' object")
    out = []
    for name in labels:
        t = float(cats[name]["threshold"]) if name in cats else DEFAULT_THRESHOLD
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold of {name!r} is {t}, outside [0, 1]")
        out.append(t)
    return np.array(out, np.float32)


def session_threshold_array(data: dict, labels: list[str], one_shot: np.ndarray) -> np.ndarray:
    """``float32 [2, C]``: the thresholds of an edit session's step and cumulative checks, in ``labels`` order,
    from thresholds.json's ``sessions`` block (``calibrate --sessions``); a category it leaves out, or a
    file without the block, keeps its one-shot threshold (``one_shot``) for both."""
    out = np.stack([one_shot, one_shot]).astype(np.float32)
    block = data.get("sessions")
    if block is None:
        return out
    cats = block.get("categories") if isinstance(block, dict) else None
    if not isinstance(cats, dict):
        raise ValueError("thresholds.json's 'sessions' needs a 'categories' object")
    for j, name in enumerate(labels):
        for i, check in enumerate(SESSION_CHECKS):
            if name in cats:
                t = float(cats[name][check])
                if not 0.0 <= t <= 1.0:
                    raise ValueError(f"session {check} threshold of {name!r} is {t}, outside [0, 1]")
                out[i, j] = t
    return out


def load_thresholds(version_path: str | Path, labels: list[str]) -> np.ndarray:
    """The thresholds of a version dir, or the defaults when it has no thresholds.json."""
    path = Path(version_path) / THRESHOLDS
    if not path.exists():
        return np.full(len(labels), DEFAULT_THRESHOLD, np.float32)
    return threshold_array(json.loads(path.read_text()), labels)


def install_thresholds(doc: dict, repository: str | Path, version: str | None = None,
                       model: str = CLIENT_MODEL) -> Path:
    """Write ``doc`` as thresholds.json beside its version of ``model`` (``editguard`` or
    ``editguard_precheck``) in a Triton repository, atomically.

    The served model re-reads the file when it changes, so no restart or reload is needed.
    """
    from ..files import write_json_atomic

    version = str(version or doc.get("model_version") or "")
    target = version_dir(repository, model, version)
    if not version or not target.is_dir():
        raise FileNotFoundError(f"no model version {version!r} under {Path(repository) / model}; "
                                "pass --version, or score with the version you calibrate")
    write_json_atomic(target / THRESHOLDS, dict(doc, model_version=version))
    return target / THRESHOLDS


def merge_thresholds(doc: dict, repository: str | Path, model: str = CLIENT_MODEL) -> dict:
    """``calibrate --only``: ``doc``'s categories over the installed thresholds.json of its version, the
    others' entries kept as they are, with ``updated`` saying what changed."""
    import warnings

    path = version_dir(repository, model, doc["model_version"]) / THRESHOLDS
    if not path.exists():
        warnings.warn(f"{path} does not exist: the categories not calibrated now stay at the default threshold",
                      UserWarning)
        return doc
    base = json.loads(path.read_text())
    return dict(base, categories={**base.get("categories", {}), **doc["categories"]},
                model_version=doc["model_version"],
                updated={"created": doc["created"], "source": doc["source"], "n": doc["n"],
                         "categories": sorted(doc["categories"])})


def keep_session_thresholds(doc: dict, repository: str | Path, model: str = CLIENT_MODEL) -> dict:
    """``calibrate --install`` of one-shot thresholds: ``doc`` with the ``sessions`` block of the installed
    thresholds.json of its version, if it has one (``calibrate --sessions`` chose it apart, for sessions)."""
    path = version_dir(repository, model, doc["model_version"]) / THRESHOLDS
    if not path.exists():
        return doc
    block = json.loads(path.read_text()).get("sessions")
    return dict(doc, sessions=block) if block else doc


def merge_session_thresholds(doc: dict, repository: str | Path, model: str = CLIENT_MODEL) -> dict:
    """``calibrate --sessions --install``: ``doc``'s ``sessions`` block over the installed thresholds.json of its
    version, whose one-shot thresholds stay as they are (one-shot calls keep them); the installed session
    thresholds of categories ``doc`` leaves out (``--only``) stay too."""
    import warnings

    path = version_dir(repository, model, doc["model_version"]) / THRESHOLDS
    if not path.exists():
        warnings.warn(f"{path} does not exist: one-shot verdicts stay at the default threshold; calibrate them on "
                      "one-shot results first", UserWarning)
        return dict(doc, categories={})
    base = json.loads(path.read_text())
    kept = (base.get("sessions") or {}).get("categories", {})
    sessions = dict(doc["sessions"], categories={**kept, **doc["sessions"]["categories"]})
    return dict(base, sessions=sessions, model_version=doc["model_version"])


def carry_thresholds(grown: dict, repository: str | Path, client_model: str, version: int) -> tuple[dict, str] | None:
    """The thresholds a grown model's new ``version`` starts with (``grown``: its ``grown_from.json``): those
    of the newest older version with the parent's labels, for those categories only, when the grown model
    scores them exactly as its parent (``old_scores: unchanged``). Returns the document and a line saying
    what was carried, or None."""
    older = sorted((v for v in versions(repository, client_model) if v < version), reverse=True)
    for v in older:
        d = version_dir(repository, client_model, v)
        if json.loads((d / "config.json").read_text())["labels"] != grown["labels"]:
            continue
        if not (d / THRESHOLDS).exists():
            return None
        if grown["old_scores"] != "unchanged":
            _logger.warning("the model retrained its old categories (--tune %s): their scores moved, so version %d's "
                            "thresholds are not carried over; calibrate every category", grown["tune"], v)
            return None
        doc = json.loads((d / THRESHOLDS).read_text())
        cats = {k: c for k, c in doc.get("categories", {}).items() if k in grown["labels"]}
        line = (f"thresholds of {', '.join(cats)} carried over from version {v} (the grown model scores them "
                f"exactly as its parent); {', '.join(grown['added'])} at {DEFAULT_THRESHOLD} until "
                f"`editguard calibrate RESULTS --only {','.join(grown['added'])} --install {repository}`")
        return dict(doc, categories=cats, model_version=str(version), carried_from=str(v)), line
    return None


class ThresholdsFile:
    """A version's thresholds.json as the served model watches it: :meth:`refresh` reads it when it is new or
    has changed on disk (so installing thresholds needs no reload), and goes back to the default of 0.5
    when it is removed. ``values``: ``float32 [C]`` in ``labels`` order; ``session_values``: ``float32 [2, C]``,
    an edit session's step and cumulative checks (:func:`session_threshold_array`)."""

    def __init__(self, version_path: str | Path, labels: list[str]):
        self.path, self.labels = Path(version_path) / THRESHOLDS, list(labels)
        self.values = np.full(len(self.labels), DEFAULT_THRESHOLD, np.float32)
        self.session_values = np.stack([self.values, self.values])  # [2, C]: a session's step and cumulative checks
        self._mtime: int | None = None

    def refresh(self, strict: bool = False) -> None:
        """A malformed file raises ValueError with ``strict``; otherwise it is logged and the current
        thresholds stay."""
        version = self.path.parent.name
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            if self._mtime is not None:
                self._mtime = None
                self.values = np.full(len(self.labels), DEFAULT_THRESHOLD, np.float32)
                self.session_values = np.stack([self.values, self.values])
                _logger.info("v%s: %s removed; thresholds back to %s", version, self.path, DEFAULT_THRESHOLD)
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            doc = json.loads(self.path.read_text())
            values = threshold_array(doc, self.labels)
            self.session_values = session_threshold_array(doc, self.labels, values)
            self.values = values
        except (ValueError, KeyError, TypeError) as e:
            if strict:
                raise ValueError(f"{self.path}: {e}") from e
            _logger.error("v%s: ignoring bad %s: %s", version, self.path, e)
            return
        _logger.info("v%s: thresholds from %s", version, self.path)
