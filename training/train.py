"""``editguard train``: fit the triple classifier on a manifest.

AdamW with linear warmup and cosine decay, gradient clipping, class
imbalance via ``pos_weight``, early stopping on validation macro AUPRC, a
resumable checkpoint (safetensors + JSON, no pickles), bf16 autocast on CUDA,
and DDP when started by ``torchrun`` (rank 0 alone writes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ..files import write_json_atomic, write_text_atomic
from ..manifest import read_manifest
from ..metrics import classification_report
from ..model.config import preset_config
from ..model.model_dir import create_model, save_model_dir
from ..model.taxonomy import Taxonomy, default_taxonomy, load_taxonomy
from ..model.weight_pack import use_pack
from .data import TripleDataset, collate_batch, label_matrix

_logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train", "predict"]

# what each model sees: the triple, or less, to measure what each input is worth; prompt-only and
# image-only are the per-modality checks that production editors run today
ABLATIONS = {"triple": {}, "output-only": {"use_input_image": False}, "no-prompt": {"use_prompt": False},
             "prompt-only": {"use_input_image": False, "use_output_image": False},
             "image-only": {"use_input_image": False, "use_prompt": False},
             # before generation: the request only (input image, mask, prompt), for `editguard_precheck`
             "precheck": {"use_output_image": False}}


@dataclass
class TrainConfig:
    train: str  # training manifest
    val: str  # validation manifest (early stopping and the saved metrics)
    out: str  # model dir to write
    preset: str = "cpu"  # model preset (model/presets/) or a model config .json: the best the CPU trains by default
    ablation: str = "triple"  # "triple", "precheck", or one of ABLATIONS to measure what each input is worth
    taxonomy: str | None = None  # a taxonomy JSON/YAML; default: the built-in categories
    # a weights folder (`editguard weights pack`) the pretrained towers load from, and nowhere else;
    # default: $EDITGUARD_WEIGHTS, else the hub (or the preset's local paths)
    weights: str | None = None
    epochs: int = 12  # maximum epochs
    batch_size: int = 64  # global batch (split over ranks and accumulation steps)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-3  # peak learning rate of the head (and of random-init towers)
    pretrained_lr_scale: float = 0.1  # lr multiplier for pretrained towers
    weight_decay: float = 0.05  # AdamW decay, not applied to norms and biases
    warmup: float = 0.05  # fraction of steps spent warming up
    grad_clip: float = 1.0  # max global gradient norm
    patience: int = 4  # epochs without a better val macro AUPRC before stopping
    mask_dropout: float = 0.2  # rate of training items shown with "no mask"
    realistic_augment: bool = True  # codec/resample/blur/noise on the images, mask jitter, 1-px shifts
    seed: int = 0  # seeds init, shuffling and dropout
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    num_workers: int = 0  # DataLoader workers
    resume: bool = False  # continue from out/checkpoint if present
    allow_outside_root: bool = False  # accept manifest paths outside the manifest's folder
    overlays: list[str] = field(default_factory=list)  # reviewed labels (`editguard review` decisions) over the manifests
    progress: bool = True  # show progress bars
    # growing a trained model to a taxonomy that appends categories (training/grow.py)
    from_model: str | None = None  # the model dir to grow; `train` then reads only the new categories' data
    # "branch": the new categories' head alone trains; "towers": it and its own copy of the image towers; "all":
    # everything, the old categories distilled to the parent's scores
    tune: str = "towers"
    replay: str | None = None  # a manifest replayed beside the new data; default: the parent's training manifest
    replay_size: int = 2000  # items drawn from the replay manifest (0: none)
    distill: float = 1.0  # tune "all": weight of the old categories' distillation loss

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {list(ABLATIONS)}, got {self.ablation!r}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise ValueError("batch_size, grad_accum and epochs must be positive")
        if self.tune not in ("branch", "towers", "all"):
            raise ValueError(f"tune must be 'branch', 'towers' or 'all', got {self.tune!r}")
        if self.replay_size < 0:
            raise ValueError(f"replay_size must be 0 or more, got {self.replay_size}")


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _setup(cfg: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}" if cfg.device in ("auto", "cuda") else cfg.device)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return _Dist(rank, world, device)


def _optimizer(net: torch.nn.Module, cfg: TrainConfig, total_steps: int):
    """AdamW over the network's own parameter groups (pretrained towers at ``pretrained_lr_scale``; no decay
    on norms and biases), with linear warmup and cosine decay."""
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


@torch.no_grad()
def predict(net: torch.nn.Module, loader, device: torch.device, amp: bool = False, progress: bool = False
            ) -> np.ndarray:
    """Probabilities ``float32 [N, C]`` for every batch of ``loader``, in order."""
    from ..progress import progress as progress_bar

    net.eval()
    out = []
    for batch in progress_bar(loader, desc="predict", unit="batch", disable=not progress, leave=False):
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = net(**inputs)
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out)


def _train_epoch(run: _Run, epoch: int) -> float:
    """One pass over this rank's shard; returns the mean training loss over all ranks."""
    from ..progress import progress

    cfg, d, loader = run.cfg, run.d, run.loader
    run.model.train()
    total, count, t0 = 0.0, 0, time.perf_counter()
    bar = progress(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not (cfg.progress and d.main))
    for i, batch in enumerate(bar):
        batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
        y = batch.pop("labels")
        sync = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(loader)
        ctx = run.model.no_sync() if d.world > 1 and not sync else contextlib.nullcontext()
        with ctx, torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=cfg.amp and d.device.type == "cuda"):
            loss = run.loss_fn(run.model(**batch).float(), y)
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


