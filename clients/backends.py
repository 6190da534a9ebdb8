"""Where batch scoring gets its verdicts: one result type, two backends.

- :class:`InProcessBackend`: an exported version run in this process
  (:class:`~editguard.serving.served.ServedVersion`: the served model's own preprocessing,
  checked onnxruntime call and thresholds), no server, no torch;
- :class:`ServerBackend`: a running Triton, through the thin client, with requests in flight so
  Triton's dynamic batcher forms batches.

Both take items with ``id``, ``input_image``, ``prompt``, ``output_image`` and ``mask`` (manifest
records or :class:`~editguard.clients.client.Triple` s) and yield one :class:`Scored` per item, in
any order. ``editguard score`` (:mod:`.score`) and its Ray actors (:mod:`.ray_engine`) use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

__all__ = ["Scored", "BackendConfig", "Backend", "InProcessBackend", "ServerBackend", "open_backend"]


@dataclass(frozen=True)
class Scored:
    """One item's outcome: scores and flags in ``labels`` order, or the error that stopped it
    (``error``: its kind, e.g. ``PreprocessError`` or ``InvalidInputError``; ``reason``: the message)."""

    id: str
    model_version: str = ""
    labels: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    flagged: tuple[bool, ...] = ()
    unsafe: bool = False
    error: str | None = None
    reason: str | None = None
    # the served thresholds of an edit session's step and cumulative checks, in ``labels`` order; () where the
    # backend did not say (a server exported before session thresholds)
    session_thresholds: tuple[tuple[float, ...], ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    def session_flags(self, check: str) -> tuple[bool, ...]:
        """The flags of this triple judged as an edit session's ``check`` (``"step"`` or ``"cumulative"``) is, as a
        client session judges it: each score against that check's threshold; the served verdict's own flags
        where the backend gave no session thresholds."""
        from ..model.repository import SESSION_CHECKS

        if not self.session_thresholds:
            return self.flagged
        return tuple(s >= t for s, t in zip(self.scores, self.session_thresholds[SESSION_CHECKS.index(check)]))

    @classmethod
    def failure(cls, item_id: str, e: Exception) -> "Scored":
        return cls(str(item_id), error=type(e).__name__, reason=str(e))


class Item(Protocol):
    id: str
    input_image: object
    prompt: str
    output_image: object
    mask: object


@dataclass
class BackendConfig:
    """Which backend to score with, and how; exactly one of ``server`` and ``repository``."""

    server: str | None = None  # Triton gRPC URL(s), comma-separated
    repository: str | None = None  # score in-process from this exported repository instead
    version: str = ""  # model version ("" = latest)
    precheck: bool = False  # score the pre-generation check (editguard_precheck: input image, prompt, mask)
    concurrency: int = 8  # requests in flight (server)
    batch_size: int = 32  # items per onnxruntime call (in-process)
    timeout: float = 30.0  # per-request deadline, retries included (server)
    # the client's TLS and headers (EditGuardClient's ssl, root_certificates, private_key,
    # certificate_chain, headers); with Ray, the certificate paths must exist where the actors run
    client_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.server is None) == (self.repository is None):
            raise ValueError("give exactly one of --server URL (score through Triton) or --repository REPO "
                             "(score in-process with onnxruntime)")


class Backend(Protocol):
    def score(self, items: Iterable[Item]) -> Iterator[Scored]: ...

    def close(self) -> None: ...


class InProcessBackend:
    """An exported version scored in this process, ``batch_size`` items per onnxruntime call."""

    def __init__(self, repository: str, version: str = "", *, precheck: bool = False, batch_size: int = 32,
                 threads: int = 0, gpu: bool = False):
        from ..model.repository import CLIENT_MODEL, PRECHECK
        from ..serving.served import ServedVersion

        self.served = ServedVersion.open(repository, PRECHECK if precheck else CLIENT_MODEL, version, threads=threads,
                                         cuda_device=0 if gpu else None)
        self.batch_size = batch_size

    def score(self, items: Iterable[Item]) -> Iterator[Scored]:
        from ..model.preprocess import PreprocessError

        items = list(items)
        s = self.served
        for start in range(0, len(items), self.batch_size):
            good, prepared = [], []
            for it in items[start:start + self.batch_size]:
                try:
                    prepared.append(s.prepare(it.input_image, it.prompt, it.output_image, it.mask,
                                              getattr(it, "cumulative", False)))
                    good.append(it)
                except PreprocessError as e:
                    yield Scored.failure(it.id, e)
            if not prepared:
                continue
            probs = s.probabilities(prepared)
            flags = s.flags(probs)
            session = tuple(tuple(map(float, row)) for row in s.session_thresholds)
            for it, p, f in zip(good, probs, flags):
                yield Scored(str(it.id), s.version, tuple(s.labels), tuple(map(float, p)), tuple(map(bool, f)),
                             bool(f.any()), session_thresholds=session)

    def close(self) -> None:
        self.served = None


class ServerBackend:
    """A running Triton through :class:`~editguard.clients.client.EditGuardClient`, ``concurrency``
    requests in flight."""

    def __init__(self, cfg: BackendConfig):
        from .client import EditGuardClient

        pin = {"precheck_version": cfg.version} if cfg.precheck else {"version": cfg.version}
        self.client = EditGuardClient(cfg.server, timeout=cfg.timeout, **pin, **cfg.client_options)
        self.client.wait_ready(timeout=cfg.timeout, model=self.client.precheck_model if cfg.precheck else None)
        self.precheck, self.concurrency = cfg.precheck, cfg.concurrency

    def score(self, items: Iterable[Item]) -> Iterator[Scored]:
        from .client import Triple, Verdict

        from ..model.repository import SESSION_CHECKS, SESSION_THRESHOLDS_OUTPUT, THRESHOLDS_OUTPUT

        triples = (Triple(str(r.id), r.input_image, r.prompt, r.output_image, r.mask, getattr(r, "cumulative", False))
                   for r in items)
        if self.precheck:
            results = self.client.precheck_many(triples, concurrency=self.concurrency)
        else:  # with the session thresholds, for the turns of a manifest with sessions
            results = self.client.classify_many(triples, concurrency=self.concurrency,
                                                outputs=(THRESHOLDS_OUTPUT, SESSION_THRESHOLDS_OUTPUT))
        for item_id, res in results:
            if isinstance(res, Verdict):
                session = tuple(tuple(res.session_thresholds[c][k] for k in res.scores) for c in SESSION_CHECKS
                                if c in res.session_thresholds)
                yield Scored(item_id, res.model_version, tuple(res.scores), tuple(res.scores.values()),
                             tuple(res.flagged.values()), res.unsafe, session_thresholds=session)
            else:
                yield Scored.failure(item_id, res)

    def close(self) -> None:
        self.client.close()


def open_backend(cfg: BackendConfig, threads: int = 0, gpu: bool = False) -> Backend:
    """The backend ``cfg`` names, ready: in-process on ``cfg.repository`` (``threads`` onnxruntime
    threads, the CUDA provider with ``gpu``), or through ``cfg.server``."""
    if cfg.repository:
        return InProcessBackend(cfg.repository, cfg.version, precheck=cfg.precheck, batch_size=cfg.batch_size,
                                threads=threads, gpu=gpu)
    return ServerBackend(cfg)

