"""The thin gRPC client: encoded images and a prompt in, a :class:`Verdict` out.

Needs only numpy, Pillow and ``tritonclient[grpc]`` (the base install)::

    from editguard.clients import EditGuardClient

    with EditGuardClient("localhost:8001") as guard:
        verdict = guard.classify("in.png", "make them beautiful", out_png_bytes)
        if verdict.unsafe:
            ...

Images may be encoded bytes, file paths, PIL images or uint8 arrays. Encoded images and paths
travel as they are and the server decodes them. When both images (and the mask, if any) are
already decoded, PIL images or arrays as an inpainting backend holds them, the client takes the
*pixels path*: it letterboxes them to the served version's input size with editguard's one
preprocessing module, configured from the server (parameter ``preprocess`` of the model config),
and sends uint8 tensors; nothing is encoded or decoded. If the answering version prepares pixels
differently (a roll-out changed the size), the server refuses with INVALID_ARGUMENT and the client
reads the configuration again and retries once.

Retries with exponential backoff happen only on UNAVAILABLE, RESOURCE_EXHAUSTED and
DEADLINE_EXCEEDED, within the call's deadline, and never for a bad request. With several
URLs, calls are spread round-robin and a failed endpoint's retry goes to the next one.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

from .errors import DeadlineExceededError, EditGuardError, InvalidInputError, ServerError, ServerUnavailableError

__all__ = ["ClientSettings", "EditGuardClient", "Verdict", "Triple", "ImageInput", "encode_image", "parse_urls",
           "MAX_IMAGE_BYTES", "PixelsPrep"]

ImageInput = Union[bytes, bytearray, memoryview, str, Path, np.ndarray, "PIL.Image.Image"]
MAX_IMAGE_BYTES = 32 * 1024 * 1024  # the server's limit; bigger images are refused before sending
MAX_PROMPT_BYTES = 64 * 1024
RETRY_STATUSES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
OUTPUTS = ("SCORES", "FLAGGED", "UNSAFE", "LABELS")


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

    @property
    def flagged_categories(self) -> list[str]:
        return [k for k, v in self.flagged.items() if v]


@dataclass
class Triple:
    """One edit to classify; ``id`` keys the result in :meth:`EditGuardClient.classify_many`."""

    id: str
    input_image: ImageInput
    prompt: str
    output_image: ImageInput | None  # None: a request before generation (EditGuardClient.precheck)
    mask: ImageInput | None = None


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
           "RESOURCE_EXHAUSTED": ServerUnavailableError, "DEADLINE_EXCEEDED": DeadlineExceededError}.get(status, ServerError)
    if status == "UNAVAILABLE" and "is restricted, expecting header" in msg:
        # Triton refuses a call without a required header as UNAVAILABLE; it is not transient
        cls, status = ServerError, "PERMISSION_DENIED"
        msg += " (the server, or a proxy in front of it, wants this header: pass headers={...} to the client)"
    prefix = f"{item_id}: " if item_id else ""
    return cls(f"{prefix}{msg}", item_id=item_id, status=status or None)


def build_inputs(module, input_image: bytes, prompt: str, output_image: bytes | None, mask: bytes | None) -> list:
    """tritonclient InferInput objects for one triple, or a pre-check request when ``output_image`` is
    None (``module``: tritonclient.grpc or .grpc.aio)."""
    fields = [("INPUT_IMAGE", input_image), ("OUTPUT_IMAGE", output_image), ("PROMPT", prompt.encode("utf-8"))]
    fields = [(name, value) for name, value in fields if value is not None]
    if mask is not None:
        fields.append(("MASK", mask))
    inputs = []
    for name, value in fields:
        t = module.InferInput(name, [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(t)
    return inputs


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


def prepare(input_image, prompt, output_image, mask) -> tuple[bytes, str, bytes, bytes | None]:
    """Validate and encode one triple on the client side (no network)."""
    return (encode_image(input_image, "input_image"), check_prompt(prompt),
            None if output_image is None else encode_image(output_image, "output_image"),
            None if mask is None else encode_image(mask, "mask"))


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

    def inputs(self, module, arrays: dict[str, np.ndarray], prompt: str, with_mask: bool) -> list:
        """tritonclient InferInputs of one pixels-path request."""
        fields = [("INPUT_PIXELS", arrays["input_image"]), ("OUTPUT_PIXELS", arrays.get("output_image")),
                  ("PROMPT", np.array([prompt.encode("utf-8")], dtype=np.object_)),
                  ("PIXELS_SPEC", np.array([self.tag], dtype=np.object_))]
        fields = [(name, value) for name, value in fields if value is not None]  # a pre-check has no output
        if with_mask:
            fields.append(("MASK_PIXELS", arrays["mask"]))
        inputs = []
        for name, value in fields:
            value = value[None]
            t = module.InferInput(name, list(value.shape), "UINT8" if value.dtype == np.uint8 else "BYTES")
            t.set_data_from_numpy(value)
            inputs.append(t)
        return inputs


def published_specs(config: Mapping) -> dict[str, dict]:
    """``{version: pixels spec}`` from the front model's config (``get_model_config(..., as_json=True)``)."""
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
    return isinstance(err, InvalidInputError) and "PIXELS_SPEC" in str(err)


