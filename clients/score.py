"""``editguard score``: offline batch scoring of a manifest, resumable and exactly-once by id.

Two backends, one output schema (see :mod:`editguard.clients.results`):

- ``--server URL``: through Triton with the thin client (the production path), with
  ``--concurrency`` requests in flight so Triton's dynamic batcher forms batches;
- ``--repository REPO``: in-process, with onnxruntime on the exported ONNX and the same
  preprocessing and thresholds as the served version; no server, no torch.

and two engines: ``local`` (this process) and ``ray`` (a Ray Data actor pool, each actor holding
one of the backends above; see :mod:`editguard.clients.ray_engine`). Either way this process
reads the manifest, skips done ids and writes every row, so both engines share one writer.

Per-item failures go to ``<out>.errors.jsonl`` with the reason, and the run goes on. A rerun
skips ids already written and retries the ones that failed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .results import ErrorLog, ResultWriter, read_results, results_arrays

_logger = logging.getLogger(__name__)

__all__ = ["ScoreConfig", "ScoreSummary", "score", "LocalScorer", "Failure", "open_backend", "outcomes"]


@dataclass
class ScoreConfig:
    manifest: str  # JSONL/Parquet/CSV manifest (labels optional)
    out: str  # results: a .jsonl file, or a folder of Parquet parts
    server: str | None = None  # Triton gRPC URL(s), comma-separated
    repository: str | None = None  # score in-process from this exported repository instead
    version: str = ""  # model version ("" = latest)
    concurrency: int = 8  # requests in flight (server) or items per batch (in-process: batch_size)
    batch_size: int = 32  # in-process batch size
    timeout: float = 30.0  # per-request deadline, retries included (server)
    allow_outside_root: bool = False
    progress: bool = True
    engine: str = "local"  # "local": this process; "ray": a Ray Data actor pool
    workers: int | None = None  # ray: actors (default: as many as the cluster's CPUs, or GPUs, allow)
    cpus_per_worker: float = 1.0  # ray: CPUs each actor reserves (and onnxruntime threads it uses)
    ray_address: str | None = None  # ray: a running cluster ("auto", "ray://head:10001"); default starts one here
    # server: the client's TLS and headers (EditGuardClient's ssl, root_certificates, private_key,
    # certificate_chain, headers); with Ray, the certificate paths must exist where the actors run
    client_options: dict = field(default_factory=dict)
    precheck: bool = False  # score the pre-generation check (editguard_precheck: input image, prompt, mask)

    def __post_init__(self) -> None:
        if (self.server is None) == (self.repository is None):
            raise ValueError("give exactly one of --server URL (score through Triton) or --repository REPO "
                             "(score in-process with onnxruntime)")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass
class Failure:
    """One item that could not be scored: the error's kind and the reason, as the errors file shows them."""

    kind: str
    reason: str

    @classmethod
    def of(cls, e: Exception) -> "Failure":
        return cls(type(e).__name__, str(e))


@dataclass
class ScoreSummary:
    scored: int  # rows written by this run
    skipped: int  # ids already in the results
    errors: int  # ids that failed in this run
    seconds: float
    total_rows: int  # rows in the results now
    report: dict | None = None  # metrics over all rows, when the manifest has labels


def _row(item_id: str, version: str, labels: list[str], scores, flagged, unsafe: bool, rec) -> dict:
    row = {"id": item_id, "model_version": str(version), "unsafe": bool(unsafe)}
    row.update({f"score_{c}": float(s) for c, s in zip(labels, scores)})
    row.update({f"flag_{c}": bool(f) for c, f in zip(labels, flagged)})
    if rec.has_labels:
        row["labels"] = list(rec.labels)
    if rec.meta:
        row["meta"] = json.dumps(rec.meta, sort_keys=True)  # a JSON string, so Parquet parts share one schema
    return row


class LocalScorer:
    """One exported version run in-process: preprocessing + onnxruntime + thresholds."""

    def __init__(self, repository: str | Path, version: str = "", threads: int | None = None, gpu: bool = False,
                 model: str = "editguard"):
        from ..export.repository import PAIRS, versions
        from ..model.preprocess import Preprocessor
        from ..model.thresholds import load_thresholds

        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("in-process scoring needs onnxruntime: pip install 'editguard[serve]'") from e
        repo = Path(repository)
        have = versions(repo, model)
        if not have:
            raise FileNotFoundError(f"{repo} has no exported versions of {model}; run `editguard export MODEL_DIR "
                                    f"--repository {repo}`")
        self.version = str(version or max(have))
        self.precheck = model != "editguard"
        front = repo / model / self.version
        self.pre = Preprocessor.from_dir(front)
        self.labels = json.loads((front / "config.json").read_text())["labels"]
        self.thresholds = load_thresholds(front, self.labels)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(repo / PAIRS[model] / self.version / "model.onnx"), opts,
                                            providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def close(self) -> None:
        """Release the onnxruntime session."""
        self.session = None

    def score(self, records, batch_size: int) -> Iterator[tuple[str, object]]:
        """Yields ``(id, (scores, flagged, unsafe))`` or ``(id, Failure)``; records need ``id``,
        ``input_image``, ``prompt``, ``output_image`` and ``mask`` (paths or bytes)."""
        from ..model.preprocess import PreprocessError, collate

        for start in range(0, len(records), batch_size):
            good, items = [], []
            for r in records[start:start + batch_size]:
                try:
                    output = None if self.precheck else r.output_image  # the pre-check never sees it
                    items.append(self.pre.triple(r.input_image, r.prompt, output, r.mask))
                    good.append(r)
                except PreprocessError as e:
                    yield r.id, Failure.of(e)
            if not items:
                continue
            batch = collate(items)
            probs = self.session.run(["probabilities"], {k: batch[k] for k in self.inputs})[0]
            flags = probs >= self.thresholds
            for r, p, f in zip(good, probs, flags):
                yield r.id, (p, f, bool(f.any()))


