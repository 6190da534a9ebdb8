"""The one training loop: epochs, validation, early stop, the best epoch's model dir, checkpoints, progress.

``editguard train`` (:mod:`.train`) and ``train --from`` (:mod:`.grow`) build a :class:`TrainingRun` that
says only what differs between them (which parameters train, what the batch feeds and which loss, which
score picks the best epoch, how the best is saved) and call :func:`fit`. Under ``torchrun`` every rank
trains on its shard of each global batch; rank 0 alone validates, logs and writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..files import write_text_atomic
from ..model.prompt_cache import PromptCache, with_cache
from ..reports import classification_report

_logger = logging.getLogger(__name__)

__all__ = ["Ranks", "setup_ranks", "optimizer_for", "pos_weight", "predict", "save_examples", "TrainingRun", "fit",
           "load_checkpoint"]


@dataclass
class Ranks:
    """This process's place in a distributed run (a world of one without ``torchrun``)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    joined: bool = False  # setup_ranks joined the process group (and close leaves it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group this run joined. A rank that exits with it still up can abort as its
        communication threads are torn down ("terminate called without an active exception", now and then
        on gloo), failing a run that had finished and written its model dir."""
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()
            self.joined = False


def setup_ranks(device: str, seed: int) -> Ranks:
    """Join the process group ``torchrun`` set up (NCCL on CUDA, else gloo), pick the device and seed every
    random generator. The caller leaves the group with :meth:`Ranks.close` when the run ends."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    joined = world > 1 and not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if want_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device(f"cuda:{local}" if device in ("auto", "cuda") else device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return Ranks(rank, world, dev, joined)


def optimizer_for(net: torch.nn.Module, cfg, total_steps: int):
    """AdamW over the network's own parameter groups (pretrained towers at ``cfg.pretrained_lr_scale``; no
    decay on norms and biases), with linear warmup and cosine decay. ``cfg``: a TrainConfig."""
    scale = {id(p): cfg.pretrained_lr_scale if g.pretrained else 1.0 for g in net.param_groups() for p in g.params}
    groups: dict[tuple[float, float], list] = {}
    for p in net.parameters():  # in the network's own order, so checkpoints keep their optimizer layout
        if id(p) not in scale:
            continue  # frozen
        decay = 0.0 if p.ndim < 2 else cfg.weight_decay
        groups.setdefault((scale[id(p)], decay), []).append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "lr": cfg.lr * s, "weight_decay": d} for (s, d), ps in groups.items()], lr=cfg.lr
    )
    warm = max(1, int(cfg.warmup * total_steps))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def pos_weight(y: np.ndarray, device: torch.device) -> torch.Tensor:
    """``float64 [C]`` BCE positive weights for the labels ``y`` ``[N, C]``: negatives per positive, in [1, 50]."""
    pos = y.sum(0)
    return torch.tensor(np.clip((len(y) - pos) / np.maximum(pos, 1), 1.0, 50.0), device=device)


@torch.no_grad()
def predict(net: torch.nn.Module, loader, device: torch.device, amp: bool = False, progress: bool = False,
            prompts: PromptCache | None | str = "new") -> np.ndarray:
    """Probabilities ``float32 [N, C]`` for every batch of ``loader``, in order. ``prompts``: the frozen prompt
    tower's cache to use (a training run's own), or ``"new"`` for one of this call's."""
    from ..progress import progress as progress_bar

    net.eval()
    cache = PromptCache.of(net) if prompts == "new" else prompts
    out = []
    for batch in progress_bar(loader, desc="predict", unit="batch", disable=not progress, leave=False):
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = net(**with_cache(cache, inputs))
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out)


def save_examples(ds, path: Path, n: int = 16) -> None:
    """A few preprocessed validation triples of ``ds``, kept in the model dir for export parity checks."""
    from safetensors.numpy import save_file

    from ..model.preprocess import collate

    batch = collate([ds[i] for i in range(min(n, len(ds)))])
    batch.pop("labels")
    save_file({k: np.ascontiguousarray(v) for k, v in batch.items()}, str(path))


