"""Edit sessions: what the guard judges at turn k of a multi-turn edit, besides the step itself.

A session starts from an upload (the *origin*) and edits it turn after turn, each turn's input being
the previous turn's output. A harmful edit split into small steps looks small at every step, so the
guard also judges the **cumulative triple** of turn k:

- input: the origin image;
- prompt: the prompts of turns 1..k joined in order, the last ``MAX_HISTORY`` (:func:`cumulative_prompt`);
- output: turn k's output;
- mask: the union of the turns' masks (:func:`cumulative_mask`), or none when a turn had none.

The verdict of turn k is unsafe when the step triple or the cumulative triple is. At turn 1 the two
are the same triple. This module is the one definition of the cumulative triple: the client's
sessions (:mod:`editguard.clients.session`), batch scoring of manifests with sessions, training and
the red team's decomposition attack all build it here. It needs numpy and Pillow only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..manifest import sessions

__all__ = ["PROMPT_SEPARATOR", "MAX_HISTORY", "cumulative_prompt", "cumulative_mask", "cumulative_request",
           "mask_array", "CumulativeTriple", "cumulative_triples"]

PROMPT_SEPARATOR = "; "  # between the turn prompts of a cumulative prompt
MAX_HISTORY = 8  # turn prompts a cumulative prompt carries by default (the last ones)


def cumulative_prompt(prompts: Sequence[str]) -> str:
    """The turn prompts joined in order; empty turn prompts are left out."""
    return PROMPT_SEPARATOR.join(p.strip() for p in prompts if p and p.strip())


def mask_array(mask) -> np.ndarray:
    """A mask (encoded bytes, a path, a PIL image or an array) as ``uint8 [H, W]`` at its own size."""
    from PIL import Image

    if isinstance(mask, np.ndarray):
        a = mask if mask.ndim == 2 else mask[..., 0]
        return a.astype(np.uint8, copy=False)
    if isinstance(mask, (bytes, bytearray, memoryview)):
        mask = io.BytesIO(bytes(mask))
    img = mask if isinstance(mask, Image.Image) else Image.open(mask)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def cumulative_mask(masks: Sequence) -> np.ndarray | None:
    """The union of the turns' masks (``uint8 [H, W]``, 255 where any turn may have changed a pixel), or
    None (the whole image may have changed) when a turn had no mask or the masks differ in size."""
    if not masks or any(m is None for m in masks):
        return None
    arrays = [mask_array(m) for m in masks]
    if len({a.shape for a in arrays}) != 1:
        return None
    return np.maximum.reduce(arrays)


def cumulative_request(prompts: Sequence[str], masks: Sequence, max_history: int = MAX_HISTORY
                       ) -> tuple[str, np.ndarray | None]:
    """The cumulative triple's prompt and mask from the turns' prompts and masks so far (this turn's last):
    the last ``max_history`` prompts joined, and the union of every turn's mask."""
    return cumulative_prompt(list(prompts)[-max_history:]), cumulative_mask(list(masks))


@dataclass
class CumulativeTriple:
    """The cumulative triple of a session's turn k (:mod:`editguard.model.session`): ``id`` is the turn's."""

    id: str
    input_image: Path  # the session's origin: turn 1's input
    prompt: str  # turn prompts 1..k joined
    output_image: Path  # turn k's output
    mask: np.ndarray | None  # the union of the turns' masks (uint8, the images' size); None when a turn had none
    labels: list[str]  # the turn's cumulative_labels, else the union of turns 1..k's labels
    cumulative: bool = True  # what the model is told: its prompt is read turn by turn (preprocess.session_turns)


def cumulative_triples(records: list, max_history: int = MAX_HISTORY) -> list[CumulativeTriple]:
    """The cumulative triple of every turn from 2 on (turn 1's is the turn itself); ``max_history``: the turn
    prompts the cumulative prompt carries, as a client session keeps them."""
    out = []
    for turns in sessions(records).values():
        labels: set[str] = set()
        for k, r in enumerate(turns):
            labels |= set(r.labels)
            if k == 0:
                continue
            prompt, mask = cumulative_request([t.prompt for t in turns[:k + 1]], [t.mask for t in turns[:k + 1]],
                                              max_history)
            out.append(CumulativeTriple(r.id, turns[0].input_image, prompt, r.output_image, mask,
                                        r.cumulative_labels if r.cumulative_labels is not None else sorted(labels)))
    return out
