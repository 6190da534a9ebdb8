"""``editguard score --engine ray``: batch scoring on a Ray cluster with Ray Data.

The pipeline::

    validated manifest rows (ids not yet scored) ── ray.data.from_items ──►
    map_batches(_ScoreActor, ActorPoolStrategy(size=workers)) ──► iter_batches ──► ResultWriter

- Each actor holds one backend for its lifetime: an onnxruntime session on the exported ONNX
  (``--repository``; on a GPU when the cluster has them and onnxruntime-gpu is installed), or a
  gRPC client to Triton endpoints (``--server``). Actors read the images themselves, so image
  bytes never pass through the driver.
- This process reads and validates the manifest exactly as the local engine does (the same
  file:line errors), skips ids already in the results, and writes every row with the same
  writer: the same Parquet parts (or JSONL), the same schema, the same exactly-once resume by id.
  The validated manifest is handed to Ray with ``from_items`` rather than read again with
  ``ray.data.read_json``, so there is one definition of a valid record and of path resolution.
- Without ``--ray-address`` a Ray cluster is started on this machine for the run and stopped
  after it; with one (``auto``, ``ray://head:10001``) the job runs there, and every node needs
  ``pip install 'editguard[ray,serve]'`` and the repository at the same path (or the Triton URL).

Ray is imported only here: the base install stays thin (``pip install 'editguard[ray]'``).
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np

from .client import Triple
from .score import Failure, ScoreConfig, open_backend, outcomes

_logger = logging.getLogger(__name__)

__all__ = ["ray_results", "start_ray"]


class _ScoreActor:
    """One Ray actor: the backend ``cfg`` names, built once; then a batch of rows in, outcomes out."""

    def __init__(self, cfg: ScoreConfig):
        import ray

        self.cfg = cfg
        self.backend = open_backend(cfg, threads=max(1, int(cfg.cpus_per_worker)), gpu=bool(ray.get_gpu_ids()))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        items = [Triple(str(r["id"]), str(r["input_image"]), str(r["prompt"]), str(r["output_image"]),
                        str(r["mask"]) if r["mask"] else None) for r in rows]
        out = {k: np.empty(len(items), dtype=object) for k in ("id", "version", "labels", "scores", "flagged", "error")}
        out["unsafe"] = np.zeros(len(items), dtype=bool)
        for i, (item_id, res, version, labels) in enumerate(outcomes(self.backend, items, self.cfg)):
            out["id"][i], out["version"][i], out["labels"][i] = item_id, version, list(labels)
            if isinstance(res, Failure):
                out["scores"][i], out["flagged"][i], out["error"][i] = [], [], [res.kind, res.reason]
            else:
                scores, flagged, out["unsafe"][i] = res
                out["scores"][i], out["flagged"][i], out["error"][i] = list(map(float, scores)), list(map(bool, flagged)), []
        return out


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


def _pool(cfg: ScoreConfig) -> tuple[int, int]:
    """``(actors, GPUs per actor)``: one actor per GPU when the cluster has GPUs and the backend is
    onnxruntime, else as many as the CPUs allow at ``cfg.cpus_per_worker`` each."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0)) if cfg.repository else 0
    fit = gpus or max(1, int(res.get("CPU", 1) // cfg.cpus_per_worker))
    if cfg.workers and cfg.workers > fit:
        _logger.warning("%d workers asked for, the cluster fits %d at once; the rest wait for resources",
                        cfg.workers, fit)
    return cfg.workers or fit, 1 if gpus else 0


def ray_results(cfg: ScoreConfig, todo: list) -> Iterator[tuple[str, object, str, list[str]]]:
    """Score ``todo`` (validated manifest records) on Ray; yields what the local engine yields."""
    if not todo:
        return
    started = start_ray(cfg.ray_address)
    import ray
    import ray.data

    try:
        workers, gpus = _pool(cfg)
        items = [{"id": r.id, "input_image": str(r.input_image), "output_image": str(r.output_image),
                  "prompt": r.prompt, "mask": str(r.mask) if r.mask else ""} for r in todo]
        # blocks of a few batches each: enough of them to keep every actor busy and the results streaming
        blocks = min(len(items), max(4 * workers, math.ceil(len(items) / (4 * cfg.batch_size))))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        scored = ds.map_batches(
            _ScoreActor,
            fn_constructor_kwargs={"cfg": cfg},
            batch_size=cfg.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cfg.cpus_per_worker, num_gpus=gpus)
        _logger.info("scoring %d triples on Ray with %d actor(s)%s", len(items), workers, " (1 GPU each)" if gpus else "")
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["id"])):
                error = batch["error"][i]
                if len(error):
                    res = Failure(str(error[0]), str(error[1]))
                else:
                    res = (np.asarray(batch["scores"][i], np.float32), np.asarray(batch["flagged"][i], bool),
                           bool(batch["unsafe"][i]))
                yield str(batch["id"][i]), res, str(batch["version"][i]), [str(x) for x in batch["labels"][i]]
    finally:
        if started:
            ray.shutdown()