def make_verdict(result, model: str, latency_ms: float, item_id: str | None) -> Verdict:
    scores = result.as_numpy("SCORES")[0]
    flagged = result.as_numpy("FLAGGED")[0]
    labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("LABELS")[0]]
    response = result.get_response()
    return Verdict(bool(result.as_numpy("UNSAFE")[0, 0]), {k: float(v) for k, v in zip(labels, scores)},
                   {k: bool(v) for k, v in zip(labels, flagged)}, response.model_name or model,
                   response.model_version, latency_ms, item_id)


class _Backoff:
    """Exponential backoff (capped at 1 s) until the deadline, or ``retries`` retries if given."""

    def __init__(self, timeout: float, retries: int | None, base: float):
        self.deadline = time.monotonic() + timeout
        self.retries, self.base, self.attempt = retries, base, 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def next_delay(self, status: str) -> float | None:
        """Seconds to wait before retrying, or None when this error must not (or can't) be retried."""
        self.attempt += 1
        if status not in RETRY_STATUSES or (self.retries is not None and self.attempt > self.retries):
            return None
        delay = min(self.base * 2 ** (self.attempt - 1), 1.0)
        return delay if self.remaining() > delay + 0.01 else None


@dataclass
class ClientSettings:
    """What both clients (sync and asyncio) are configured with."""

    url: str | Sequence[str]  # "host:port", "a:1,b:2" or a list: calls are spread round-robin
    model: str = "editguard"  # the client-facing model
    version: str = ""  # pin a model version; "" = the server's latest
    timeout: float = 10.0  # seconds for one call, retries included
    retries: int | None = None  # None: retry transient errors until the deadline; a number caps them
    backoff: float = 0.05  # first retry delay in seconds, doubled each time, capped at 1 s
    pixels: bool = True  # decoded images (PIL, arrays) are letterboxed here and sent as uint8 pixels
    # TLS (``editguard serve --tls-cert``): ``ssl``, implied by any certificate file; ``root_certificates``:
    # PEM of the CA that signed the server's certificate (default: the system's); ``private_key`` and
    # ``certificate_chain``: this client's PEM key and certificate, for mutual TLS
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    headers: Mapping[str, str] | None = None  # gRPC metadata on every call (an auth token for a front proxy)
    precheck_model: str = "editguard_precheck"  # the check before generation (:meth:`precheck`)
    precheck_version: str = ""  # pin a pre-check version; "" = the server's latest

    def _connect(self, aio: bool) -> list:
        """One tritonclient client per URL, with this configuration's TLS; validates the TLS files."""
        from .connection import Connection

        try:
            self._conn = Connection(self.ssl, self.root_certificates, self.private_key, self.certificate_chain,
                                    self.headers)
        except (ValueError, FileNotFoundError) as e:
            raise InvalidInputError(f"client TLS settings: {e}") from e
        self._urls = parse_urls(self.url)
        return [self._conn.grpc_client(u, aio=aio) for u in self._urls]

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict | None:
        return self._conn.call_headers(extra)

    def _version(self, model: str) -> str:
        return self.precheck_version if model == self.precheck_model else self.version

    def _choose_spec(self, model: str, specs: dict[str, dict], ready: set[str]) -> PixelsPrep:
        """The version a request to ``model`` goes to (the pinned one, else the newest ready), with its spec."""
        pinned = self._version(model)
        if pinned:
            if pinned not in specs:
                raise ServerError(f"version {pinned} of {model!r} publishes no pixels preprocessing")
            return PixelsPrep(pinned, specs[pinned])
        live = sorted((v for v in specs if v in ready), key=int)
        if not live:
            raise ServerUnavailableError(f"no version of {model!r} is ready")
        return PixelsPrep(live[-1], specs[live[-1]])


