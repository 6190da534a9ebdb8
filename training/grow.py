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
from ..metrics import classification_report
from ..model.model_dir import GROWN, check_model_dir, load_model_dir, save_model_dir
from ..model.network import EditGuardNet, HeadBranch
from ..model.taxonomy import Taxonomy, appended_categories, load_taxonomy
from .data import TripleDataset, collate_batch, label_matrix

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
                                    label_heads=[*net.cfg.label_heads, {"labels": len(added), "towers": towers}])
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
    from ..progress import progress
    from .train import _optimizer, _save_examples, _setup, predict

    if cfg.resume:
        raise ValueError("--resume does not apply to --from runs (they take minutes): run it again")
    if not cfg.taxonomy:
        raise ValueError("--from needs --taxonomy NEW.json: the parent's categories, then the ones to add")
    d = _setup(cfg)
    if d.world > 1:
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
    old = len(net.cfg.labels)
    names = taxonomy.names
    read = dict(labels=names, allow_outside_root=cfg.allow_outside_root, overlays=cfg.overlays)
    new_recs, val_recs = read_manifest(cfg.train, **read), read_manifest(cfg.val, **read)
    for what, recs in (("--train", new_recs), ("--val", val_recs)):
        y = label_matrix(recs, names)[:, old:]
        empty = [c for c, n in zip(added, y.sum(0)) if n == 0]
        if empty:
            raise ValueError(f"{what} has no positive of {empty}: label the new categories' edits (the review page's "
                             "decisions, --overlay, can supply them)")
    replay = _replay_records(cfg, parent, names)
    recs = new_recs + replay
    y = label_matrix(recs, names)
    pos = y[:, old:].sum(0)
    net = grow_network(net, taxonomy, prior=pos / len(y), towers=cfg.tune == "towers").to(d.device)
    teacher = copy.deepcopy(net).eval().requires_grad_(False) if cfg.tune == "all" else None
    branch = len(net.branches) - 1
    net.requires_grad_(False)
    for p in _trainable(net) if cfg.tune == "all" else net.branches[branch].parameters():
        p.requires_grad_(True)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "train_config.json", dataclasses.asdict(cfg))
    train_ds = TripleDataset(recs, pre, names, augment=True, mask_dropout=cfg.mask_dropout, seed=cfg.seed,
                             realistic=cfg.realistic_augment)
    val_ds = TripleDataset(val_recs, pre, names, cache=False)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_ds, cfg.batch_size, shuffle=True, generator=g, collate_fn=collate_batch,
                        num_workers=cfg.num_workers)
    val_loader = DataLoader(val_ds, 128, collate_fn=collate_batch, num_workers=cfg.num_workers)
    _save_examples(val_ds, out / "examples.safetensors")
    opt, sched = _optimizer(net, cfg, cfg.epochs * len(loader))
    pos_weight = torch.tensor(np.clip((len(y) - pos) / np.maximum(pos, 1), 1.0, 50.0), dtype=torch.float32,
                              device=d.device)
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    y_val = label_matrix(val_recs, names)
    _logger.info("growing %s by %s: %d labelled items, %d replayed, tune=%s", parent, added, len(new_recs),
                 len(replay), cfg.tune)
    best, bad, best_report, t_start = -1.0, 0, None, time.perf_counter()
    for epoch in range(cfg.epochs):
        train_ds.set_epoch(epoch)
        _mode(net, cfg.tune)
        total, count, t0 = 0.0, 0, time.perf_counter()
        bar = progress(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not cfg.progress)
        for batch in bar:
            batch = {k: v.to(d.device) for k, v in batch.items()}
            target = batch.pop("labels")[:, old:]
            if cfg.tune != "all":
                loss = bce(net.branch_logits(branch, **batch), target)
            else:
                logits = net(**batch)
                with torch.no_grad():
                    teach = torch.sigmoid(teacher(**batch)[:, :old])
                loss = bce(logits[:, old:], target) + cfg.distill * torch.nn.functional.binary_cross_entropy_with_logits(
                    logits[:, :old], teach)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            total, count = total + loss.item() * len(target), count + len(target)
            bar.set_postfix(loss=f"{total / count:.4f}", triples_s=f"{count / (time.perf_counter() - t0):.0f}")
        report = classification_report(y_val, predict(net, val_loader, d.device), names)
        score = float(np.nanmean([report["per_category"][c]["auprc"] for c in added]))
        improved = score > best
        best, bad = max(best, score), 0 if improved else bad + 1
        log = {"epoch": epoch + 1, "train_loss": total / max(1, count), "val_new_auprc": score,
               "val_new_auroc": float(np.nanmean([report["per_category"][c]["auroc"] for c in added])),
               "seconds": round(time.perf_counter() - t0, 2)}
        with open(out / "train_log.jsonl", "a") as f:
            f.write(json.dumps(log) + "\n")
        _logger.info("epoch %d: loss %.4f, val AUPRC of %s %.4f%s", epoch + 1, log["train_loss"], added, score,
                     " (best)" if improved else "")
        if improved:
            best_report = dict(report, epoch=epoch + 1, ablation=net.cfg.ablation, added=added)
            save_model_dir(net, out, tokenizer_dir=parent / "tokenizer", taxonomy=taxonomy, metrics=best_report)
        if bad >= cfg.patience:
            _logger.info("early stop: no better val AUPRC of %s for %d epochs", added, cfg.patience)
            break
    write_json_atomic(out / GROWN, {
        "from": str(parent.resolve()), "labels": names[:old], "added": added, "tune": cfg.tune,
        "old_scores": "retrained" if cfg.tune == "all" else "unchanged", "labelled": len(new_recs),
        "replayed": len(replay), "seconds": round(time.perf_counter() - t_start, 1)})
    return best_report


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
