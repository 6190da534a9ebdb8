"""What the sync and the asyncio client share: their settings, and the one state machine of a call.

A call (:class:`Call`) is validated and encoded once, then tried until it succeeds, fails for good
or runs out of time:

- retries with exponential backoff (capped at 1 s) only on UNAVAILABLE, RESOURCE_EXHAUSTED and
  DEADLINE_EXCEEDED, within the call's deadline (``timeout``, retries included) and at most
  ``retries`` times when that is set; never for a bad request;
- each retry goes to the next endpoint when the client holds several;
- on the pixels path, a refusal because the answering version prepares pixels differently (a
  roll-out changed the input size) reads the served preprocessing again and retries at once, once;
- a version exported before sessions were read turn by turn refuses the CUMULATIVE input: the call is
  sent again at once without it (that version reads the joined prompt, as it was trained to), and the
  client stops sending it.

Both clients drive it the same way, the asyncio one with ``await`` where the sync one blocks::

    call = Call(settings, model, module, [(input_image, prompt, output_image, mask)], timeout, id, headers)
    while True:
        try:
            if call.needs_pixels:
                call.use_pixels(pixels_prep(call.refresh, call.offset, model))
            return call.verdicts(client_at(call.offset).infer(**call.request()))
        except Exception as e:
            sleep(call.retry_after(e))  # or raises the error the caller gets
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..model.repository import CLIENT_MODEL, CUMULATIVE, PRECHECK
from ..model.session import MAX_HISTORY
from .errors import EditGuardError, InvalidInputError, ServerError, ServerUnavailableError
from .protocol import (
    OUTPUTS,
    PixelsPrep,
    build_batch_inputs,
    check_prompt,
    make_verdict,
    parse_urls,
    prepare,
    spec_mismatch,
    to_error,
    wants_pixels,
    with_item_id,
)
from .session import SessionPolicy

__all__ = ["ClientSettings", "Call", "RETRY_STATUSES"]

RETRY_STATUSES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
MAX_BACKOFF = 1.0  # seconds


@dataclass
class ClientSettings:
    """What both clients (sync and asyncio) are configured with."""

    url: str | Sequence[str]  # "host:port", "a:1,b:2" or a list: calls are spread round-robin
    model: str = CLIENT_MODEL  # the client model
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
    precheck_model: str = PRECHECK  # the check before generation (``precheck``)
    precheck_version: str = ""  # pin a pre-check version; "" = the server's latest

    def session(self, upload, *, escalation: float = 0.5, max_history: int = MAX_HISTORY):
        """An edit session starting from ``upload`` (:mod:`editguard.clients.session`): each turn's
        ``classify(prompt, output)`` judges the step and the whole edit since the upload in one request.
        ``escalation``: after a refusal, later turns flag at this times the served thresholds (1: off);
        ``max_history``: the accepted turn prompts the cumulative prompt carries."""
        return self._session_type(self, upload, SessionPolicy(escalation, max_history))

    def _connect(self, aio: bool) -> list:
        """One tritonclient client per URL, with this configuration's TLS; validates the TLS files."""
        from ..connection import Connection

        try:
            self._conn = Connection(self.ssl, self.root_certificates, self.private_key, self.certificate_chain,
                                    self.headers)
        except (ValueError, FileNotFoundError) as e:
            raise InvalidInputError(f"client TLS settings: {e}") from e
        self._urls = parse_urls(self.url)
        self._prep: dict[str, PixelsPrep] = {}
        self._turns = itertools.count()  # next() on a count is atomic: no lock for the threads of classify_many
        self._cumulative_refused = False  # the server refused CUMULATIVE once: sessions send the joined prompt alone
        return [self._conn.grpc_client(u, aio=aio) for u in self._urls]

    def _home(self) -> Home:
        """A :class:`Home` at the next endpoint round-robin."""
        return Home(next(self._turns))

    def _pick(self, offset: int = 0, home: Home | None = None):
        """The next endpoint's tritonclient client, round-robin (``offset``: how many further along); ``home``:
        start from that endpoint instead (an edit session keeps its turns on one)."""
        return self._clients[((next(self._turns) if home is None else home.index) + offset) % len(self._clients)]

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict | None:
        return self._conn.call_headers(extra)

    def _version(self, model: str) -> str:
        return self.precheck_version if model == self.precheck_model else self.version

    def _not_ready(self, model: str | None, timeout: float) -> ServerUnavailableError:
        return ServerUnavailableError(f"model {model or self.model!r} not ready at {', '.join(self._urls)} after "
                                      f"{timeout:.0f} s; is `editguard serve` running?")

    def _check_concurrency(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")

    def _remember_spec(self, model: str, specs: dict[str, dict], ready: set[str]) -> PixelsPrep:
        """Keep (and return) the pixels preparation of the version a request to ``model`` goes to: the
        pinned one, else the newest ready one; ``specs``: what the client model publishes, by version."""
        pinned = self._version(model)
        if pinned:
            if pinned not in specs:
                raise ServerError(f"version {pinned} of {model!r} publishes no pixels preprocessing")
            chosen = pinned
        else:
            live = sorted((v for v in specs if v in ready), key=int)
            if not live:
                raise ServerUnavailableError(f"no version of {model!r} is ready")
            chosen = live[-1]
        self._prep[model] = PixelsPrep(chosen, specs[chosen])
        return self._prep[model]


@dataclass
class Home:
    """The endpoint a run of calls keeps to (an edit session's turns: the server there caches their earlier
    work), as an index into the client's endpoints. A call that another endpoint answered moves it there, so
    a session whose endpoint went down pays the failed attempt once, not on every turn."""

    index: int


class Call:
    """One classify or precheck call: its inputs, where it goes next, and what follows a failure.

    Built, it has validated and (on the bytes path) encoded the request; an InvalidInputError
    names the item. ``module``: tritonclient.grpc or tritonclient.grpc.aio.
    """

    def __init__(self, settings: ClientSettings, model: str, module, rows: Sequence[tuple], timeout: float | None,
                 item_id: str | None, headers: Mapping[str, str] | None, thresholds: tuple[str, ...] = (),
                 cumulative: Sequence[bool] = (), home: Home | None = None):
        """``rows``: the request's items, ``(input_image, prompt, output_image, mask)`` each: one triple, or a
        session turn's step and cumulative triple. ``thresholds``: outputs to ask for besides the verdicts, the
        served thresholds (THRESHOLDS, SESSION_THRESHOLDS: a session's checks and escalation need them; a
        repository exported before them refuses the request). ``cumulative``: per row, whether it is a session's
        cumulative triple (sent as CUMULATIVE). ``home``: the endpoint the call starts from (:class:`Home`),
        moved to the one that answers."""
        self.t0 = time.perf_counter()
        self.home = home
        self.outputs = (*OUTPUTS, *thresholds)
        self.settings, self.model, self.module, self.item_id = settings, model, module, item_id
        self.rows, self.headers = list(rows), headers
        self.pixels = settings.pixels and all(wants_pixels(i, o, m) for i, _, o, m in self.rows)
        self.cumulative = list(cumulative) if any(cumulative) and not settings._cumulative_refused else []
        try:
            if any(o is None for _, _, o, _ in self.rows) and model != settings.precheck_model:
                raise InvalidInputError("output_image is required; before generation, use precheck()")
            self.inputs = None  # on the pixels path, prepared once the answering version's spec is known
            if self.pixels:
                for _, prompt, _, _ in self.rows:
                    check_prompt(prompt)
            else:
                self.encoded = [prepare(*row) for row in self.rows]
                self.inputs = build_batch_inputs(module, self.encoded, self.cumulative)
        except InvalidInputError as e:
            raise with_item_id(e, item_id)
        self.deadline = time.monotonic() + (timeout or settings.timeout)
        self.offset, self.attempt, self.refresh = 0, 0, False

    @property
    def needs_pixels(self) -> bool:
        """The pixels path, and the pixels are not (or no longer) prepared for the answering version."""
        return self.inputs is None

    def use_pixels(self, prep: PixelsPrep) -> None:
        """Letterbox the decoded images with ``prep`` (the answering version's preprocessing)."""
        arrays = [prep.arrays(i, o, m) for i, _, o, m in self.rows]
        self.inputs = prep.inputs(self.module, arrays, [p for _, p, _, _ in self.rows],
                                  any(m is not None for *_, m in self.rows), self.cumulative)

    def request(self) -> dict:
        """Keyword arguments of tritonclient's ``infer`` for the next attempt."""
        return {"model_name": self.model, "inputs": self.inputs, "model_version": self.settings._version(self.model),
                "outputs": [self.module.InferRequestedOutput(n) for n in self.outputs],
                "client_timeout": max(self.deadline - time.monotonic(), 0.001),
                "headers": self.settings._headers(self.headers)}

    def verdicts(self, result) -> list:
        """One :class:`~editguard.clients.protocol.Verdict` per row of the request."""
        ms = (time.perf_counter() - self.t0) * 1e3
        if self.home is not None:
            self.home.index += self.offset
        return [make_verdict(result, self.model, ms, self.item_id, k) for k in range(len(self.rows))]

    def retry_after(self, e: Exception) -> float:
        """Seconds to wait before the next attempt after ``e``; raises the error the caller gets (mapped to
        the client's exception tree, chained to ``e``, with the item's id) when the call is over."""
        err = e if isinstance(e, EditGuardError) else to_error(e, self.item_id)
        if self.pixels and not self.refresh and spec_mismatch(err):
            self.refresh, self.inputs = True, None  # a roll-out changed the preprocessing: read it again, once
            return 0.0
        if self.cumulative and isinstance(err, InvalidInputError) and CUMULATIVE in str(err):
            # a version exported before sessions were read turn by turn: it reads the joined prompt, as trained
            self.settings._cumulative_refused, self.cumulative = True, []
            self.inputs = None if self.pixels else build_batch_inputs(self.module, self.encoded)
            return 0.0
        self.attempt += 1
        retries = self.settings.retries
        if (err.status or "") in RETRY_STATUSES and (retries is None or self.attempt <= retries):
            delay = min(self.settings.backoff * 2 ** (self.attempt - 1), MAX_BACKOFF)
            if self.deadline - time.monotonic() > delay + 0.01:
                self.offset += 1  # the next attempt goes to the next endpoint
                return delay
        raise with_item_id(err, self.item_id) from e