@dataclass
class _Run:
    """Everything one training run works with, built by :func:`train`."""

    cfg: TrainConfig
    d: _Dist
    net: torch.nn.Module  # the network itself: validated and saved
    model: torch.nn.Module  # what trains: ``net``, or ``net`` wrapped in DDP
    loader: DataLoader
    val_loader: DataLoader
    y_val: np.ndarray
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    loss_fn: torch.nn.Module
    taxonomy: Taxonomy


def train(cfg: TrainConfig) -> dict:
    """Train and write the model dir ``cfg.out``; returns the best validation report.

    Under ``torchrun`` each rank trains on its shard of every global batch (DistributedSampler) and
    rank 0 alone validates and writes. Data order and augmentation depend only on the seed, the
    epoch and the item, never on the number of ranks, so for a model without BatchNorm or dropout
    N ranks give the result of one process (up to float rounding), and a checkpoint resumes on
    any number of ranks.
    """
    if cfg.from_model:
        raise ValueError("a config with from_model grows a trained model: call editguard.training.grow.grow(cfg)")
    d = _setup(cfg)
    if cfg.batch_size % (d.world * cfg.grad_accum):
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of ranks x --grad-accum "
                         f"({d.world} x {cfg.grad_accum}) so that every micro-batch has the same size")
    out = Path(cfg.out)
    taxonomy = load_taxonomy(cfg.taxonomy) if cfg.taxonomy else default_taxonomy()
    read = dict(labels=taxonomy.names, allow_outside_root=cfg.allow_outside_root, overlays=cfg.overlays)
    train_recs, val_recs = read_manifest(cfg.train, **read), read_manifest(cfg.val, **read)
    if not any(r.labels for r in val_recs):
        raise ValueError(f"{cfg.val} has no unsafe edit (every item's labels are empty): training keeps the epoch with "
                         "the best validation AUPRC, which needs positives. Give a validation manifest with labelled "
                         "unsafe edits (`editguard split` spreads each label over train, val and test where it can)")
    mcfg = preset_config(cfg.preset, **ABLATIONS[cfg.ablation], labels=taxonomy.names)
    weights = cfg.weights or os.environ.get("EDITGUARD_WEIGHTS")
    if weights:
        mcfg = use_pack(mcfg, weights)
    prompts = [r.prompt for r in train_recs]
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "train_config.json", dataclasses.asdict(cfg))
        net, pre = create_model(mcfg, out, prompts=prompts, taxonomy=taxonomy)
    d.barrier()
    if not d.main:  # same tokenizer (rank 0 wrote it), same init (same seed; DDP also broadcasts)
        net, pre = create_model(mcfg, out, prompts=prompts, taxonomy=taxonomy, reuse_tokenizer=True)
    net = _sync_batchnorm(net, d)
    # the conv towers' weights in channels_last (NHWC), the layout the uint8 NHWC images already arrive in:
    # a cpu-preset training step on 2 CPU cores took 0.74x the time (safetensors saves them contiguous)
    net.to(d.device, memory_format=torch.channels_last)
    train_ds = TripleDataset(train_recs, pre, taxonomy.names, augment=True, mask_dropout=cfg.mask_dropout,
                             seed=cfg.seed, realistic=cfg.realistic_augment)
    val_ds = TripleDataset(val_recs, pre, taxonomy.names, cache=False)
    # one process is a world of one: the same sampler gives every world size the same global batches
    sampler = DistributedSampler(train_ds, d.world, d.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(train_ds, cfg.batch_size // (d.world * cfg.grad_accum), sampler=sampler,
                        collate_fn=collate_batch, num_workers=cfg.num_workers)
    val_loader = DataLoader(val_ds, 128, collate_fn=collate_batch, num_workers=cfg.num_workers)
    if d.main:
        _save_examples(val_ds, out / "examples.safetensors")
    opt, sched = _optimizer(net, cfg, cfg.epochs * math.ceil(len(loader) / cfg.grad_accum))
    y = label_matrix(train_recs, taxonomy.names)
    pos = y.sum(0)
    pos_weight = torch.tensor(np.clip((len(y) - pos) / np.maximum(pos, 1), 1.0, 50.0), device=d.device)
    model = net
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[d.device] if d.device.type == "cuda" else None)
    run = _Run(cfg, d, net, model, loader, val_loader, label_matrix(val_recs, taxonomy.names), opt, sched,
               torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight), taxonomy)
    state = _load_checkpoint(out, net, opt, sched, d) if cfg.resume else {"epoch": 0, "best": -1.0, "bad": 0}
    return _fit(run, state)


