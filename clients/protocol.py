"""The wire contract both clients speak: what goes into a request, what comes back, and how gRPC
errors map onto the client's exception tree. No network and no state here; :mod:`.call_state` holds
the per-call state machine, :mod:`.client` and :mod:`.aio` the sync and asyncio clients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

from ..connection import missing_header
from ..model.repository import (CUMULATIVE, ENCODED_INPUTS, MAX_IMAGE_BYTES, MAX_PROMPT_BYTES, OUTPUTS, PIXELS_INPUTS,
                                PIXELS_SPEC, PROMPT, SESSION_CHECKS, SESSION_THRESHOLDS_OUTPUT, THRESHOLDS_OUTPUT)
from .errors import DeadlineExceededError, EditGuardError, InvalidInputError, ServerError, ServerUnavailableError

__all__ = ["Verdict", "Triple", "ImageInput", "MAX_IMAGE_BYTES", "MAX_PROMPT_BYTES", "OUTPUTS", "encode_image",
           "check_prompt", "prepare", "build_inputs", "build_batch_inputs", "wants_pixels", "PixelsPrep",
           "published_specs", "spec_mismatch", "make_verdict", "parse_urls", "to_error", "mapped_errors",
           "with_item_id", "as_triple", "as_request"]

ImageInput = Union[bytes, bytearray, memoryview, str, Path, np.ndarray, "PIL.Image.Image"]


@dataclass(frozen=True)
class Verdict:
    """One triple's verdict. ``scores``/``flagged`` are keyed by category, in the server's label order."""

    unsafe: bool
    scores: dict[str, float]
    flagged: dict[str, bool]
    model_name: str
    model_version: str
    latency_ms: float  # client-side, retries included
    id: str | None = None
    # the served thresholds ``flagged`` was judged at (asked for by sessions; empty otherwise)
    thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
    # an edit session's thresholds, {"step": {category: t}, "cumulative": {...}} (asked for by sessions, from
    # `calibrate --sessions`; the one-shot thresholds where none are installed; empty where not served)
    session_thresholds: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def flagged_categories(self) -> list[str]:
        return [k for k, v in self.flagged.items() if v]


@dataclass
class Triple:
    """One edit to classify; ``id`` keys the result in ``classify_many``."""

    id: str
    input_image: ImageInput
    prompt: str
    output_image: ImageInput | None  # None: a request before generation (``precheck``)
    mask: ImageInput | None = None
    # an edit session's cumulative triple: the session's upload, the turn prompts joined
    # (editguard.model.session.cumulative_prompt), the latest output; the server reads its prompt turn by turn
    cumulative: bool = False


# -- requests ---------------------------------------------------------------------------------
def encode_image(image: ImageInput, field: str = "image", max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """Encoded bytes from bytes, a path, a PIL image or a uint8 array (arrays and PIL images become PNG)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, Path)):
        try:
            data = Path(image).read_bytes()
        except OSError as e:
            raise InvalidInputError(f"{field}: can't read {image}: {e.strerror}") from e
    else:
        from PIL import Image

        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise InvalidInputError(f"{field}: arrays must be uint8 HxW or HxWxC, got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise InvalidInputError(f"{field}: unsupported image type {type(image).__name__}")
        buf = io.BytesIO()
        image.save(buf, "PNG", compress_level=1)
        data = buf.getvalue()
    if not data:
        raise InvalidInputError(f"{field}: empty image")
    if len(data) > max_bytes:
        raise InvalidInputError(f"{field}: {len(data)} bytes is over the {max_bytes}-byte limit; downscale it first")
    return data


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a str, got {type(prompt).__name__}")
    if len(prompt.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
        raise InvalidInputError(f"prompt is over {MAX_PROMPT_BYTES} bytes")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(f"prompt is not encodable as UTF-8: {e}") from e
    return prompt


def prepare(input_image, prompt, output_image, mask) -> tuple[bytes, str, bytes | None, bytes | None]:
    """Validate and encode one triple on the client side (no network)."""
    return (encode_image(input_image, "input_image"), check_prompt(prompt),
            None if output_image is None else encode_image(output_image, "output_image"),
            None if mask is None else encode_image(mask, "mask"))


def _infer_inputs(module, fields: list[tuple[str, np.ndarray]]) -> list:
    """tritonclient InferInputs for ``(name, batched array)`` pairs (``module``: tritonclient.grpc or .grpc.aio)."""
    inputs = []
    for name, value in fields:
        kind = {np.dtype(np.uint8): "UINT8", np.dtype(bool): "BOOL"}.get(value.dtype, "BYTES")
        t = module.InferInput(name, list(value.shape), kind)
        t.set_data_from_numpy(value)
        inputs.append(t)
    return inputs


def build_inputs(module, input_image: bytes, prompt: str, output_image: bytes | None, mask: bytes | None) -> list:
    """The InferInputs of one encoded triple, or of a pre-check request when ``output_image`` is None."""
    return build_batch_inputs(module, [(input_image, prompt, output_image, mask)])


def build_batch_inputs(module, rows: Sequence[tuple[bytes, str, bytes | None, bytes | None]],
                       cumulative: Sequence[bool] = ()) -> list:
    """The InferInputs of one request carrying several encoded triples (a session turn's step and cumulative
    triple), one row each. When only some rows have a mask, the others send an empty MASK: no mask.
    ``cumulative``: which rows are a session's cumulative triple (CUMULATIVE, sent when any is)."""
    image, output, mask_name = ENCODED_INPUTS
    inputs, prompts, outputs, masks = zip(*rows)
    fields = [(image, inputs), (output, None if all(o is None for o in outputs) else outputs),
              (PROMPT, [p.encode("utf-8") for p in prompts]),
              (mask_name, [b"" if m is None else m for m in masks] if any(m is not None for m in masks) else None)]
    return _infer_inputs(module, [(name, np.array([[v] for v in col], dtype=np.object_))
                                  for name, col in fields if col is not None] + _cumulative_field(cumulative))


def _cumulative_field(cumulative: Sequence[bool]) -> list[tuple[str, np.ndarray]]:
    return [(CUMULATIVE, np.array([[bool(c)] for c in cumulative]))] if any(cumulative) else []


def explain_request(module, input_image: ImageInput, prompt: str, output_image: ImageInput,
                    mask: ImageInput | None, categories: Iterable[str] | None) -> dict:
    """The arguments of an ``infer`` call to ``editguard_explain`` (``export --explain``): the encoded triple,
    ``CATEGORIES`` when asked, and the one output, ``EXPLANATIONS``."""
    from ..model.repository import EXPLAIN

    inputs = build_inputs(module, encode_image(input_image, "input_image"), prompt,
                          encode_image(output_image, "output_image"),
                          None if mask is None else encode_image(mask, "mask"))
    if categories:
        names = np.array([[",".join(categories).encode()]], dtype=np.object_)
        inputs += _infer_inputs(module, [("CATEGORIES", names)])
    return {"model_name": EXPLAIN, "inputs": inputs, "outputs": [module.InferRequestedOutput("EXPLANATIONS")]}


def explanations(result) -> list[dict]:
    """The explanations of an ``editguard_explain`` answer (its one row)."""
    import json

    return json.loads(result.as_numpy("EXPLANATIONS")[0][0])


def no_explain_model(e: EditGuardError) -> EditGuardError:
    """The error for a server that serves no ``editguard_explain``: what to do about it."""
    from ..model.repository import EXPLAIN

    return ServerError(f"the server has no {EXPLAIN} ready ({e}); export the model with `editguard export MODEL_DIR "
                       f"--repository R --explain` and serve R again", status=e.status)


def is_decoded(image) -> bool:
    """A PIL image or an array: pixels the caller already holds."""
    if isinstance(image, np.ndarray):
        return True
    from PIL import Image

    return isinstance(image, Image.Image)


def wants_pixels(input_image, output_image, mask) -> bool:
    """Every image given is decoded (``output_image`` is None for a pre-check)."""
    return all(is_decoded(x) for x in (input_image, output_image, mask) if x is not None)


class PixelsPrep:
    """The pixels path's preparation for one served version: its spec and the shared preprocessing."""

    def __init__(self, version: str, spec: dict):
        from ..model.config import PreprocessConfig
        from ..model.preprocess import Preprocessor

        try:
            cfg = PreprocessConfig.from_pixels_spec(spec)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"can't prepare pixels for version {version} ({e}); send encoded images "
                                    "(pixels=False) or upgrade the client") from e
        self.version, self.spec = version, spec
        self.tag = json.dumps(spec, sort_keys=True).encode()
        self.pre = Preprocessor(cfg, tokenizer=None)

    def arrays(self, input_image, output_image, mask) -> dict[str, np.ndarray]:
        """Letterboxed ``uint8`` arrays; InvalidInputError names a bad image."""
        from ..model.preprocess import PreprocessError

        try:
            return self.pre.pixels(input_image, output_image, mask)
        except PreprocessError as e:
            raise InvalidInputError(str(e)) from e

    def inputs(self, module, arrays: Sequence[dict[str, np.ndarray]], prompts: Sequence[str], with_mask: bool,
               cumulative: Sequence[bool] = ()) -> list:
        """tritonclient InferInputs of one pixels-path request: a row per item of ``arrays`` (from
        :meth:`arrays`) and ``prompts``; a row without a mask of its own carries the all-255 mask.
        ``cumulative``: as for :func:`build_batch_inputs`."""
        image, output, mask = PIXELS_INPUTS
        stack = lambda key: np.stack([a[key] for a in arrays]) if key in arrays[0] else None  # noqa: E731
        fields = [(image, stack("input_image")), (output, stack("output_image")),
                  (PROMPT, np.array([[p.encode("utf-8")] for p in prompts], dtype=np.object_)),
                  (PIXELS_SPEC, np.array([[self.tag]] * len(arrays), dtype=np.object_)),
                  (mask, stack("mask") if with_mask else None)]
        return _infer_inputs(module, [(name, v) for name, v in fields if v is not None] + _cumulative_field(cumulative))


def published_specs(config: Mapping) -> dict[str, dict]:
    """``{version: pixels spec}`` from the client model's config (``get_model_config(..., as_json=True)``)."""
    raw = config.get("config", config).get("parameters", {}).get("preprocess", {}).get("string_value", "")
    try:
        specs = json.loads(raw) if raw else {}
    except ValueError:
        specs = {}
    if not isinstance(specs, dict) or not specs:
        raise ServerError("the server publishes no pixels preprocessing (parameter 'preprocess' of the model "
                          "config); re-export the model with this editguard, or send encoded images (pixels=False)")
    return specs


def spec_mismatch(err: EditGuardError) -> bool:
    """The server refused pixels prepared for another version's preprocessing."""
    return isinstance(err, InvalidInputError) and PIXELS_SPEC in str(err)


# -- responses and errors ---------------------------------------------------------------------
def make_verdict(result, model: str, latency_ms: float, item_id: str | None, row: int = 0) -> Verdict:
    """The verdict of row ``row`` of a response (a session turn's request carries two)."""
    scores, flagged, unsafe, labels, thresholds, session = (
        result.as_numpy(n) for n in (*OUTPUTS, THRESHOLDS_OUTPUT, SESSION_THRESHOLDS_OUTPUT))
    labels = [x.decode() if isinstance(x, bytes) else str(x) for x in labels[row]]
    response = result.get_response()
    by_label = lambda values: {k: float(v) for k, v in zip(labels, values)}  # noqa: E731
    return Verdict(bool(unsafe[row, 0]), by_label(scores[row]),
                   {k: bool(v) for k, v in zip(labels, flagged[row])}, response.model_name or model,
                   response.model_version, latency_ms, item_id,
                   by_label(thresholds[row]) if thresholds is not None else {},
                   {c: by_label(session[row, i]) for i, c in enumerate(SESSION_CHECKS)} if session is not None else {})


def parse_urls(url: str | Sequence[str]) -> list[str]:
    """``"host:port"``, ``"a:1,b:2"`` or a list of them -> a list of ``host:port``."""
    urls = [u.strip() for part in ([url] if isinstance(url, str) else url) for u in part.split(",") if u.strip()]
    if not urls:
        raise ValueError(f"url: give at least one host:port, got {url!r}")
    return urls


def _status(e: Exception) -> str:
    s = getattr(e, "status", None)
    s = s() if callable(s) else s
    return str(s or "").replace("StatusCode.", "")


def to_error(e: Exception, item_id: str | None = None) -> EditGuardError:
    """Map a tritonclient/gRPC error to the client's exception tree."""
    status = _status(e)
    msg = getattr(e, "message", lambda: str(e))() if callable(getattr(e, "message", None)) else str(e)
    cls = {"INVALID_ARGUMENT": InvalidInputError, "UNAVAILABLE": ServerUnavailableError,
           "RESOURCE_EXHAUSTED": ServerUnavailableError,
           "DEADLINE_EXCEEDED": DeadlineExceededError}.get(status, ServerError)
    if status == "UNAVAILABLE" and missing_header(e):
        # Triton refuses a call without a required header as UNAVAILABLE; it is not transient
        cls, status = ServerError, "PERMISSION_DENIED"
        msg += " (the server, or a proxy in front of it, wants this header: pass headers={...} to the client)"
    prefix = f"{item_id}: " if item_id else ""
    return cls(f"{prefix}{msg}", item_id=item_id, status=status or None)


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Re-raise what tritonclient raises inside the block as the client's exception tree (chained)."""
    try:
        yield
    except EditGuardError:
        raise
    except Exception as e:
        raise to_error(e) from e


def with_item_id(err: EditGuardError, item_id: str | None) -> EditGuardError:
    """The error with the item's id in front (once)."""
    if item_id and err.item_id is None:
        err.item_id = item_id
        err.args = (f"{item_id}: {err}",)
    return err


def as_triple(t) -> Triple:
    """A :class:`Triple`, a dict with its keys, or ``(id, input, prompt, output[, mask])`` -> a Triple."""
    if isinstance(t, Triple):
        return t
    if isinstance(t, Mapping):
        return Triple(str(t["id"]), t["input_image"], t["prompt"], t["output_image"], t.get("mask"),
                      bool(t.get("cumulative", False)))
    if isinstance(t, tuple) and len(t) in (4, 5):
        return Triple(str(t[0]), *t[1:])
    raise TypeError(f"can't classify {type(t).__name__}: give a Triple, a dict or (id, input, prompt, output[, mask])")


def as_request(t) -> Triple:
    """A pre-check request: a Triple without an output image (from a Triple, a dict, or ``(id, input,
    prompt[, mask])``)."""
    if isinstance(t, Triple):
        return Triple(t.id, t.input_image, t.prompt, None, t.mask)
    if isinstance(t, Mapping):
        return Triple(str(t["id"]), t["input_image"], t["prompt"], None, t.get("mask"))
    if isinstance(t, tuple) and len(t) in (3, 4):
        return Triple(str(t[0]), t[1], t[2], None, t[3] if len(t) == 4 else None)
    raise TypeError(f"can't pre-check {type(t).__name__}: give a Triple, a dict or (id, input, prompt[, mask])")
