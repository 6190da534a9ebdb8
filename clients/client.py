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
URLs, calls are spread round-robin and a failed endpoint's retry goes to the next one. That
state machine is :class:`~editguard.clients.call_state.Call`; the asyncio client (:mod:`.aio`)
drives the same one.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from .call_state import Call, ClientSettings, Home
from .errors import EditGuardError, InvalidInputError, ServerError
from .protocol import (MAX_IMAGE_BYTES, ImageInput, PixelsPrep, Triple, Verdict, as_request, as_triple, build_inputs,
                       encode_image, explain_request, explanations, mapped_errors, no_explain_model, parse_urls,
                       published_specs, to_error)
from .session import EditSession

__all__ = ["ClientSettings", "EditGuardClient", "Verdict", "Triple", "ImageInput", "encode_image", "parse_urls",
           "MAX_IMAGE_BYTES", "PixelsPrep", "build_inputs", "to_error"]


@dataclass
class EditGuardClient(ClientSettings):
    """Classify triples with a running editguard server over gRPC; a context manager.

    ``url``: ``host:port`` or a list of them (load spread round-robin). ``timeout``: the
    deadline of one classify call in seconds, retries included. ``version``: pin a model
    version ("" = the server's latest). ``retries``: None retries UNAVAILABLE,
    RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED until the deadline; a number caps them.
    """

    _clients: list = field(default_factory=list, init=False, repr=False)
    _session_type = EditSession  # what :meth:`session` makes

    def __post_init__(self) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self._clients = self._connect(aio=False)

    def pixels_prep(self, refresh: bool = False, offset: int = 0, model: str | None = None) -> PixelsPrep:
        """The served version's pixels preparation (of ``model``, default the triple model), read from
        the server once and kept (``refresh`` reads it again). Raises EditGuardError."""
        model = model or self.model
        if refresh or model not in self._prep:
            client = self._pick(offset)
            with mapped_errors():
                specs = published_specs(client.get_model_config(model, headers=self._headers(), as_json=True))
                ready = {v for v in specs if client.is_model_ready(model, v, headers=self._headers())}
            self._remember_spec(model, specs, ready)
        return self._prep[model]

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
            with contextlib.suppress(Exception):  # an endpoint that does not answer is simply not ready
                if c.is_model_ready(model, self._version(model), headers=self._headers()):
                    return True
        return False

    def wait_ready(self, timeout: float = 60.0, model: str | None = None) -> None:
        """Block until :meth:`ready`; ServerUnavailableError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready(model):
            if time.monotonic() > deadline:
                raise self._not_ready(model, timeout)
            time.sleep(0.2)

    # -- classification -----------------------------------------------------------------------
    def classify(self, input_image: ImageInput, prompt: str, output_image: ImageInput,
                 mask: ImageInput | None = None, *, timeout: float | None = None, id: str | None = None,
                 headers: Mapping[str, str] | None = None) -> Verdict:
        """Classify one triple. ``headers``: gRPC metadata for this call, over the client's own.
        Raises an :class:`EditGuardError` subclass."""
        return self._call(self.model, [(input_image, prompt, output_image, mask)], timeout, id, headers)[0]

    def precheck(self, input_image: ImageInput, prompt: str, mask: ImageInput | None = None, *,
                 timeout: float | None = None, id: str | None = None,
                 headers: Mapping[str, str] | None = None) -> Verdict:
        """Check an edit request before generating it (the input image, the prompt, the mask if any),
        with ``precheck_model``: the same Verdict, from what the request shows. Same errors as classify."""
        return self._call(self.precheck_model, [(input_image, prompt, None, mask)], timeout, id, headers)[0]

    def explain(self, input_image: ImageInput, prompt: str, output_image: ImageInput,
                mask: ImageInput | None = None, *, categories: Iterable[str] | None = None,
                timeout: float | None = None, headers: Mapping[str, str] | None = None) -> list[dict]:
        """Why the server's model flags this triple, from ``editguard_explain`` (written by ``editguard export
        --explain``, served at the same version as the verdicts): one dict per category (``categories``, default
        the ones flagged at the installed thresholds) with ``category``, ``score``, ``peak`` ``[x, y]`` and
        ``box`` ``[x0, y0, x1, y1]`` in the input image's pixels (None when no changed pixel carries the score),
        ``shares`` and ``contributions`` of the output, the change and the prompt. A backend can blur the box
        instead of refusing the whole edit. One call costs a torch pass and a backward pass on the server; it
        is not retried. Raises an :class:`EditGuardError` subclass: a server without ``editguard_explain``
        answers ServerError with what to do."""
        request = explain_request(self._grpc, input_image, prompt, output_image, mask, categories)
        client = self._pick()
        try:
            with mapped_errors():
                return explanations(client.infer(**request, model_version=self.version, headers=self._headers(headers),
                                                 client_timeout=timeout or self.timeout))
        except ServerError as e:
            ready = True
            with contextlib.suppress(Exception):  # the question may fail too: then the error stands as it is
                ready = client.is_model_ready(request["model_name"], self.version, headers=self._headers(headers))
            if not ready:
                raise no_explain_model(e) from e
            raise

    def _call(self, model: str, rows: list, timeout: float | None, item_id: str | None,
              headers: Mapping[str, str] | None, thresholds: tuple[str, ...] = (),
              cumulative: tuple[bool, ...] = (), home: Home | None = None) -> list[Verdict]:
        """One request of ``rows`` (``(input, prompt, output, mask)`` each): a Verdict per row (with the served
        thresholds when asked; ``cumulative``: which rows are a session's cumulative triple:
        :class:`~editguard.clients.call_state.Call`)."""
        call = Call(self, model, self._grpc, rows, timeout, item_id, headers, thresholds, cumulative, home)
        while True:
            try:
                if call.needs_pixels:
                    call.use_pixels(self.pixels_prep(call.refresh, call.offset, model))
                return call.verdicts(self._pick(call.offset, home).infer(**call.request()))
            except Exception as e:  # tritonclient raises InferenceServerException for gRPC errors
                time.sleep(call.retry_after(e))

    def classify_many(self, triples: Iterable[Triple | Mapping | tuple], *, concurrency: int = 8,
                      outputs: tuple[str, ...] = ()) -> Iterator[tuple[str, Verdict | EditGuardError]]:
        """Classify many triples with at most ``concurrency`` requests in flight.

        Yields ``(id, verdict)`` or ``(id, error)`` in completion order: one bad item is an
        error for that item only. Concurrency is what lets Triton's dynamic batcher form batches.
        Items may be :class:`Triple`, dicts with the same keys, or ``(id, input, prompt, output[, mask])``.
        ``outputs``: the served thresholds to return too (``"THRESHOLDS"``, ``"SESSION_THRESHOLDS"``), in each
        verdict's ``thresholds`` and ``session_thresholds``; a server that does not answer them (a version
        exported before them) is asked without them from then on, and those fields stay empty.
        """
        return self._many((as_triple(t) for t in triples), concurrency, self.model, tuple(outputs))

    def precheck_many(self, requests: Iterable[Triple | Mapping | tuple], *, concurrency: int = 8
                      ) -> Iterator[tuple[str, Verdict | EditGuardError]]:
        """:meth:`classify_many` for :meth:`precheck`: items are :class:`Triple` (``output_image`` None),
        dicts with ``id``, ``input_image``, ``prompt`` and optional ``mask``, or ``(id, input, prompt[, mask])``."""
        return self._many((as_request(t) for t in requests), concurrency, self.precheck_model)

    def _many(self, items: Iterator[Triple], concurrency: int, model: str, outputs: tuple[str, ...] = ()):
        self._check_concurrency(concurrency)
        asked = [outputs]  # emptied once the server refuses them

        def one(t: Triple) -> Verdict | EditGuardError:
            extra = asked[0]
            try:
                return self._call(model, [(t.input_image, t.prompt, t.output_image, t.mask)], None, t.id, None,
                                  extra, (t.cumulative,))[0]
            except InvalidInputError as e:
                if extra and any(name in str(e) for name in extra):
                    asked[0] = ()
                    return one(t)
                return e
            except EditGuardError as e:
                return e

        with ThreadPoolExecutor(concurrency) as pool:
            pending = {pool.submit(one, t): t.id for t in itertools.islice(items, concurrency)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
                    nxt = next(items, None)
                    if nxt is not None:
                        pending[pool.submit(one, nxt)] = nxt.id