@dataclass
class TrainingRun:
    """One run for :func:`fit`: the network and its data, and what differs between runs."""

    cfg: object  # a TrainConfig: epochs, patience, grad_accum, grad_clip, amp, progress, out
    ranks: Ranks
    net: torch.nn.Module  # the network itself: validated and saved
    model: torch.nn.Module  # what trains: ``net``, or ``net`` wrapped in DDP
    loader: DataLoader
    val_loader: DataLoader
    y_val: np.ndarray  # [N, C] labels of the validation set
    labels: list[str]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    loss: Callable[[dict, torch.Tensor], torch.Tensor]  # (the batch's inputs, its labels [B, C]) -> the loss
    # the validation report -> the score the best epoch maximises, and the fields logged beside it
    select: Callable[[dict], tuple[float, dict]]
    save_best: Callable[[dict], None]  # writes the model dir of the best epoch, given its report
    train_mode: Callable[[], None] | None = None  # sets the modules' train/eval modes (default: model.train())
    score_name: str = "val macro AUPRC"  # for the log
    prompts: PromptCache | None = None  # a frozen prompt tower's embeddings, shared by training and validation
    checkpoints: bool = True  # a resumable checkpoint after every epoch (rank 0)
    report_extra: dict = field(default_factory=dict)  # added to the best epoch's metrics.json


def _train_epoch(run: TrainingRun, epoch: int) -> float:
    """One pass over this rank's shard; returns the mean training loss over all ranks."""
    from ..progress import progress

    cfg, d, loader = run.cfg, run.ranks, run.loader
    run.train_mode() if run.train_mode else run.model.train()
    total, count, t0 = 0.0, 0, time.perf_counter()
    bar = progress(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not (cfg.progress and d.main))
    for i, batch in enumerate(bar):
        batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
        y = batch.pop("labels")
        sync = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(loader)
        ctx = run.model.no_sync() if d.world > 1 and not sync else contextlib.nullcontext()
        with ctx, torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=cfg.amp and d.device.type == "cuda"):
            loss = run.loss(batch, y)
            (loss / cfg.grad_accum).backward()
        if sync:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
            run.opt.step()
            run.opt.zero_grad(set_to_none=True)
            run.sched.step()
        total += loss.item() * len(y)
        count += len(y)
        rate = count * d.world / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{total / count:.4f}", triples_s=f"{rate:.0f}", lr=f"{run.sched.get_last_lr()[0]:.2e}")
    if d.world > 1:
        sums = torch.tensor([total, count], dtype=torch.float64, device=d.device)
        dist.all_reduce(sums)
        total, count = sums.tolist()
    return total / max(1, count)


def _validate(run: TrainingRun, epoch: int, loss: float, seconds: float, state: dict) -> tuple[dict, bool]:
    """Rank 0: the validation report, the log line, and whether this epoch is the best so far."""
    cfg, d, out = run.cfg, run.ranks, Path(run.cfg.out)
    report = classification_report(run.y_val, predict(run.net, run.val_loader, d.device, cfg.amp,
                                                      prompts=run.prompts), run.labels)
    score, fields = run.select(report)
    improved = score > state["best"]
    state.update(epoch=epoch + 1, best=max(score, state["best"]), bad=0 if improved else state["bad"] + 1)
    log = {"epoch": epoch + 1, "train_loss": loss, **fields, "val_items": len(run.y_val),
           "lr": run.sched.get_last_lr()[0], "seconds": round(seconds, 2), "world_size": d.world}
    with open(out / "train_log.jsonl", "a") as f:
        f.write(json.dumps(log) + "\n")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in fields.items())
    _logger.info("epoch %d: loss %.4f, %s%s", epoch + 1, loss, shown, " (best)" if improved else "")
    return report, improved