def score(cfg: ScoreConfig) -> ScoreSummary:
    """Score every record of ``cfg.manifest`` not yet in ``cfg.out``; see the module docstring."""
    from ..progress import progress
    from ..training.manifest import read_manifest

    t0 = time.perf_counter()
    records = read_manifest(cfg.manifest, require_labels=False, allow_outside_root=cfg.allow_outside_root)
    out = Path(cfg.out)
    writer, errors = ResultWriter(out), ErrorLog(out)
    todo = [r for r in records if r.id not in writer.done]
    skipped, scored, failed = len(records) - len(todo), 0, 0
    by_id = {r.id: r for r in todo}
    bar = progress(total=len(todo), unit="triple", desc="score", disable=not cfg.progress, smoothing=0.1)
    try:
        for item_id, result, version, labels in _results(cfg, todo):
            if isinstance(result, Failure):
                errors.add(item_id, result.kind, result.reason)
                failed += 1
            else:
                scores, flagged, unsafe = result
                writer.write(_row(item_id, version, labels, scores, flagged, unsafe, by_id[item_id]))
                scored += 1
            bar.update()
            bar.set_postfix(errors=failed)
    finally:
        bar.close()
        writer.close()
        errors.close(writer.done)
    rows = read_results(out)
    return ScoreSummary(scored, skipped, failed, round(time.perf_counter() - t0, 2), len(rows), _report(rows))


def _results(cfg: ScoreConfig, todo) -> Iterator[tuple[str, object, str, list[str]]]:
    """``(id, (scores, flagged, unsafe) or Failure, model version, labels)`` for every record of ``todo``."""
    if cfg.engine == "ray":
        from .ray_engine import ray_results

        yield from ray_results(cfg, todo)
        return
    backend = open_backend(cfg)
    try:
        yield from outcomes(backend, todo, cfg)
    finally:
        backend.close()


def open_backend(cfg: ScoreConfig, threads: int | None = None, gpu: bool = False):
    """The backend ``cfg`` names: a :class:`LocalScorer` on ``cfg.repository``, or an
    :class:`EditGuardClient` on ``cfg.server``, ready. Both have ``close()``."""
    if cfg.repository:
        return LocalScorer(cfg.repository, cfg.version, threads=threads, gpu=gpu,
                           model="editguard_precheck" if cfg.precheck else "editguard")
    from .client import EditGuardClient

    pin = {"precheck_version": cfg.version} if cfg.precheck else {"version": cfg.version}
    client = EditGuardClient(cfg.server, timeout=cfg.timeout, **pin, **cfg.client_options)
    client.wait_ready(timeout=cfg.timeout, model=client.precheck_model if cfg.precheck else None)
    return client


def outcomes(backend, items, cfg: ScoreConfig) -> Iterator[tuple[str, object, str, list[str]]]:
    """What :func:`_results` yields, for ``items`` (records or :class:`Triple` s) on ``backend``
    (see :func:`open_backend`): batches of ``cfg.batch_size`` in-process, or ``cfg.concurrency``
    requests in flight to Triton."""
    if isinstance(backend, LocalScorer):
        for item_id, res in backend.score(items, cfg.batch_size):
            yield item_id, res, backend.version, backend.labels
        return
    from .client import Triple, Verdict

    triples = (Triple(r.id, r.input_image, r.prompt, r.output_image, r.mask) for r in items)
    many = backend.precheck_many if cfg.precheck else backend.classify_many
    for item_id, res in many(triples, concurrency=cfg.concurrency):
        if isinstance(res, Verdict):
            yield item_id, (list(res.scores.values()), list(res.flagged.values()), res.unsafe), \
                res.model_version, list(res.scores)
        else:
            yield item_id, Failure.of(res), "", []


def _report(rows: list[dict]) -> dict | None:
    if not rows or rows[0].get("labels") is None:
        return None
    try:
        from ..training.metrics import classification_report
    except ImportError:
        return None
    labels, scores, y = results_arrays(rows)
    try:
        return classification_report(y, scores, labels)
    except ImportError:
        _logger.info("metrics need scikit-learn: pip install 'editguard[calibrate]'")
        return None