@dataclass
class EditGuardClient(ClientSettings):
    """Classify triples with a running editguard server over gRPC; a context manager.

    ``url``: ``host:port`` or a list of them (load spread round-robin). ``timeout``: the
    deadline of one classify call in seconds, retries included. ``version``: pin a model
    version ("" = the server's latest). ``retries``: None retries UNAVAILABLE,
    RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED until the deadline; a number caps them.
    """

    _clients: list = field(default_factory=list, init=False, repr=False)
    _rr: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self._clients = self._connect(aio=False)
        self._rr = itertools.count()
        self._lock = threading.Lock()
        self._prep: dict[str, PixelsPrep] = {}

    def pixels_prep(self, refresh: bool = False, offset: int = 0, model: str | None = None) -> PixelsPrep:
        """The served version's pixels preparation (of ``model``, default the triple model), read from
        the server once and kept (``refresh`` reads it again). Raises EditGuardError."""
        model = model or self.model
        prep = self._prep.get(model)
        if prep is None or refresh:
            client = self._pick(offset)
            try:
                specs = published_specs(client.get_model_config(model, headers=self._headers(), as_json=True))
                ready = {v for v in specs if client.is_model_ready(model, v, headers=self._headers())}
            except EditGuardError:
                raise
            except Exception as e:
                raise to_error(e) from e
            prep = self._prep[model] = self._choose_spec(model, specs, ready)
        return prep

    def _pick(self, offset: int = 0):
        with self._lock:
            i = next(self._rr)
        return self._clients[(i + offset) % len(self._clients)]

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        for c in self._clients:
            c.close()

    def __enter__(self) -> "EditGuardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ready(self, model: str | None = None) -> bool:
        """True when at least one endpoint has ``model`` (default: the triple model) ready."""
        model = model or self.model
        for c in self._clients:
            try:
                if c.is_model_ready(model, self._version(model), headers=self._headers()):
                    return True
            except Exception:  # an endpoint that does not answer is simply not ready
                continue
        return False

    def wait_ready(self, timeout: float = 60.0, model: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready(model):
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"model {model or self.model!r} not ready at {', '.join(self._urls)} "
                                             f"after {timeout:.0f} s; is `editguard serve` running?")
            time.sleep(0.2)

    # -- classification -----------------------------------------------------------------------
    def classify(self, input_image: ImageInput, prompt: str, output_image: ImageInput,
                 mask: ImageInput | None = None, *, timeout: float | None = None, id: str | None = None,
                 headers: Mapping[str, str] | None = None) -> Verdict:
        """Classify one triple. ``headers``: gRPC metadata for this call, over the client's own.
        Raises an :class:`EditGuardError` subclass."""
        if output_image is None:
            raise _for_item(InvalidInputError("output_image is required; before generation, use precheck()"), id)
        return self._call(self.model, input_image, prompt, output_image, mask, timeout, id, headers)

    def precheck(self, input_image: ImageInput, prompt: str, mask: ImageInput | None = None, *,
                 timeout: float | None = None, id: str | None = None,
                 headers: Mapping[str, str] | None = None) -> Verdict:
        """Check an edit request before generating it (the input image, the prompt, the mask if any),
        with ``precheck_model``: the same Verdict, from what the request shows. Same errors as classify."""
        return self._call(self.precheck_model, input_image, prompt, None, mask, timeout, id, headers)

    def _call(self, model: str, input_image, prompt, output_image, mask, timeout, id, headers) -> Verdict:
        t0 = time.perf_counter()
        pixels = self.pixels and wants_pixels(input_image, output_image, mask)
        inputs = None
        try:
            if not pixels:
                inputs = build_inputs(self._grpc, *prepare(input_image, prompt, output_image, mask))
            else:
                check_prompt(prompt)
        except InvalidInputError as e:
            raise _for_item(e, id)
        outputs = [self._grpc.InferRequestedOutput(n) for n in OUTPUTS]
        plan = _Backoff(timeout or self.timeout, self.retries, self.backoff)
        offset, refreshed = 0, False
        while True:
            try:
                if inputs is None:  # the pixels path: prepared for the version that will answer
                    prep = self.pixels_prep(refresh=refreshed, offset=offset, model=model)
                    arrays = prep.arrays(input_image, output_image, mask)
                    inputs = prep.inputs(self._grpc, arrays, prompt, mask is not None)
                result = self._pick(offset).infer(model, inputs, model_version=self._version(model), outputs=outputs,
                                                  client_timeout=max(plan.remaining(), 0.001),
                                                  headers=self._headers(headers))
                return make_verdict(result, model, (time.perf_counter() - t0) * 1e3, id)
            except Exception as e:  # tritonclient raises InferenceServerException for gRPC errors
                err = e if isinstance(e, EditGuardError) else to_error(e, id)
                if pixels and not refreshed and spec_mismatch(err):
                    refreshed, inputs = True, None  # a roll-out changed the preprocessing: read it again, once
                    continue
                delay = plan.next_delay(err.status or "")
                if delay is None:
                    raise _for_item(err, id) from e
                offset += 1  # the next attempt goes to the next endpoint
                time.sleep(delay)

    def classify_many(self, triples: Iterable[Triple | Mapping | tuple], *, concurrency: int = 8
                      ) -> Iterator[tuple[str, Verdict | EditGuardError]]:
        """Classify many triples with at most ``concurrency`` requests in flight.

        Yields ``(id, verdict)`` or ``(id, error)`` in completion order: one bad item is an
        error for that item only. Concurrency is what lets Triton's dynamic batcher form batches.
        Items may be :class:`Triple`, dicts with the same keys, or ``(id, input, prompt, output[, mask])``.
        """
        return self._many((_as_triple(t) for t in triples), concurrency, precheck=False)

    def precheck_many(self, requests: Iterable[Triple | Mapping | tuple], *, concurrency: int = 8
                      ) -> Iterator[tuple[str, Verdict | EditGuardError]]:
        """:meth:`classify_many` for :meth:`precheck`: items are :class:`Triple` (``output_image`` None),
        dicts with ``id``, ``input_image``, ``prompt`` and optional ``mask``, or ``(id, input, prompt[, mask])``."""
        return self._many((_as_request(t) for t in requests), concurrency, precheck=True)

    def _many(self, items: Iterator[Triple], concurrency: int, precheck: bool):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        with ThreadPoolExecutor(concurrency) as pool:
            pending = {}
            for t in itertools.islice(items, concurrency):
                pending[pool.submit(self._one, t, precheck)] = t.id
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    item_id = pending.pop(fut)
                    yield item_id, fut.result()
                    nxt = next(items, None)
                    if nxt is not None:
                        pending[pool.submit(self._one, nxt, precheck)] = nxt.id

    def _one(self, t: Triple, precheck: bool = False) -> Verdict | EditGuardError:
        try:
            if precheck:
                return self.precheck(t.input_image, t.prompt, t.mask, id=t.id)
            return self.classify(t.input_image, t.prompt, t.output_image, t.mask, id=t.id)
        except EditGuardError as e:
            return e


