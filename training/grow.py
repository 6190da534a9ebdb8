"""``editguard train --from MODEL_DIR --taxonomy NEW.json``: add categories to a trained model.

The new taxonomy may only append categories (:func:`~editguard.model.taxonomy.appended_categories`).
The model grows a head branch for them (``ModelConfig.label_heads``): a copy of the main head's MLP
whose last layer starts at zero weights and the new category's base rate, so before training the new
output is that rate for every edit and the old outputs are the parent's, bit for bit.

What trains (``TrainConfig.tune``):

- ``towers`` (the default): the branch and its own copy of the parent's image towers and projections.
- ``branch``: the branch alone, over the parent's frozen fused features (no extra serving cost).
- ``all``: every trainable weight, the old categories distilled to the parent's scores on the same
  (augmented) batch. Kept to measure against the others (docs/results.md, "A new category").

With ``towers`` and ``branch`` the old categories' scores cannot move, so their installed thresholds
stay right. Items replayed from the parent's training manifest are the new categories' negatives.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..files import write_json_atomic
from ..manifest import read_manifest
from ..model.model_dir import GROWN, check_model_dir, load_model_dir, save_model_dir
from ..model.network import EditGuardNet, HeadBranch
from ..model.prompt_cache import PromptCache, with_cache
from ..model.taxonomy import Taxonomy, appended_categories, load_taxonomy
from .data import TripleDataset, collate_batch, label_matrix
from .loop import TrainingRun, fit, optimizer_for, pos_weight, save_examples, setup_ranks
from .train import with_prompt_augment

_logger = logging.getLogger(__name__)

__all__ = ["grow_network", "grow"]

def grow_network(net: EditGuardNet, taxonomy: Taxonomy, prior: np.ndarray | None = None,
                 towers: bool = False) -> EditGuardNet:
    """A copy of ``net`` with a head branch for the categories ``taxonomy`` appends to its labels.

    The branch copies the main head's layers (what already tells harm from edit), except its last layer:
    zero weights, and biases at the logit of ``prior`` (each new category's positive rate; 0.5 if None).
    With ``towers`` it also gets copies of the image towers and projections, to fine-tune for the new
    categories alone.
    """
    added = appended_categories(Taxonomy.from_dict({"categories": net.cfg.labels}), taxonomy)
    grown = copy.deepcopy(net)
    grown.cfg = dataclasses.replace(net.cfg, labels=taxonomy.names,
                                    label_heads=[*net.cfg.label_heads, {"labels": len(added), "towers": towers}],
                                    window_min=[*net.cfg.window_min, *(n for n in added if n in taxonomy.window_min)])
    grown.window_min = torch.tensor([n in grown.cfg.window_min for n in grown.cfg.labels])
    branch = HeadBranch(grown, len(added), towers)
    for name, _ in branch.named_children():
        if name != "mlp":
            setattr(branch, name, copy.deepcopy(getattr(net, name)))
    branch.mlp = copy.deepcopy(net.head.mlp)
    last = branch.mlp[-1]
    branch.mlp[-1] = torch.nn.Linear(last.in_features, len(added))
    p = np.clip(np.full(len(added), 0.5) if prior is None else np.asarray(prior, np.float64), 1e-4, 1 - 1e-4)
    with torch.no_grad():
        branch.mlp[-1].weight.zero_()
        branch.mlp[-1].bias.copy_(torch.tensor(np.log(p / (1 - p)), dtype=last.bias.dtype))
    grown.branches.append(branch.to(last.weight.device))
    return grown


def _replay_records(cfg, parent: Path, labels: list[str]) -> list:
    """Up to ``cfg.replay_size`` items of the parent's training manifest (or ``cfg.replay``), seeded."""
    path = cfg.replay
    if path is None and cfg.replay_size:
        recorded = parent / "train_config.json"
        path = json.loads(recorded.read_text()).get("train") if recorded.exists() else None
        if path and not Path(path).exists():
            _logger.warning("the parent's training manifest %s is not here: training without replay (pass --replay "
                            "MANIFEST to give one)", path)
            path = None
    if not path or not cfg.replay_size:
        return []
    records = read_manifest(path, labels=labels, allow_outside_root=cfg.allow_outside_root)
    keep = np.random.default_rng(cfg.seed).permutation(len(records))[:cfg.replay_size]
    return [records[i] for i in sorted(keep)]


def grow(cfg) -> dict:
    """Grow ``cfg.from_model`` to ``cfg.taxonomy`` and train the new categories on ``cfg.train`` (plus replay);
    writes the model dir ``cfg.out`` and returns the best validation report.

    ``cfg`` is a :class:`~editguard.training.train.TrainConfig`. One process (the runs are minutes long).
    """
    if cfg.resume:
        raise ValueError("--resume does not apply to --from runs (they take minutes): run it again")
    if not cfg.taxonomy:
        raise ValueError("--from needs --taxonomy NEW.json: the parent's categories, then the ones to add")
    d = setup_ranks(cfg.device, cfg.seed)
    if d.world > 1:
        d.close()
        raise ValueError("--from runs in one process: start it without torchrun")
    parent, out = Path(cfg.from_model), Path(cfg.out)
    if parent.resolve() == out.resolve():
        raise ValueError("--out must differ from --from: the parent stays as it is, and serves until the grown model "
                         "replaces it")
    taxonomy = load_taxonomy(cfg.taxonomy)
    if not (parent / "labels.json").exists():
        check_model_dir(parent)  # says what is missing
    try:  # before the model loads: a refused taxonomy is said at once
        added = appended_categories(load_taxonomy(parent / "labels.json"), taxonomy)
    except ValueError as e:
        raise ValueError(f"{cfg.taxonomy}: {e}") from None
    net, pre = load_model_dir(parent, device=str(d.device))
    old, names = len(net.cfg.labels), taxonomy.names
    new_recs, val_recs = _read(cfg, names, added, old)
    replay = _replay_records(cfg, parent, names)
    recs = new_recs + replay
    y = label_matrix(recs, names)
    net = grow_network(net, taxonomy, prior=y[:, old:].sum(0) / len(y), towers=cfg.tune == "towers").to(d.device)
    net.requires_grad_(False)
    for p in _trainable(net) if cfg.tune == "all" else net.branches[-1].parameters():
        p.requires_grad_(True)
    out.mkdir(parents=True, exist_ok=True)
    cfg = with_prompt_augment(cfg, net.cfg.use_output_image)
    write_json_atomic(out / "train_config.json", dataclasses.asdict(cfg))
    loader, val_loader = _loaders(cfg, recs, val_recs, pre, names, out)
    opt, sched = optimizer_for(net, cfg, cfg.epochs * len(loader))
    _logger.info("growing %s by %s: %d labelled items, %d replayed, tune=%s", parent, added, len(new_recs),
                 len(replay), cfg.tune)

    def select(report: dict) -> tuple[float, dict]:
        auprc = float(np.nanmean([report["per_category"][c]["auprc"] for c in added]))
        return auprc, {"val_new_auprc": auprc,
                       "val_new_auroc": float(np.nanmean([report["per_category"][c]["auroc"] for c in added]))}

    def save_best(report: dict) -> None:
        save_model_dir(net, out, tokenizer_dir=parent / "tokenizer", taxonomy=taxonomy, metrics=report)

    t_start = time.perf_counter()
    prompts = PromptCache.of(net)  # a frozen prompt tower: each prompt once, for training and validation
    best = fit(TrainingRun(cfg, d, net, net, loader, val_loader, label_matrix(val_recs, names), names, opt, sched,
                           loss=_loss(net, cfg, old, pos_weight(y[:, old:], d.device), prompts), select=select,
                           save_best=save_best, train_mode=lambda: _mode(net, cfg.tune),
                           score_name=f"val AUPRC of {added}", checkpoints=False, prompts=prompts,
                           report_extra={"ablation": net.cfg.ablation, "added": added}))
    write_json_atomic(out / GROWN, {
        "from": str(parent.resolve()), "labels": names[:old], "added": added, "tune": cfg.tune,
        "old_scores": "retrained" if cfg.tune == "all" else "unchanged", "labelled": len(new_recs),
        "replayed": len(replay), "seconds": round(time.perf_counter() - t_start, 1)})
    return best


def _loaders(cfg, recs: list, val_recs: list, pre, names: list[str], out: Path) -> tuple[DataLoader, DataLoader]:
    """The shuffled, augmented training loader (replay included) and the validation loader; a few validation
    triples go into the model dir for export's parity check."""
    train_ds = TripleDataset(recs, pre, names, augment=True, mask_dropout=cfg.mask_dropout, seed=cfg.seed,
                             realistic=cfg.realistic_augment, prompt_augment=cfg.prompt_augment,
                             prompt_kinds=cfg.prompt_augment_kinds, mask_lie=cfg.mask_lie)
    val_ds = TripleDataset(val_recs, pre, names, cache=False)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_ds, cfg.batch_size, shuffle=True, generator=g, collate_fn=collate_batch,
                        num_workers=cfg.num_workers)
    val_loader = DataLoader(val_ds, 128, collate_fn=collate_batch, num_workers=cfg.num_workers)
    save_examples(val_ds, out / "examples.safetensors")
    return loader, val_loader