def _sync_batchnorm(net: torch.nn.Module, d: _Dist) -> torch.nn.Module:
    """Under DDP, BatchNorm statistics must span the global batch: SyncBatchNorm on GPUs."""
    if d.world == 1 or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        return net
    if d.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if d.main:  # SyncBatchNorm runs on GPUs only
        _logger.warning("the image encoder has BatchNorm, and on the CPU its statistics stay per rank: "
                        "DDP results will differ a little from one process (a LayerNorm encoder has no such gap)")
    return net


def _fit(run: _Run, state: dict) -> dict:
    cfg, d = run.cfg, run.d
    out = Path(cfg.out)
    best_report = json.loads((out / "metrics.json").read_text()) if state["best"] >= 0 else None
    for epoch in range(state["epoch"], cfg.epochs):
        # shuffling and augmentation are seeded per epoch, so a resumed run repeats an uninterrupted one
        run.loader.sampler.set_epoch(epoch)
        run.loader.dataset.set_epoch(epoch)
        t0 = time.perf_counter()
        loss = _train_epoch(run, epoch)
        stop = False
        if d.main:
            report = classification_report(run.y_val, predict(run.net, run.val_loader, d.device, cfg.amp),
                                           run.taxonomy.names)
            score = report["macro"]["auprc"]
            improved = score > state["best"]
            state.update(epoch=epoch + 1, best=max(score, state["best"]), bad=0 if improved else state["bad"] + 1)
            log = {"epoch": epoch + 1, "train_loss": loss, "val_macro_auprc": score,
                   "val_macro_auroc": report["macro"]["auroc"], "val_items": len(run.y_val),
                   "lr": run.sched.get_last_lr()[0],
                   "seconds": round(time.perf_counter() - t0, 2), "world_size": d.world}
            with open(out / "train_log.jsonl", "a") as f:
                f.write(json.dumps(log) + "\n")
            _logger.info("epoch %d: loss %.4f, val macro AUPRC %.4f, AUROC %.4f%s", epoch + 1, loss, score,
                         report["macro"]["auroc"], " (best)" if improved else "")
            if improved:
                best_report = dict(report, epoch=epoch + 1, ablation=cfg.ablation)
                save_model_dir(run.net, out, tokenizer_dir=out / "tokenizer", taxonomy=run.taxonomy,
                               metrics=best_report)
            _save_checkpoint(out, run.net, run.opt, run.sched, state, d.world)
            stop = state["bad"] >= cfg.patience
        if d.world > 1:
            flag = [stop]
            dist.broadcast_object_list(flag, src=0)
            stop = flag[0]
        if stop:
            if d.main:
                _logger.info("early stop: no better val macro AUPRC for %d epochs", cfg.patience)
            break
    d.barrier()
    return best_report


def _save_examples(ds: TripleDataset, path: Path, n: int = 16) -> None:
    """A few preprocessed validation triples, kept in the model dir for export parity checks."""
    from safetensors.numpy import save_file

    from ..model.preprocess import collate

    batch = collate([ds[i] for i in range(min(n, len(ds)))])
    batch.pop("labels")
    save_file({k: np.ascontiguousarray(v) for k, v in batch.items()}, str(path))


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


def _load_checkpoint(out: Path, net, opt, sched, d: _Dist) -> dict:
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
