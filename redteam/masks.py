"""The mask attacks (family ``mask``): the caller sends a mask that lies about where the edit is.

The images and the prompt are the edit's own. Only the mask changes: none at all, one over the whole
image, an empty one ("nothing changed"), or a box of the true mask's area placed away from the change.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from ..clients.protocol import encode_image
from .attacks import Case, attack

__all__ = ["no_mask", "whole_mask", "empty_mask", "mask_away"]


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


@attack("mask", "no_mask", "no mask sent")
def no_mask(case: Case, rng: np.random.Generator) -> Case:
    return _with_mask(case, None)


@attack("mask", "whole_mask", "a mask over the whole image")
def whole_mask(case: Case, rng: np.random.Generator) -> Case:
    w, h = _size(case.input_image)
    return _with_mask(case, encode_image(np.full((h, w), 255, np.uint8)))


@attack("mask", "empty_mask", "an empty mask: the caller claims nothing changed")
def empty_mask(case: Case, rng: np.random.Generator) -> Case:
    w, h = _size(case.input_image)
    return _with_mask(case, encode_image(np.zeros((h, w), np.uint8)))


@attack("mask", "mask_away", "a box of the true mask's area, placed away from the change")
def mask_away(case: Case, rng: np.random.Generator) -> Case:
    w, h = _size(case.input_image)
    if case.mask is not None:
        with Image.open(io.BytesIO(case.mask)) as im:
            true = np.asarray(im.convert("L")) > 127
    else:
        true = np.ones((h, w), bool)
    area = max(int(true.sum()), (w * h) // 16)
    side_w = min(w, max(4, int(np.sqrt(area * w / h))))
    side_h = min(h, max(4, area // side_w))
    ys, xs = np.nonzero(true) if true.any() else (np.array([h // 2]), np.array([w // 2]))
    cy, cx = ys.mean(), xs.mean()
    # the corner farthest from the true mask's centre, with a little jitter
    x0 = 0 if cx > w / 2 else w - side_w
    y0 = 0 if cy > h / 2 else h - side_h
    x0 = int(np.clip(x0 + rng.integers(-w // 20, w // 20 + 1), 0, w - side_w))
    y0 = int(np.clip(y0 + rng.integers(-h // 20, h // 20 + 1), 0, h - side_h))
    lie = np.zeros((h, w), np.uint8)
    lie[y0:y0 + side_h, x0:x0 + side_w] = 255
    return _with_mask(case, encode_image(lie))


def _with_mask(case: Case, mask: bytes | None) -> Case:
    return dataclasses.replace(case, mask=mask)