def fit(run: TrainingRun, state: dict | None = None) -> dict | None:
    """Train for ``cfg.epochs`` from ``state`` (``{"epoch", "best", "bad"}``, a resumed checkpoint's; default:
    the start), stopping after ``cfg.patience`` epochs without a better score. Rank 0 writes the best epoch's
    model dir (``run.save_best``) and, with ``run.checkpoints``, a checkpoint every epoch. Returns the best
    epoch's report (None on the other ranks)."""
    cfg, d = run.cfg, run.ranks
    out = Path(cfg.out)
    state = state or {"epoch": 0, "best": -1.0, "bad": 0}
    best_report = json.loads((out / "metrics.json").read_text()) if state["best"] >= 0 else None
    for epoch in range(state["epoch"], cfg.epochs):
        # shuffling and augmentation are seeded per epoch, so a resumed run repeats an uninterrupted one
        if hasattr(run.loader.sampler, "set_epoch"):
            run.loader.sampler.set_epoch(epoch)
        run.loader.dataset.set_epoch(epoch)
        t0 = time.perf_counter()
        loss = _train_epoch(run, epoch)
        stop = False
        if d.main:
            report, improved = _validate(run, epoch, loss, time.perf_counter() - t0, state)
            if improved:
                best_report = dict(report, epoch=epoch + 1, **run.report_extra)
                run.save_best(best_report)
            if run.checkpoints:
                _save_checkpoint(out, run.net, run.opt, run.sched, state, d.world)
            stop = state["bad"] >= cfg.patience
        if d.world > 1:
            flag = [stop]
            dist.broadcast_object_list(flag, src=0)
            stop = flag[0]
        if stop:
            if d.main:
                _logger.info("early stop: no better %s for %d epochs", run.score_name, cfg.patience)
            break
    d.barrier()
    return best_report


def _save_checkpoint(out: Path, net, opt, sched, state: dict, world: int) -> None:
    """Checkpoint as safetensors (weights, optimizer moments) plus JSON (everything else).

    The tensors go to files named by epoch; ``state.json``, replaced last and atomically, names
    them. A kill at any point leaves the previous checkpoint whole; older files are removed after.
    """
    from safetensors.torch import save_file, save_model

    ck = out / "checkpoint"
    ck.mkdir(exist_ok=True)
    files = {"model": f"model-{state['epoch']:04d}.safetensors", "optimizer": f"optimizer-{state['epoch']:04d}.safetensors"}
    save_model(net, str(ck / files["model"]), force_contiguous=True)
    sd = opt.state_dict()
    save_file({f"{i}.{k}": v.contiguous() for i, st in sd["state"].items() for k, v in st.items()},
              str(ck / files["optimizer"]))
    meta = {"state": state, "files": files, "param_groups": sd["param_groups"], "scheduler": sched.state_dict(),
            "world_size": world, "torch_rng": torch.get_rng_state().tolist()}
    write_text_atomic(ck / "state.json", json.dumps(meta, default=lambda o: None))
    for old in ck.glob("*.safetensors"):
        if old.name not in files.values():
            old.unlink()


def load_checkpoint(out: Path, net, opt, sched, d: Ranks) -> dict:
    """The state :func:`fit` resumes from, with the weights, optimizer, schedule and RNG of ``out/checkpoint``."""
    from safetensors.torch import load_file, load_model

    ck = out / "checkpoint"
    if not (ck / "state.json").exists():
        raise FileNotFoundError(f"--resume: no checkpoint in {ck}; train once without --resume first")
    meta = json.loads((ck / "state.json").read_text())
    load_model(net, str(ck / meta["files"]["model"]), device=str(d.device))
    tensors = load_file(str(ck / meta["files"]["optimizer"]), device=str(d.device))
    st: dict[int, dict] = {}
    for key, v in tensors.items():
        i, k = key.split(".", 1)
        st.setdefault(int(i), {})[k] = v.cpu() if k == "step" else v
    opt.load_state_dict({"state": st, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])  # lr_lambdas are saved as None: the schedule function is code
    torch.set_rng_state(torch.tensor(meta["torch_rng"], dtype=torch.uint8))
    epoch = meta["state"]["epoch"]
    if d.main:
        _logger.info("resumed from %s at epoch %d (saved with %d rank(s), now %d)", ck, epoch, meta["world_size"], d.world)
        log = out / "train_log.jsonl"  # epochs logged after the checkpoint are run again: drop their lines
        if log.exists():
            lines = [ln for ln in log.read_text().splitlines(keepends=True) if json.loads(ln)["epoch"] <= epoch]
            write_text_atomic(log, "".join(lines))
    return meta["state"]
