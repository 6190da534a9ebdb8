"""``editguard train``: fit the triple classifier on a manifest.

AdamW with linear warmup and cosine decay, gradient clipping, class
imbalance via ``pos_weight``, early stopping on validation macro AUPRC, a
resumable checkpoint (safetensors + JSON, no pickles), bf16 autocast on CUDA,
and DDP when started by ``torchrun`` (rank 0 alone writes).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..files import write_json_atomic
from ..manifest import read_manifest
from ..model.config import preset_config
from ..model.model_dir import create_model, save_model_dir
from ..model.prompt_cache import PromptCache, with_cache
from ..model.taxonomy import Taxonomy, default_taxonomy, load_taxonomy
from ..model.weight_pack import use_pack
from .augment import KINDS
from .data import TripleDataset, collate_batch, label_matrix
from .loop import Ranks, TrainingRun, fit, load_checkpoint, optimizer_for, pos_weight, save_examples, setup_ranks

_logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train"]

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
    adversarial: float = 0.0  # share of batches trained on a carried perturbation (model.adversarial; 0: off)
    adversarial_eps: float = 8.0  # its L-infinity bound, 0-255 scale
    # share of items whose prompt is rewritten (training.augment; 0: off); None: PROMPT_AUGMENT for a model that
    # judges the output, 0 for a pre-check (measured in docs/red-team.md)
    prompt_augment: float | None = None
    prompt_augment_kinds: tuple[str, ...] = KINDS  # which rewrites prompt_augment draws from (training.augment.KINDS)
    mask_lie: float = 0.0  # share of items whose mask is moved away from the change (training.data.misplace_mask)
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
        if not 0.0 <= self.adversarial <= 1.0 or self.adversarial_eps <= 0:
            raise ValueError(f"--adversarial is a share of batches, 0 to 1 (got {self.adversarial}), and "
                             f"--adversarial-eps a positive bound (got {self.adversarial_eps})")
        for flag, share in (("--prompt-augment", self.prompt_augment), ("--mask-lie", self.mask_lie)):
            if share is not None and not 0.0 <= share <= 1.0:
                raise ValueError(f"{flag} is a share of items, 0 to 1 (got {share})")
        unknown = set(self.prompt_augment_kinds) - set(KINDS)
        if unknown or not self.prompt_augment_kinds:
            raise ValueError(f"--prompt-augment-kinds takes one or more of {', '.join(KINDS)} "
                             f"(got {', '.join(self.prompt_augment_kinds) or 'none'})")
        if self.tune not in ("branch", "towers", "all"):
            raise ValueError(f"tune must be 'branch', 'towers' or 'all', got {self.tune!r}")
        if self.replay_size < 0:
            raise ValueError(f"replay_size must be 0 or more, got {self.replay_size}")


PROMPT_AUGMENT = 0.3  # the default --prompt-augment of a model that judges the output


def with_prompt_augment(cfg: TrainConfig, judges_output: bool) -> TrainConfig:
    """``cfg`` with its default ``prompt_augment`` resolved: :data:`PROMPT_AUGMENT` for a model that sees the
    output (trained so, its long-prompt attack success fell from 7-10% to 1-6% at no clean cost), 0 for a
    pre-check (its clean AUROC fell by 0.016 and an instruction mid-paragraph got through more often)."""
    if cfg.prompt_augment is not None:
        return cfg
    return dataclasses.replace(cfg, prompt_augment=PROMPT_AUGMENT if judges_output else 0.0)


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
    cfg = with_prompt_augment(cfg, preset_config(cfg.preset, **ABLATIONS[cfg.ablation]).use_output_image)
    d = setup_ranks(cfg.device, cfg.seed)
    try:
        return _train(cfg, d)
    finally:
        d.close()


def _train(cfg: TrainConfig, d: Ranks) -> dict:
    if cfg.batch_size % (d.world * cfg.grad_accum):
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of ranks x --grad-accum "
                         f"({d.world} x {cfg.grad_accum}) so that every micro-batch has the same size")
    out = Path(cfg.out)
    taxonomy = load_taxonomy(cfg.taxonomy) if cfg.taxonomy else default_taxonomy()
    train_recs, val_recs = _read(cfg, taxonomy)
    net, pre = _network(cfg, d, taxonomy, [r.prompt for r in train_recs])
    train_ds = TripleDataset(train_recs, pre, taxonomy.names, augment=True, mask_dropout=cfg.mask_dropout,
                             seed=cfg.seed, realistic=cfg.realistic_augment, prompt_augment=cfg.prompt_augment,
                             prompt_kinds=cfg.prompt_augment_kinds, mask_lie=cfg.mask_lie)
    val_ds = TripleDataset(val_recs, pre, taxonomy.names, cache=False)
    # one process is a world of one: the same sampler gives every world size the same global batches
    sampler = DistributedSampler(train_ds, d.world, d.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(train_ds, cfg.batch_size // (d.world * cfg.grad_accum), sampler=sampler,
                        collate_fn=collate_batch, num_workers=cfg.num_workers)
    val_loader = DataLoader(val_ds, 128, collate_fn=collate_batch, num_workers=cfg.num_workers)
    if d.main:
        save_examples(val_ds, out / "examples.safetensors")
    opt, sched = optimizer_for(net, cfg, cfg.epochs * math.ceil(len(loader) / cfg.grad_accum))
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight(label_matrix(train_recs, taxonomy.names), d.device))
    model = net
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[d.device] if d.device.type == "cuda" else None)

    def select(report: dict) -> tuple[float, dict]:
        return report["macro"]["auprc"], {"val_macro_auprc": report["macro"]["auprc"],
                                          "val_macro_auroc": report["macro"]["auroc"]}

    def save_best(report: dict) -> None:
        save_model_dir(net, out, tokenizer_dir=out / "tokenizer", taxonomy=taxonomy, metrics=report)

    prompts = PromptCache.of(net)  # a frozen prompt tower: each prompt once, for training and validation
    run = TrainingRun(cfg, d, net, model, loader, val_loader, label_matrix(val_recs, taxonomy.names), taxonomy.names,
                      opt, sched, loss=_loss(cfg, model, bce, prompts, d),
                      select=select, save_best=save_best, report_extra={"ablation": cfg.ablation}, prompts=prompts)
    return fit(run, load_checkpoint(out, net, opt, sched, d) if cfg.resume else None)


def _loss(cfg: TrainConfig, model, bce, prompts, d):
    """The training loss: BCE on the batch, or for ``cfg.adversarial`` of the batches (drawn from a generator
    seeded like the run) BCE on the batch under a perturbation carried through the edit that raises it
    (:func:`~editguard.model.adversarial.carried_pgd`, 2 steps of ``adversarial_eps``)."""
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * d.rank)

    def loss(batch: dict, y: torch.Tensor) -> torch.Tensor:
        inputs = with_cache(prompts, batch)
        if cfg.adversarial and "output_image" in inputs and torch.rand((), generator=gen) < cfg.adversarial:
            from ..model.adversarial import carried_pgd

            adv_in, adv_out = carried_pgd(model, inputs, lambda logits: bce(logits, y), cfg.adversarial_eps, 2,
                                          generator=gen)
            inputs = {**inputs, "input_image": adv_in, "output_image": adv_out}
        return bce(model(**inputs).float(), y)
    return loss


def _read(cfg: TrainConfig, taxonomy: Taxonomy) -> tuple[list, list]:
    """The training and validation records, with the overlays and the sessions' cumulative triples; a validation
    set with no unsafe edit is refused."""
    from ..model.session import cumulative_triples

    read = dict(labels=taxonomy.names, allow_outside_root=cfg.allow_outside_root, overlays=cfg.overlays)
    train_recs, val_recs = read_manifest(cfg.train, **read), read_manifest(cfg.val, **read)
    # a manifest with sessions trains (and validates) on each turn's cumulative triple too: the session check
    # judges both kinds with one network
    train_recs, val_recs = train_recs + cumulative_triples(train_recs), val_recs + cumulative_triples(val_recs)
    if not any(r.labels for r in val_recs):
        raise ValueError(f"{cfg.val} has no unsafe edit (every item's labels are empty): training keeps the epoch with "
                         "the best validation AUPRC, which needs positives. Give a validation manifest with labelled "
                         "unsafe edits (`editguard split` spreads each label over train, val and test where it can)")
    return train_recs, val_recs


def _network(cfg: TrainConfig, d: Ranks, taxonomy: Taxonomy, prompts: list[str]) -> tuple:
    """The new network and its preprocessing: rank 0 writes the config and tokenizer into the model dir, the other
    ranks read them; the same seed gives every rank the same init."""
    out = Path(cfg.out)
    mcfg = preset_config(cfg.preset, **ABLATIONS[cfg.ablation], labels=taxonomy.names)
    weights = cfg.weights or os.environ.get("EDITGUARD_WEIGHTS")
    if weights:
        mcfg = use_pack(mcfg, weights)
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
    return net, pre


def _sync_batchnorm(net: torch.nn.Module, d: Ranks) -> torch.nn.Module:
    """Under DDP, BatchNorm statistics must span the global batch: SyncBatchNorm on GPUs."""
    if d.world == 1 or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        return net
    if d.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if d.main:  # SyncBatchNorm runs on GPUs only
        _logger.warning("the image encoder has BatchNorm, and on the CPU its statistics stay per rank: "
                        "DDP results will differ a little from one process (a LayerNorm encoder has no such gap)")
    return net
