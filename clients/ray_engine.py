"""``editguard score --engine ray``: batch scoring on a Ray cluster with Ray Data.

The pipeline::

    validated manifest rows (ids not yet scored) ── ray.data.from_items ──►
    map_batches(_ScoreActor, ActorPoolStrategy(size=workers)) ──► iter_batches (Scored) ──► ResultWriter

- Each actor holds one backend (:mod:`editguard.clients.backends`) for its lifetime: the exported
  version in-process (``--repository``; on a GPU when the cluster has them and onnxruntime-gpu is
  installed), or a gRPC client to Triton endpoints (``--server``). Actors read the images
  themselves, so image bytes never pass through the driver; each batch comes back as one column
  of :class:`~editguard.clients.backends.Scored`, the result type of the local engine too.
- This process reads and validates the manifest exactly as the local engine does (the same
  file:line errors), skips ids already in the results, and writes every row with the same
  writer: the same Parquet parts (or JSONL), the same schema, the same exactly-once resume by id.
  The validated manifest is handed to Ray with ``from_items`` rather than read again with
  ``ray.data.read_json``, so there is one definition of a valid record and of path resolution.
- A manifest with sessions: the driver adds each turn's cumulative triple (:mod:`editguard.model.session`)
  as a row of its own, its origin and output as paths and the union of the turns' masks as PNG bytes,
  and writes the turn's row once both triples are back, as the local engine does.
- Without ``--ray-address`` a Ray cluster is started on the local machine for the run and stopped
  after it; with one (``auto``, ``ray://head:10001``) the job runs there, and every node needs
  ``pip install 'editguard[ray,serve]'`` and the repository at the same path (or the Triton URL).

Ray is imported only here: the base install stays thin (``pip install 'editguard[ray]'``).
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np

from .backends import BackendConfig, Scored, open_backend
from .protocol import Triple, encode_image

_logger = logging.getLogger(__name__)

__all__ = ["ray_results", "start_ray"]


class _ScoreActor:
    """One Ray actor: the backend ``cfg`` names, built once; then a batch of rows in, their results out."""

    def __init__(self, cfg: BackendConfig, cpus: float):
        import ray

        self.backend = open_backend(cfg, threads=max(1, int(cpus)), gpu=bool(ray.get_gpu_ids()))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [Triple(str(i), str(a), str(p), str(b), str(m) if m else (bytes(png) if len(png) else None), bool(c))
                 for i, a, p, b, m, png, c in zip(batch["id"], batch["input_image"], batch["prompt"],
                                                  batch["output_image"], batch["mask"], batch["mask_png"],
                                                  batch["cumulative"])]
        results = np.empty(len(items), dtype=object)
        results[:] = list(self.backend.score(items))
        return {"scored": results}


def start_ray(address: str | None = None) -> bool:
    """Connect to the Ray cluster at ``address``, or start one here (``None``), unless this process is
    already connected; quiets Ray Data's own progress output. Returns whether this call connected
    (so the caller should ``ray.shutdown()`` when done)."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ImportError("--engine ray needs Ray Data: pip install 'editguard[ray]'") from e
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # this process shows one bar, with rate and ETA, over the rows written
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    return True


def _pool(cfg: BackendConfig, workers: int | None, cpus_per_worker: float) -> tuple[int, int]:
    """``(actors, GPUs per actor)``: one actor per GPU when the cluster has GPUs and the backend is
    onnxruntime, else as many as the CPUs allow at ``cpus_per_worker`` each."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0)) if cfg.repository else 0
    fit = gpus or max(1, int(res.get("CPU", 1) // cpus_per_worker))
    if workers and workers > fit:
        _logger.warning("%d workers asked for, the cluster fits %d at once; the rest wait for resources",
                        workers, fit)
    return workers or fit, 1 if gpus else 0


def _row(r) -> dict:
    """A record as a Ray row: its image paths (the actors read the files), or for a session turn's cumulative
    triple (:class:`~editguard.model.session.CumulativeTriple`) the union of the turns' masks, which the
    driver made, as PNG bytes in ``mask_png``, and ``cumulative`` set (its prompt is read turn by turn)."""
    union = isinstance(r.mask, np.ndarray)
    return {"id": r.id, "input_image": str(r.input_image), "output_image": str(r.output_image), "prompt": r.prompt,
            "mask": str(r.mask) if r.mask is not None and not union else "",
            "mask_png": encode_image(r.mask, "mask") if union else b"",
            "cumulative": bool(getattr(r, "cumulative", False))}


def ray_results(cfg: BackendConfig, todo: list, *, workers: int | None = None, cpus_per_worker: float = 1.0,
                address: str | None = None) -> Iterator[Scored]:
    """Score ``todo`` (validated manifest records) on Ray with the backend ``cfg`` names, ``workers`` actors
    of ``cpus_per_worker`` CPUs each, on the cluster at ``address`` (default: one started here for the
    run); yields what the local engine yields."""
    if not todo:
        return
    started = start_ray(address)
    import ray
    import ray.data

    try:
        actors, gpus = _pool(cfg, workers, cpus_per_worker)
        items = [_row(r) for r in todo]
        # blocks of a few batches each: enough of them to keep every actor busy and the results streaming
        blocks = min(len(items), max(4 * actors, math.ceil(len(items) / (4 * cfg.batch_size))))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        scored = ds.map_batches(
            _ScoreActor,
            fn_constructor_kwargs={"cfg": cfg, "cpus": cpus_per_worker},
            batch_size=cfg.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_worker, num_gpus=gpus)
        _logger.info("scoring %d triples on Ray with %d actor(s)%s", len(items), actors, " (1 GPU each)" if gpus else "")
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            yield from batch["scored"]
    finally:
        if started:
            ray.shutdown()
