"""Turning manifest records into batches for the network (torch side of preprocessing)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset

from ..manifest import Record
from ..model.preprocess import PreprocessError, Preprocessor, collate
from .augment import KINDS, augment_prompt

__all__ = ["TripleDataset", "collate_batch", "label_matrix", "degrade", "jitter_mask", "misplace_mask"]


def label_matrix(records: list[Record], labels: list[str]) -> np.ndarray:
    """``{0,1} float32 [N, C]``: one row per record, one column per category."""
    index = {n: i for i, n in enumerate(labels)}
    y = np.zeros((len(records), len(labels)), np.float32)
    for r, rec in enumerate(records):
        for name in rec.labels:
            y[r, index[name]] = 1.0
    return y


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a diffusion round trip and a codec do to an image, at the network's input size.

    ``uint8 [S, S, 3]`` in and out: sometimes resampling, blur, a JPEG encode at a random quality,
    a colour gain and noise. (Only JPEG: the WebP of the synthetic ood split stays unseen.)
    """
    im = Image.fromarray(img)
    s = im.size[0]
    if rng.random() < 0.3:
        small = max(8, round(s * rng.uniform(0.5, 0.9)))
        im = im.resize((small, small), Image.BILINEAR).resize((s, s), Image.BILINEAR)
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    if rng.random() < 0.5:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(rng.integers(30, 96)))
        im = Image.open(buf)
    a = np.asarray(im, np.float32)
    if rng.random() < 0.5:
        a = a * rng.uniform(0.93, 1.07, 3) + rng.normal(0, rng.uniform(0.5, 4.0), a.shape)
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


def jitter_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask as another user would have drawn it: grown, shrunk a little, or its bounding box."""
    if mask.min() == 255 or mask.max() == 0:
        return mask
    k = rng.random()
    if k < 0.3:
        return np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(int(rng.choice([3, 5, 7, 9])))))
    if k < 0.45:
        ys, xs = np.nonzero(mask)
        box = np.zeros_like(mask)
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = 255
        return box
    if k < 0.55:
        return np.asarray(Image.fromarray(mask).filter(ImageFilter.MinFilter(3)))
    return mask


def misplace_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``mask`` moved a quarter to three quarters of the image's side down and across (wrapping round): a
    mask that lies about where the edit is. "No mask" (all 255) stays as it is."""
    if mask.min() == 255:
        return mask
    h, w = mask.shape
    return np.roll(mask, (int(rng.integers(h // 4, 3 * h // 4 + 1)), int(rng.integers(w // 4, 3 * w // 4 + 1))), (0, 1))


class TripleDataset(Dataset):
    """Preprocessed triples with labels; decodes each item once and keeps it (``cache=True``).

    Items are dicts of numpy arrays as :meth:`Preprocessor.triple` returns
    them, plus ``labels`` ``float32 [C]``. With ``augment``, the triple is
    flipped left-right (all three together) half the time, and
    ``mask_dropout`` replaces the mask with "no mask" (all 255) at that rate,
    so a served model copes with requests that send none. With ``realistic``
    too, the images go through :func:`degrade` (the output more often than
    the input), the mask through :func:`jitter_mask`, and the output is
    sometimes shifted by a pixel. The augmentation of item ``i`` depends only
    on ``(seed, epoch, i)``: the same whatever the number of ranks or
    DataLoader workers, and repeated exactly on resume. ``prompt_augment``
    is the share of items whose prompt is rewritten by
    :func:`~editguard.training.augment.augment_prompt` (typos, leetspeak, a
    benign framing, friendly padding; ``prompt_kinds`` says which of them)
    and tokenized again; ``mask_lie`` the
    share whose mask is moved away from the change (:func:`misplace_mask`),
    labels kept, so the model does not take a caller's mask on trust. Each
    draws from a generator of its own, so the images' augmentation is the
    same with either on or off.
    """

    def __init__(self, records: list[Record], pre: Preprocessor, labels: list[str], *, cache: bool = True,
                 augment: bool = False, mask_dropout: float = 0.2, seed: int = 0, realistic: bool = False,
                 prompt_augment: float = 0.0, prompt_kinds: tuple[str, ...] = KINDS, mask_lie: float = 0.0):
        self.records, self.pre = records, pre
        self.y = label_matrix(records, labels)
        self.cache: dict[int, dict] | None = {} if cache else None
        self.augment, self.mask_dropout, self.seed, self.epoch = augment, mask_dropout, seed, 0
        self.realistic, self.prompt_augment, self.mask_lie = realistic, prompt_augment, mask_lie
        self.prompt_kinds = tuple(prompt_kinds)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        item = self.cache.get(i) if self.cache is not None else None
        if item is None:
            r = self.records[i]
            item = self.pre.triple(r.input_image, r.prompt, r.output_image, r.mask, getattr(r, "cumulative", False))
            if self.cache is not None:
                self.cache[i] = item
        item = dict(item, labels=self.y[i])
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            if self.mask_dropout and rng.random() < self.mask_dropout:
                item["mask"] = np.full_like(item["mask"], 255)
            if self.realistic:
                self._realistic(item, rng)
            if rng.random() < 0.5:  # flip the whole triple together
                for k in ("input_image", "output_image", "mask"):
                    item[k] = np.ascontiguousarray(item[k][:, ::-1])
            if self.prompt_augment:
                words = np.random.default_rng((self.seed, self.epoch, i, 1))
                if words.random() < self.prompt_augment:
                    self._augment_prompt(item, self.records[i], words)
            if self.mask_lie:
                lie = np.random.default_rng((self.seed, self.epoch, i, 2))
                if lie.random() < self.mask_lie:
                    item["mask"] = misplace_mask(item["mask"], lie)
        return item

    def _augment_prompt(self, item: dict, record, rng: np.random.Generator) -> None:
        try:
            ids, att = self.pre.tokens([augment_prompt(record.prompt, rng, self.prompt_kinds)],
                                       [getattr(record, "cumulative", False)])
        except PreprocessError:  # longer than the model reads: the prompt as it was
            return
        item["input_ids"], item["attention_mask"] = ids[0], att[0]

    @staticmethod
    def _realistic(item: dict, rng: np.random.Generator) -> None:
        item["mask"] = jitter_mask(item["mask"], rng)
        if rng.random() < 0.4:
            item["input_image"] = degrade(item["input_image"], rng)
        if rng.random() < 0.8:
            item["output_image"] = degrade(item["output_image"], rng)
        if rng.random() < 0.15:
            item["output_image"] = np.roll(item["output_image"], tuple(int(v) for v in rng.integers(-1, 2, 2)), (0, 1))


def collate_batch(items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in collate(items).items()}
