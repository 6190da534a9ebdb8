"""Turning manifest records into batches for the network (torch side of preprocessing)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..model.preprocess import Preprocessor, collate
from .manifest import Record

__all__ = ["TripleDataset", "collate_batch", "label_matrix"]


def label_matrix(records: list[Record], labels: list[str]) -> np.ndarray:
    """``{0,1} float32 [N, C]``: one row per record, one column per category."""
    index = {n: i for i, n in enumerate(labels)}
    y = np.zeros((len(records), len(labels)), np.float32)
    for r, rec in enumerate(records):
        for name in rec.labels:
            y[r, index[name]] = 1.0
    return y


class TripleDataset(Dataset):
    """Preprocessed triples with labels; decodes each item once and keeps it (``cache=True``).

    Items are dicts of numpy arrays as :meth:`Preprocessor.triple` returns
    them, plus ``labels`` ``float32 [C]``. With ``augment``, the triple is
    flipped left-right (all three together) half the time, and
    ``mask_dropout`` replaces the mask with "no mask" (all 255) at that rate,
    so a served model copes with requests that send none. The augmentation of
    item ``i`` depends only on ``(seed, epoch, i)``: the same whatever the
    number of ranks or DataLoader workers, and repeated exactly on resume.
    """

    def __init__(self, records: list[Record], pre: Preprocessor, labels: list[str], *, cache: bool = True,
                 augment: bool = False, mask_dropout: float = 0.2, seed: int = 0):
        self.records, self.pre = records, pre
        self.y = label_matrix(records, labels)
        self.cache: dict[int, dict] | None = {} if cache else None
        self.augment, self.mask_dropout, self.seed, self.epoch = augment, mask_dropout, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        item = self.cache.get(i) if self.cache is not None else None
        if item is None:
            r = self.records[i]
            item = self.pre.triple(r.input_image, r.prompt, r.output_image, r.mask)
            if self.cache is not None:
                self.cache[i] = item
        item = dict(item, labels=self.y[i])
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            if self.mask_dropout and rng.random() < self.mask_dropout:
                item["mask"] = np.full_like(item["mask"], 255)
            if rng.random() < 0.5:  # flip the whole triple together
                for k in ("input_image", "output_image", "mask"):
                    item[k] = np.ascontiguousarray(item[k][:, ::-1])
        return item


def collate_batch(items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in collate(items).items()}