def _read(cfg, names: list[str], added: list[str], old: int) -> tuple[list, list]:
    """The new categories' training and validation records; each needs positives of every added category."""
    read = dict(labels=names, allow_outside_root=cfg.allow_outside_root, overlays=cfg.overlays)
    new_recs, val_recs = read_manifest(cfg.train, **read), read_manifest(cfg.val, **read)
    for what, recs in (("--train", new_recs), ("--val", val_recs)):
        y = label_matrix(recs, names)[:, old:]
        empty = [c for c, n in zip(added, y.sum(0)) if n == 0]
        if empty:
            raise ValueError(f"{what} has no positive of {empty}: label the new categories' edits (the review page's "
                             "decisions, --overlay, can supply them)")
    return new_recs, val_recs


def _loss(net: EditGuardNet, cfg, old: int, weight: torch.Tensor, prompts: PromptCache | None):
    """The loss of a batch: the new categories' BCE on the branch's logits alone (``branch``, ``towers``), or with
    ``all`` on the whole network's, plus the old categories distilled to the parent's scores."""
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=weight)
    branch = len(net.branches) - 1
    if cfg.tune != "all":
        return lambda batch, y: bce(net.branch_logits(branch, **with_cache(prompts, batch)), y[:, old:])
    teacher = copy.deepcopy(net).eval().requires_grad_(False)

    def distilled(batch: dict, y: torch.Tensor) -> torch.Tensor:
        batch = with_cache(prompts, batch)  # the teacher's frozen tower is the network's: one cache serves both
        logits = net(**batch)
        with torch.no_grad():
            teach = torch.sigmoid(teacher(**batch)[:, :old])
        return bce(logits[:, old:], y[:, old:]) + cfg.distill * torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, :old], teach)
    return distilled


def _trainable(net: EditGuardNet) -> list[torch.nn.Parameter]:
    """What the parent trained: every parameter but a frozen prompt tower's."""
    frozen = {id(p) for p in net.text.encoder.parameters()} if net.split_prompt else set()
    return [p for p in net.parameters() if id(p) not in frozen]


def _mode(net: EditGuardNet, tune: str) -> None:
    """Training mode where weights train. Otherwise the parent's parts stay in eval mode: BatchNorm statistics
    must not move (they are part of the old scores); the prompt embedding's training noise stays on."""
    if tune == "all":
        net.train()
        return
    net.eval()
    net.branches[-1].train()
    if net.cfg.use_prompt:
        net.text.train()