def _for_item(err: EditGuardError, item_id: str | None) -> EditGuardError:
    """The error with the item's id in front (once)."""
    if item_id and err.item_id is None:
        err.item_id = item_id
        err.args = (f"{item_id}: {err}",)
    return err


def _as_triple(t) -> Triple:
    if isinstance(t, Triple):
        return t
    if isinstance(t, Mapping):
        return Triple(str(t["id"]), t["input_image"], t["prompt"], t["output_image"], t.get("mask"))
    if isinstance(t, tuple) and len(t) in (4, 5):
        return Triple(str(t[0]), *t[1:])
    raise TypeError(f"can't classify {type(t).__name__}: give a Triple, a dict or (id, input, prompt, output[, mask])")


def _as_request(t) -> Triple:
    """A pre-check request: a Triple without an output image."""
    if isinstance(t, Triple):
        return Triple(t.id, t.input_image, t.prompt, None, t.mask)
    if isinstance(t, Mapping):
        return Triple(str(t["id"]), t["input_image"], t["prompt"], None, t.get("mask"))
    if isinstance(t, tuple) and len(t) in (3, 4):
        return Triple(str(t[0]), t[1], t[2], None, t[3] if len(t) == 4 else None)
    raise TypeError(f"can't pre-check {type(t).__name__}: give a Triple, a dict or (id, input, prompt[, mask])")
